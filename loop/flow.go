package loop

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/internal/readpause"
)

// Flow control. An endpoint whose unsent bytes pass the high watermark is
// blocked until they fall below the low watermark. A producer (a device, a
// group member: any member with a connection of its own) that feeds a
// blocked endpoint stops being read, so its own TCP window closes, and is
// read again once nothing it feeds is blocked. Memory then stays within the
// watermarks plus one read per producer. An endpoint that stays blocked and
// drains nothing for the stall timeout is cut; one that keeps draining,
// however slowly, never is. Past its hard bound (Output.Limit) an endpoint
// is cut whatever happens, as a safety net.
//
// gnet has no pause API and no drain callback: reading is paused through
// the connection's interest mask on gnet's own epoll instance
// (internal/readpause), and blocked endpoints are polled while any exist.
// When pausing is unavailable the hub falls back to cutting endpoints at
// their hard bound, as before flow control.

// PauseWhenFull blocks the producers that feed an endpoint past its high
// watermark (completeness: nothing is lost, the devices slow down).
const PauseWhenFull FullPolicy = DropWhenFull + 1

const (
	flowPollFastest = time.Millisecond      // while endpoints drain
	flowPollSlowest = 16 * time.Millisecond // while nothing drains
)

// openPauser finds gnet's epoll instance through the control connection;
// without it the hub cuts instead of pausing.
func (h *Hub) openPauser() {
	p, err := readpause.Open(h.s.ctrl)
	if err != nil {
		h.log.Warn("flow control unavailable: slow readers are cut at their hard bound instead of slowing their producers", "err", err)
		return
	}
	h.pauser = p
	h.log.Info("flow control on: producers pause while what they feed is behind",
		"high_water", h.cfg.HighWater, "low_water", h.cfg.LowWater, "stall_timeout", h.cfg.StallTimeout.String())
}

// watermarks are an endpoint's: the hub's, kept below its hard bound.
func (e *Endpoint) watermarks() (high, low int) {
	cfg := e.hub.cfg
	high = min(cfg.HighWater, e.limit/2)
	low = min(cfg.LowWater, high/2)
	return high, low
}

// afterWrite runs after every write to an endpoint: it blocks an endpoint
// the kernel would not keep up with, and keeps a paused producer paused
// (gnet's write path turns reading back on).
func (e *Endpoint) afterWrite(handed int) {
	if e.paused {
		e.hub.repause(e)
	}
	if e.onFull == CutWhenFull || e.hub.pauser == nil && e.onFull == PauseWhenFull {
		return
	}
	e.handed += handed
	if high, _ := e.watermarks(); !e.blocked && e.conn.OutboundBuffered() >= high {
		e.block()
	}
}

func (e *Endpoint) block() {
	h := e.hub
	e.blocked = true
	e.lastUnsent = e.conn.OutboundBuffered() + e.kernelUnsent()
	e.handed = 0
	e.progressAt = h.now
	e.class.Blocked++
	if m := e.member; m != nil && m.ch != nil && e.onFull == PauseWhenFull {
		m.ch.blockedMembers++
	}
	h.blocked = append(h.blocked, e)
	h.wakeFlow()
}

func (e *Endpoint) unblock() {
	e.blocked = false
	e.class.Blocked--
	if m := e.member; m != nil && m.ch != nil && e.onFull == PauseWhenFull {
		m.ch.blockedMembers--
	}
}

// kernelUnsent is what the kernel still holds in the socket's send queue:
// gnet writes its own buffer only when the socket has room for a third of
// its send buffer, so a slow reader drains the kernel's queue long before
// gnet's buffer moves, and progress must be judged on both.
func (e *Endpoint) kernelUnsent() int {
	n, err := unix.IoctlGetInt(e.conn.Fd(), unix.SIOCOUTQ)
	if err != nil {
		return 0
	}
	return n
}

// feedsBlocked reports whether a member's events would reach a blocked
// endpoint.
func (ch *Channel) feedsBlocked(m *Member) bool {
	if ch.Policy.ToMembers {
		self := 0
		if m.Conn != nil && m.Conn.blocked && m.Conn.onFull == PauseWhenFull {
			self = 1
		}
		if ch.blockedMembers > self {
			return true
		}
	}
	if ch.Policy.ToUpstreams {
		for _, u := range ch.interested(m) {
			if u.Out != nil && u.Out.blocked && u.Out.onFull == PauseWhenFull {
				return true
			}
		}
	}
	return false
}

