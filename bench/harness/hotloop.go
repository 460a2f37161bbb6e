package harness

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hotLoop is the harness's event loop for the paced scenarios: one goroutine
// on a locked OS thread reads every receiving socket (the drivers; the
// devices in the write path) through its own epoll set and writes the paced
// load between those reads, with raw non-blocking syscalls. No goroutine
// switch and no Go netpoller sits between a socket becoming readable and its
// read, so the latency figures are the server's, and sends are interleaved
// with reads in chunks of hotChunk items.
type hotLoop struct {
	epfd    int
	readers map[int]hotReader
	events  []unix.EpollEvent
	cmds    chan *hotCmd
	adds    chan hotReader
	quit    chan struct{}
	done    chan struct{}
	pwait2  bool

	mu  sync.Mutex
	err error

	// counters (loop goroutine; read racily for DISPATCHBENCH_HOT_DEBUG)
	nWaitTimed, nWaitZero, nWaitEvents, nReadable int64
}

// hotReader is a socket the loop reads.
type hotReader interface {
	fdNum() int
	// readable reads what is there (until EAGAIN, bounded); finished=true
	// asks the loop to drop and close it.
	readable() (finished bool)
	closeSock()
}

// hotCmd asks the loop to offer rate items/s for dur through emit, which
// writes up to n items without blocking and returns how many it wrote.
// flush (optional) pushes out partially written items; the command ends
// once it returns true.
type hotCmd struct {
	rate  float64
	dur   time.Duration
	emit  func(n int) (int, error)
	flush func() bool
	sent  int64
	err   error
	done  chan struct{}
}

// hotChunk is how many items are written between two polls of the readers
// (DISPATCHBENCH_HOT_CHUNK overrides it, for experiments).
var hotChunk = int64(envInt("DISPATCHBENCH_HOT_CHUNK", 32))

// hotTick is the pacing granularity: each timer wakeup costs ~20 µs of CPU
// in a VM, so it is not made finer.
var hotTick = time.Duration(envInt("DISPATCHBENCH_HOT_TICK_US", 500)) * time.Microsecond

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil && v > 0 {
		return v
	}
	return def
}

func newHotLoop() (*hotLoop, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	l := &hotLoop{epfd: fd, readers: map[int]hotReader{}, events: make([]unix.EpollEvent, 256),
		cmds: make(chan *hotCmd), adds: make(chan hotReader, 64), quit: make(chan struct{}), done: make(chan struct{}), pwait2: true}
	go l.run()
	return l, nil
}

// add registers a socket (safe from any goroutine).
func (l *hotLoop) add(r hotReader) { l.adds <- r }

// offer runs one paced command and returns how many items were written.
func (l *hotLoop) offer(rate float64, dur time.Duration, emit func(int) (int, error), flush func() bool) (int64, error) {
	c := &hotCmd{rate: rate, dur: dur, emit: emit, flush: flush, done: make(chan struct{})}
	select {
	case l.cmds <- c:
	case <-l.done:
		return 0, l.failure()
	}
	<-c.done
	return c.sent, c.err
}

func (l *hotLoop) failure() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		return fmt.Errorf("harness event loop stopped")
	}
	return l.err
}

// stop ends the loop; it closes every socket still registered.
func (l *hotLoop) stop() {
	select {
	case <-l.quit:
	default:
		close(l.quit)
	}
	<-l.done
}

func (l *hotLoop) register(r hotReader) {
	fd := r.fdNum()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.mu.Lock()
		if l.err == nil {
			l.err = fmt.Errorf("epoll add fd %d: %w", fd, err)
		}
		l.mu.Unlock()
		return
	}
	l.readers[fd] = r
	r.readable() // it may already hold data
}

func (l *hotLoop) drop(fd int) {
	if r := l.readers[fd]; r != nil {
		unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
		delete(l.readers, fd)
		r.closeSock()
	}
}

