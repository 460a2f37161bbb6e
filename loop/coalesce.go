package loop

import (
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Coalescing at everyday load. Far below its peak the loop handles about
// one device read per pass, and every pass costs its own epoll_wait, wake-up
// and one write per driver: several times the read itself. When the loop is
// that lightly loaded it naps for a short, bounded time after writing a
// pass's output, so that the reads arriving meanwhile are handled together
// in the next pass and share its writes. A read then waits at most the nap
// (Config.CoalesceBudget) before it is handled, and its frames are written
// at the end of the pass that handles it. A loop busy enough to batch by
// itself never naps.

// coalesceEvents is how many events one nap should gather at most: a pass
// of that many already spreads its fixed costs thinly (about 20 µs of
// epoll_wait, wake-up and writes over 32 events whose reads cost about 4 µs
// each), so at event rates that fill a nap with more, the loop does not nap.
const coalesceEvents = 32

// coalesceWindow is how long the event rate is measured over.
const coalesceWindow = 10 * time.Millisecond

// coalescer keeps the loop's recent event rate.
type coalescer struct {
	budget      time.Duration
	events      int       // events published in the current window
	windowStart time.Time // monotonic
	rate        float64   // events per second over the last window
}

// napAfterPass runs at the end of a pass, after its output is written: it
// naps if the loop has been lightly loaded.
func (h *Hub) napAfterPass() {
	co := &h.co
	if co.budget <= 0 {
		return
	}
	now := time.Now()
	if elapsed := now.Sub(co.windowStart); elapsed >= coalesceWindow {
		co.rate = float64(co.events) / elapsed.Seconds()
		co.events, co.windowStart = 0, now
	}
	if co.rate*co.budget.Seconds() >= coalesceEvents {
		return // busy: the loop batches by itself
	}
	nap(co.budget)
	h.c.Naps++
}

// nap sleeps on the loop's own thread without telling the Go runtime: a
// nap is short and bounded, and a plain blocking call would make the
// runtime hand the loop's processor to another thread and take it back
// afterwards, which costs more than the nap saves on a virtual machine.
func nap(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_, _, _ = unix.RawSyscall(unix.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&ts)), 0, 0)
}