// pause stops reading a producer.
func (h *Hub) pause(e *Endpoint) {
	if e.paused || e.ended || h.pauser == nil {
		return
	}
	if err := h.pauser.Pause(e.conn); err != nil {
		return // gone: its close is on the way
	}
	e.paused = true
	e.pausedAt = h.now
	e.class.Paused++
	e.class.Pauses++
	h.paused = append(h.paused, e)
	h.wakeFlow()
}

// repause re-applies a pause that gnet's own read or write path undid.
func (h *Hub) repause(e *Endpoint) {
	if !e.ended {
		_ = h.pauser.Pause(e.conn)
	}
}

func (h *Hub) resume(e *Endpoint) {
	e.paused = false
	e.class.Paused--
	e.class.PausedSeconds += h.now.Sub(e.pausedAt).Seconds()
	if !e.ended {
		_ = h.pauser.Resume(e.conn)
	}
}

// forgetFlow clears an ending endpoint's flow state; it is called before
// the connection closes, so its fd is never touched again.
func (e *Endpoint) forgetFlow() {
	if e.blocked {
		e.unblock()
	}
	if e.paused {
		e.paused = false
		e.class.Paused--
		e.class.PausedSeconds += e.hub.now.Sub(e.pausedAt).Seconds()
	}
}

// wakeFlow makes sure blocked endpoints are being polled.
func (h *Hub) wakeFlow() {
	if h.s.flowDelay.Load() == 0 {
		h.s.flowDelay.Store(int64(flowPollFastest))
		select {
		case h.s.flowWake <- struct{}{}:
		default:
		}
	}
}

// flowCheck runs on the loop while anything is blocked or paused: it
// unblocks endpoints that drained below their low watermark, cuts those
// that drained nothing for the stall timeout, and resumes producers that
// feed nothing blocked any more. It sets when the next check is due: soon
// while endpoints drain, backing off while nothing moves.
func (h *Hub) flowCheck() {
	h.now = time.Now()
	progressed := false
	blocked := h.blocked[:0]
	for _, e := range h.blocked {
		if e.ended || !e.blocked {
			continue
		}
		buffered := e.conn.OutboundBuffered()
		unsent := buffered + e.kernelUnsent()
		if e.lastUnsent+e.handed > unsent {
			e.progressAt, progressed = h.now, true
		}
		e.lastUnsent, e.handed = unsent, 0
		_, low := e.watermarks()
		switch {
		case buffered <= low:
			e.unblock()
		case h.now.Sub(e.progressAt) >= h.cfg.StallTimeout:
			e.End(EndStalled, "blocked and drained nothing for the stall timeout")
		default:
			blocked = append(blocked, e)
		}
	}
	clear(h.blocked[len(blocked):])
	h.blocked = blocked

	paused := h.paused[:0]
	for _, e := range h.paused {
		switch {
		case e.ended || !e.paused:
		case e.member == nil || e.member.ch == nil || !e.member.ch.feedsBlocked(e.member):
			h.resume(e)
		default:
			paused = append(paused, e)
		}
	}
	clear(h.paused[len(paused):])
	h.paused = paused

	switch next := time.Duration(h.s.flowDelay.Load()); {
	case len(h.blocked) == 0 && len(h.paused) == 0:
		h.s.flowDelay.Store(0)
	case progressed:
		h.s.flowDelay.Store(int64(flowPollFastest))
	default:
		h.s.flowDelay.Store(int64(min(2*next, flowPollSlowest)))
	}
}

// flowPoller runs on its own goroutine: while the loop has blocked
// endpoints it posts a flow check at the interval the loop last set.
func (s *Server) flowPoller() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-s.flowWake:
		case <-s.loopStopped:
			return
		}
		for {
			delay := time.Duration(s.flowDelay.Load())
			if delay <= 0 {
				break
			}
			timer.Reset(delay)
			select {
			case <-timer.C:
			case <-s.loopStopped:
				return
			}
			if !s.post(s.h.flowCheck) {
				return
			}
		}
	}
}