// wait polls the epoll set for up to d (0: don't block) and serves readers.
func (l *hotLoop) wait(d time.Duration) {
	var n int
	var err error
	if l.pwait2 {
		var ts *unix.Timespec
		t := unix.NsecToTimespec(int64(d))
		ts = &t
		// RawSyscall: the loop keeps its P while it waits, which saves the
		// runtime's syscall handoff (it doubles the cost of a wakeup). The
		// rest of the harness runs when sysmon preempts this goroutine
		// (the wait then returns EINTR) or while it is between waits.
		r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT2, uintptr(l.epfd), uintptr(unsafe.Pointer(&l.events[0])), uintptr(len(l.events)), uintptr(unsafe.Pointer(ts)), 0, 0)
		n = int(r)
		if e != 0 {
			n = -1
			err = e
			if e == unix.ENOSYS {
				l.pwait2 = false
			}
		}
	} else {
		ms := int((d + time.Millisecond - 1) / time.Millisecond)
		n, err = unix.EpollWait(l.epfd, l.events, ms)
	}
	if d > 0 {
		l.nWaitTimed++
	} else {
		l.nWaitZero++
	}
	if err != nil || n <= 0 {
		return
	}
	l.nWaitEvents++
	l.nReadable += int64(n)
	for i := 0; i < n; i++ {
		fd := int(l.events[i].Fd)
		r := l.readers[fd]
		if r == nil {
			continue
		}
		if r.readable() {
			l.drop(fd)
		}
	}
}

func (l *hotLoop) run() {
	runtime.LockOSThread()
	defer func() {
		// sockets stay open: their owners close them
		unix.Close(l.epfd)
		close(l.done)
	}()
	var cur *hotCmd
	var start time.Time
	var issued, maxBurst int64
	finishing := false
	for {
		// new sockets, commands, quit
		for more := true; more; {
			select {
			case r := <-l.adds:
				l.register(r)
			default:
				more = false
			}
		}
		if cur == nil {
			select {
			case c := <-l.cmds:
				cur, start, issued, finishing = c, time.Now(), 0, false
				maxBurst = int64(max(1, c.rate*0.05))
			case <-l.quit:
				return
			default:
			}
		}
		if cur == nil {
			l.wait(time.Millisecond)
			runtime.Gosched() // let the controller run
			continue
		}
		el := time.Since(start)
		if el >= cur.dur || finishing {
			finishing = true
			if cur.flush == nil || cur.flush() {
				if os.Getenv("DISPATCHBENCH_HOT_DEBUG") != "" {
					el := time.Since(start).Seconds()
					fmt.Fprintf(os.Stderr, "hotloop: %.0f timed waits/s, %.0f zero waits/s, %.0f waits with events/s, %.0f readable/s\n",
						float64(l.nWaitTimed)/el, float64(l.nWaitZero)/el, float64(l.nWaitEvents)/el, float64(l.nReadable)/el)
				}
				l.nWaitTimed, l.nWaitZero, l.nWaitEvents, l.nReadable = 0, 0, 0, 0
				close(cur.done)
				cur = nil
				continue
			}
			l.wait(hotTick)
			continue
		}
		due := int64(cur.rate*el.Seconds()) - issued
		if due > maxBurst {
			issued += due - maxBurst
			due = maxBurst
		}
		for due > 0 {
			k := min(due, hotChunk)
			n, err := cur.emit(int(k))
			cur.sent += int64(n)
			issued += k
			due -= k
			if err != nil {
				cur.err = err
				finishing = true
				break
			}
			l.wait(0)
		}
		if finishing {
			continue
		}
		// sleep until a tick's worth of items (at least one) is due
		batch := max(1, cur.rate*hotTick.Seconds())
		next := time.Duration((float64(issued) + batch) / cur.rate * float64(time.Second))
		d := min(next-time.Since(start), time.Millisecond, cur.dur-time.Since(start))
		if d > 0 {
			l.wait(d)
		} else {
			l.wait(0)
		}
	}
}

// hotDriver adapts a manual-mode Driver to the loop.
type hotDriver struct{ d *Driver }

func (h hotDriver) fdNum() int { return h.d.fd }
func (h hotDriver) readable() bool {
	for i := 0; i < 8; i++ {
		_, err := h.d.readOnce(h.d.rawRead)
		if err == errWouldBlock {
			return false
		}
		if err != nil {
			return true
		}
	}
	return false
}
func (h hotDriver) closeSock() { h.d.conn.Close() }

// connFd returns the descriptor of a socket (it stays owned by the conn).
func connFd(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// writeRecord writes one record without blocking. It returns how many bytes
// went out; EAGAIN/EINTR are not errors (0 bytes).
func writeRaw(fd int, b []byte) (int, error) {
	n, err := unix.Write(fd, b)
	if err == unix.EAGAIN || err == unix.EINTR {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return n, nil
}
