//go:build linux && !poll_opt

package readpause

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

const (
	// readCap is gnet's read size per readable event, set explicitly so
	// that "one read" of overshoot is a known number.
	readCap = 64 << 10
	// sockBuf bounds the kernel buffers on both ends of a device pair, so a
	// paused connection stalls its peer after a few hundred KiB.
	sockBuf = 64 << 10
	// stallProbe is how long one peer write may block before the test counts
	// the peer as stalled. It only decides how soon the test moves on;
	// whether pausing works is decided by byte counts (see confirmStalled).
	stallProbe = 100 * time.Millisecond
	// floodLimit is how much a peer may write after Pause without ever
	// blocking before the test declares pausing broken. Kernel buffers here
	// hold well under 1 MiB; with reading still on, 64 MiB takes a blink.
	floodLimit = 64 << 20
	// patience bounds every wait for an event, so a broken build fails
	// instead of hanging.
	patience = 30 * time.Second
)

// patternByte is the byte at offset i of every test stream; 251 is prime, so
// a lost, repeated or reordered 64 KiB chunk shows.
func patternByte(i int64) byte { return byte(i % 251) }

func fillPattern(b []byte, off int64) []byte {
	for i := range b {
		b[i] = patternByte(off + int64(i))
	}
	return b
}

// device is the loop-side state of one enrolled test connection. Only the
// loop touches it, except after closed is closed (gnet is done with it).
type device struct {
	received int64 // bytes consumed by OnTraffic
	mismatch int64 // offset of the first byte out of order, -1 if none
	reads    int   // OnTraffic calls
	paused   bool  // the test wants it paused: re-apply at the end of OnTraffic
	pauseErr error // first error from that re-apply
	closed   chan struct{}
}

func newDevice() *device { return &device{mismatch: -1, closed: make(chan struct{})} }

// harness is one gnet Client engine with a single event loop, a control
// connection (as loop/server.go enrols one) and a Poller opened on it.
type harness struct {
	t       testing.TB
	cli     *gnet.Client
	ctrl    gnet.Conn
	el      gnet.EventLoop
	p       *Poller       // written on the loop by Open, read on the loop
	traffic chan struct{} // poked after every OnTraffic/OnClose; never blocks the loop
}

type handler struct {
	gnet.BuiltinEventEngine
	h *harness
}

// OnTraffic consumes everything (so gnet's inbound buffer never grows),
// checks the byte order, and keeps rule 3: a paused connection is paused
// again at the end of its OnTraffic.
func (hd *handler) OnTraffic(c gnet.Conn) gnet.Action {
	buf, _ := c.Next(-1)
	if d, ok := c.Context().(*device); ok {
		for i, b := range buf {
			if d.mismatch < 0 && b != patternByte(d.received+int64(i)) {
				d.mismatch = d.received + int64(i)
			}
		}
		d.received += int64(len(buf))
		d.reads++
		if d.paused {
			if err := hd.h.p.Pause(c); err != nil && d.pauseErr == nil {
				d.pauseErr = err
			}
		}
	}
	hd.h.poke()
	return gnet.None
}

func (hd *handler) OnClose(c gnet.Conn, _ error) gnet.Action {
	if d, ok := c.Context().(*device); ok {
		d.paused = false // rule 2: forget the pause state of a closed connection
		close(d.closed)
	}
	hd.h.poke()
	return gnet.None
}

func (h *harness) poke() {
	select {
	case h.traffic <- struct{}{}:
	default:
	}
}

type quietLogger struct{}

func (quietLogger) Debugf(string, ...any) {}
func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Warnf(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(string, ...any) {}

// newEngine starts a gnet Client with one loop and enrols a control
// connection; it does not open a Poller.
func newEngine(t testing.TB, opts ...gnet.Option) *harness {
	t.Helper()
	h := &harness{t: t, traffic: make(chan struct{}, 1)}
	opts = append([]gnet.Option{
		gnet.WithNumEventLoop(1),
		gnet.WithReadBufferCap(readCap),
		gnet.WithLogger(quietLogger{}),
	}, opts...)
	cli, err := gnet.NewClient(&handler{h: h}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	h.cli = cli
	near, far := tcpPair(t, 0)
	t.Cleanup(func() {
		_ = cli.Stop()
		_ = far.Close()
	})
	if h.ctrl, err = cli.Enroll(near); err != nil {
		t.Fatal(err)
	}
	h.el = h.ctrl.EventLoop()
	return h
}

// newHarness is newEngine plus a Poller opened on the control connection,
// on the loop, as the server would.
func newHarness(t testing.TB) *harness {
	t.Helper()
	h := newEngine(t)
	var err error
	h.onLoop(func() { h.p, err = Open(h.ctrl) })
	if err != nil {
		t.Fatalf("Open on a gnet control connection: %v", err)
	}
	return h
}

// onLoop runs f on the event loop and waits for it.
func (h *harness) onLoop(f func()) {
	h.t.Helper()
	done := make(chan struct{})
	err := h.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		defer close(done)
		f()
		return nil
	}))
	if err != nil {
		h.t.Fatalf("Execute: %v", err)
	}
	select {
	case <-done:
	case <-time.After(patience):
		h.t.Fatal("the event loop did not run a task")
	}
}

// waitFor re-evaluates cond on the loop after every OnTraffic/OnClose until
// it holds.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.After(patience)
	for {
		var ok bool
		h.onLoop(func() { ok = cond() })
		if ok {
			return
		}
		select {
		case <-h.traffic:
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// tcpPair returns a connected loopback pair: near is the dialled end, given
// a receive and send buffer of bufSize (if > 0) before it connects; far is
// the accepted end, whose receive buffer it inherits from the listener.
func tcpPair(t testing.TB, bufSize int) (near, far *net.TCPConn) {
	t.Helper()
	setBufs := func(_, _ string, rc syscall.RawConn) error {
		if bufSize <= 0 {
			return nil
		}
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, bufSize)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, bufSize)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
	lc := net.ListenConfig{Control: setBufs}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	accepted := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- res{c, err}
	}()
	d := net.Dialer{Control: setBufs}
	nc, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-accepted
	if r.err != nil {
		t.Fatal(r.err)
	}
	near, far = nc.(*net.TCPConn), r.c.(*net.TCPConn)
	if bufSize > 0 {
		if err := far.SetWriteBuffer(bufSize); err != nil {
			t.Fatal(err)
		}
	}
	return near, far
}

// newDevice enrols the near end of a small-buffered pair and returns the
// gnet connection, its state and the far end (the "device").
func (h *harness) newDevice() (gnet.Conn, *device, *flood) {
	h.t.Helper()
	near, far := tcpPair(h.t, sockBuf)
	h.t.Cleanup(func() { _ = far.Close() })
	d := newDevice()
	gc, err := h.cli.EnrollContext(near, d)
	if err != nil {
		h.t.Fatal(err)
	}
	return gc, d, &flood{conn: far, buf: make([]byte, 64<<10)}
}

// flood is the device side: it writes the pattern stream.
type flood struct {
	conn *net.TCPConn
	sent int64
	buf  []byte
}

// untilBlocked writes until one write cannot complete within stallProbe. It
// fails the test if floodLimit bytes go through first: then gnet is still
// reading the paused connection.
func (f *flood) untilBlocked(t testing.TB) {
	t.Helper()
	start := f.sent
	for f.sent-start < floodLimit {
		_ = f.conn.SetWriteDeadline(time.Now().Add(stallProbe))
		n, err := f.conn.Write(fillPattern(f.buf, f.sent))
		f.sent += int64(n)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			_ = f.conn.SetWriteDeadline(time.Time{})
			return
		}
		if err != nil {
			t.Fatalf("device write: %v", err)
		}
	}
	t.Fatalf("the device wrote %d bytes after Pause without ever blocking: gnet kept reading (did a gnet upgrade break pausing?)", floodLimit)
}

// write writes n more bytes; it fails the test if they cannot all be
// written within patience (reading never resumed).
func (f *flood) write(t testing.TB, n int64) {
	t.Helper()
	_ = f.conn.SetWriteDeadline(time.Now().Add(patience))
	defer f.conn.SetWriteDeadline(time.Time{})
	for end := f.sent + n; f.sent < end; {
		b := f.buf[:min(int64(len(f.buf)), end-f.sent)]
		m, err := f.conn.Write(fillPattern(b, f.sent))
		f.sent += int64(m)
		if err != nil {
			t.Fatalf("device write after %d bytes: %v", f.sent, err)
		}
	}
}

// confirmStalled proves, without timing, that gnet is not reading gc: bytes
// wait in gc's kernel receive queue, and still no read happens between two
// loop tasks. gnet runs tasks only after the events of the same epoll_wait
// (pkg/netpoll/poller_epoll_default.go:132-163), so if EPOLLIN were armed
// with bytes queued, a read would come between the two. It returns the bytes
// received so far.
func (h *harness) confirmStalled(gc gnet.Conn, d *device) int64 {
	h.t.Helper()
	var r1, r2 int64
	var queued int
	var err error
	h.onLoop(func() {
		r1 = d.received
		queued, err = unix.IoctlGetInt(gc.Fd(), unix.SIOCINQ)
	})
	h.onLoop(func() { r2 = d.received })
	if err != nil {
		h.t.Fatalf("SIOCINQ: %v", err)
	}
	if queued == 0 {
		h.t.Fatal("the device blocked, yet nothing waits in the paused connection's receive queue")
	}
	if r2 != r1 {
		h.t.Fatalf("gnet read %d bytes from a paused connection with %d bytes queued", r2-r1, queued)
	}
	return r1
}

// finish resumes gc, sends more, closes the device's write side and checks
// that every byte arrived, in order.
func (h *harness) finish(gc gnet.Conn, d *device, f *flood) {
	h.t.Helper()
	var err error
	h.onLoop(func() {
		d.paused = false
		err = h.p.Resume(gc)
	})
	if err != nil {
		h.t.Fatalf("Resume: %v", err)
	}
	f.write(h.t, 4<<20)
	if err := f.conn.CloseWrite(); err != nil {
		h.t.Fatal(err)
	}
	select {
	case <-d.closed: // gnet read to EOF; d is ours now
	case <-time.After(patience):
		h.t.Fatal("the engine never saw the device's FIN after Resume")
	}
	if d.pauseErr != nil {
		h.t.Fatalf("re-applying Pause in OnTraffic: %v", d.pauseErr)
	}
	if d.received != f.sent {
		h.t.Fatalf("engine received %d bytes, device sent %d", d.received, f.sent)
	}
	if d.mismatch >= 0 {
		h.t.Fatalf("byte %d out of order", d.mismatch)
	}
}

// maskOf is gc's interest mask in the Poller's epoll set, without the
// EPOLLERR|EPOLLHUP the kernel always adds. Run it on the loop.
func (h *harness) maskOf(gc gnet.Conn) (uint32, error) {
	var st unix.Stat_t
	if err := unix.Fstat(gc.Fd(), &st); err != nil {
		return 0, err
	}
	ev, err := interest(h.p.epfd, gc.Fd(), st.Ino)
	return ev &^ alwaysReported, err
}

// Test 1: Open finds gnet's epoll instance and passes its self-check.
func TestOpen(t *testing.T) {
	h := newHarness(t)
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(h.p.epfd))
	if err != nil || link != "anon_inode:[eventpoll]" {
		t.Fatalf("Poller's fd %d is %q (%v), not an epoll instance", h.p.epfd, link, err)
	}
	var mask uint32
	h.onLoop(func() { mask, err = h.maskOf(h.ctrl) })
	if err != nil || mask != readInterest {
		t.Fatalf("control connection's mask after the self-check: %#x (%v), want EPOLLIN|EPOLLPRI", mask, err)
	}
	// A second Open on the same loop finds the same instance.
	var p2 *Poller
	h.onLoop(func() { p2, err = Open(h.ctrl) })
	if err != nil || p2.epfd != h.p.epfd {
		t.Fatalf("second Open: %v, epfd %v want %d", err, p2, h.p.epfd)
	}
}

// Test 2, the guard against a gnet upgrade silently breaking pausing: a
// paused connection stops being read, so its peer's writes stall; after
// Resume every byte arrives, in order.
func TestPauseStallsPeer(t *testing.T) {
	h := newHarness(t)
	gc, d, f := h.newDevice()

	f.write(t, 1<<20)
	h.waitFor("the first MiB", func() bool { return d.received == f.sent })

	var atPause int64
	var err error
	h.onLoop(func() {
		d.paused = true
		err = h.p.Pause(gc)
		atPause = d.received
	})
	if err != nil {
		t.Fatalf("Pause: %v", err)
	}
	f.untilBlocked(t)
	got := h.confirmStalled(gc, d)
	if got-atPause > readCap {
		t.Fatalf("engine read %d bytes after Pause, more than one read (%d)", got-atPause, readCap)
	}
	t.Logf("device stalled after %d bytes; %d sit in kernel buffers", f.sent, f.sent-got)

	var mask uint32
	h.onLoop(func() { mask, err = h.maskOf(gc) })
	if err != nil || mask != 0 {
		t.Fatalf("paused mask %#x (%v), want 0", mask, err)
	}
	h.finish(gc, d, f)
}

// Test 3: gnet's own writes to a paused connection turn reading back on
// (connection_unix.go:181, eventloop_unix.go:349); re-applying Pause after
// the write and in OnTraffic keeps the device stalled, and gnet's buffered
// output still drains while paused.
func TestPauseSurvivesGnetWrites(t *testing.T) {
	h := newHarness(t)
	gc, d, f := h.newDevice()
	out := fillPattern(make([]byte, 4<<20), 0) // far more than the kernel buffers hold
	more := fillPattern(make([]byte, 64<<10), int64(len(out)))

	var atPause int64
	var buffered int
	var afterWrite, afterRepause, afterAppend uint32
	var werr, perr, merr error
	h.onLoop(func() {
		d.paused = true
		perr = h.p.Pause(gc)
		atPause = d.received
		if perr != nil {
			return
		}
		_, werr = gc.Write(out)
		buffered = gc.OutboundBuffered()
		afterWrite, merr = h.maskOf(gc)
		perr = h.p.Pause(gc) // rule 3: re-apply after every write
		if merr == nil {
			afterRepause, merr = h.maskOf(gc)
		}
		// The cheap form of rule 3: a write that finds output already
		// buffered only appends and leaves the mask alone.
		if _, err := gc.Write(more); err != nil && werr == nil {
			werr = err
		}
		if merr == nil {
			afterAppend, merr = h.maskOf(gc)
		}
	})
	switch {
	case perr != nil:
		t.Fatalf("Pause: %v", perr)
	case werr != nil:
		t.Fatalf("Write: %v", werr)
	case merr != nil:
		t.Fatalf("reading the mask: %v", merr)
	case buffered == 0:
		t.Fatal("gnet sent the whole write at once; nothing is buffered, so this test proves nothing")
	case afterWrite&readInterest == 0:
		t.Fatalf("mask after a partly buffered write is %#x: gnet no longer turns EPOLLIN back on there; re-check rule 3 against this gnet", afterWrite)
	case afterRepause != writeInterest:
		t.Fatalf("mask after re-applying Pause with output buffered is %#x, want EPOLLOUT only", afterRepause)
	case afterAppend != writeInterest:
		t.Fatalf("mask after a write appended to buffered output is %#x: gnet now touches the mask there; re-check rule 3", afterAppend)
	}

	// Paused with output pending: the device's writes still stall.
	f.untilBlocked(t)
	if got := h.confirmStalled(gc, d); got != atPause {
		t.Fatalf("engine read %d bytes while paused with output pending", got-atPause)
	}

	// The device reads; gnet drains its outbound buffer on EPOLLOUT alone
	// and then (eventloop_unix.go:348-349) re-arms EPOLLIN with no callback.
	readsBefore := 0
	h.onLoop(func() { readsBefore = d.reads })
	if err := readPattern(f.conn, int64(len(out)+len(more))); err != nil {
		t.Fatalf("device reading gnet's output: %v", err)
	}
	// That costs exactly one read, which OnTraffic follows with Pause: the
	// device stalls again and the engine reads nothing more.
	f.untilBlocked(t)
	got := h.confirmStalled(gc, d)
	var reads int
	var mask uint32
	h.onLoop(func() {
		reads = d.reads
		mask, merr = h.maskOf(gc)
	})
	if merr != nil || mask != 0 {
		t.Fatalf("mask after the drain and OnTraffic's re-pause: %#x (%v), want 0", mask, merr)
	}
	if reads-readsBefore != 1 || got-atPause > readCap {
		t.Fatalf("after the drain the engine made %d reads (%d bytes); want exactly one, at most %d bytes", reads-readsBefore, got-atPause, readCap)
	}
	h.finish(gc, d, f)
}

// readPattern reads n bytes of the pattern stream from c.
func readPattern(c net.Conn, n int64) error {
	_ = c.SetReadDeadline(time.Now().Add(patience))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 64<<10)
	for off := int64(0); off < n; {
		m, err := c.Read(buf[:min(int64(len(buf)), n-off)])
		for i := range buf[:m] {
			if buf[i] != patternByte(off+int64(i)) {
				return fmt.Errorf("byte %d out of order", off+int64(i))
			}
		}
		off += int64(m)
		if err != nil {
			if err == io.EOF && off == n {
				return nil
			}
			return err
		}
	}
	return nil
}

// fakeConn is a gnet.Conn for a descriptor gnet does not know. Only the
// methods this package calls are implemented; others would panic.
type fakeConn struct {
	gnet.Conn
	fd   int
	loop gnet.EventLoop
}

func (c fakeConn) Fd() int                   { return c.fd }
func (c fakeConn) RemoteAddr() net.Addr      { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (c fakeConn) OutboundBuffered() int     { return 0 }
func (c fakeConn) EventLoop() gnet.EventLoop { return c.loop }

// Test 4: Open and Pause fail cleanly for what they must not touch.
func TestRefusals(t *testing.T) {
	h := newHarness(t)

	t.Run("socket in the Go runtime's netpoller", func(t *testing.T) {
		// Go registers its own sockets with pointers as event data.
		c, _ := tcpPair(t, 0)
		defer c.Close()
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var openErr error
		if err := rc.Control(func(fd uintptr) { _, openErr = Open(fakeConn{fd: int(fd)}) }); err != nil {
			t.Fatal(err)
		}
		if openErr == nil || !strings.Contains(openErr.Error(), "data == fd") {
			t.Fatalf("Open on a Go-managed socket: %v", openErr)
		}
		t.Log(openErr)
	})

	t.Run("socket in no epoll set", func(t *testing.T) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[0])
		defer unix.Close(fds[1])
		if _, err := Open(fakeConn{fd: fds[0]}); err == nil || !strings.Contains(err.Error(), "lists fd") {
			t.Fatalf("Open on an unregistered socket: %v", err)
		} else {
			t.Log(err)
		}
		// Pause on the right loop but an fd not in its set: the kernel says
		// ENOENT, which is ErrGone; a closed descriptor (EBADF) likewise.
		var e1, e2 error
		h.onLoop(func() {
			e1 = h.p.Pause(fakeConn{fd: fds[0], loop: h.el})
			e2 = h.p.Resume(fakeConn{fd: -1, loop: h.el})
		})
		if e1 != ErrGone || e2 != ErrGone {
			t.Fatalf("Pause on an fd not in the set: %v; Resume on a bad fd: %v; want ErrGone", e1, e2)
		}
	})

	t.Run("closed gnet connection", func(t *testing.T) {
		gc, d, f := h.newDevice()
		_ = f.conn.Close()
		select {
		case <-d.closed:
		case <-time.After(patience):
			t.Fatal("no OnClose after the device closed")
		}
		var pauseErr, openErr error
		h.onLoop(func() {
			pauseErr = h.p.Pause(gc)
			_, openErr = Open(gc)
		})
		if pauseErr != ErrGone {
			t.Fatalf("Pause on a closed connection: %v, want ErrGone", pauseErr)
		}
		if openErr == nil {
			t.Fatal("Open on a closed connection succeeded")
		}
	})

	t.Run("connection of another loop", func(t *testing.T) {
		other := newEngine(t)
		var err error
		h.onLoop(func() { err = h.p.Pause(other.ctrl) })
		if err == nil || err == ErrGone {
			t.Fatalf("Pause on another loop's connection: %v, want errOtherLoop", err)
		}
	})

	t.Run("edge-triggered engine", func(t *testing.T) {
		et := newEngine(t, gnet.WithEdgeTriggeredIO(true))
		var err error
		et.onLoop(func() { _, err = Open(et.ctrl) })
		if err == nil || !strings.Contains(err.Error(), "edge-triggered") {
			t.Fatalf("Open on an edge-triggered engine: %v", err)
		}
		t.Log(err)
	})
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		line string
		want target
		ok   bool
	}{
		{"tfd:        7 events:       19 data:                7  pos:0 ino:2a82 sdev:9",
			target{fd: 7, events: 0x19, data: 7, ino: 0x2a82, hasIno: true}, true},
		{"tfd:       12 events:       18 data:     7f3a5c001e08  pos:0 ino:1f sdev:8",
			target{fd: 12, events: 0x18, data: 0x7f3a5c001e08, ino: 0x1f, hasIno: true}, true},
		{"tfd:        5 events:       1b data:                5", // before Linux 3.10
			target{fd: 5, events: 0x1b, data: 5}, true},
		{"pos:\t0", target{}, false},
		{"tfd: x events: 19 data: 7", target{}, false},
	} {
		got, ok := parseTarget(tc.line)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("parseTarget(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
	// gnet writes unix.EpollEvent{Fd: fd}: data is fd in the first four
	// bytes of the union, whatever the byte order.
	if d := dataFor(7); d != 7 && d != 7<<32 {
		t.Fatalf("dataFor(7) = %#x", d)
	}
}

// BenchmarkPauseResume is the cost of one Pause plus one Resume on the loop:
// two epoll_ctl calls, no allocation.
func BenchmarkPauseResume(b *testing.B) {
	h := newHarness(b)
	var err error
	var allocs float64
	h.onLoop(func() {
		allocs = testing.AllocsPerRun(100, func() { _, _ = h.p.Pause(h.ctrl), h.p.Resume(h.ctrl) })
		b.ResetTimer()
		for i := 0; i < b.N && err == nil; i++ {
			if err = h.p.Pause(h.ctrl); err == nil {
				err = h.p.Resume(h.ctrl)
			}
		}
		b.StopTimer()
	})
	if err != nil {
		b.Fatal(err)
	}
	if allocs != 0 {
		b.Fatalf("%v allocations per Pause+Resume", allocs)
	}
}

// FuzzTargets feeds arbitrary fdinfo text to the parser: it must never
// panic, and whatever it accepts must have come from a "tfd:" line that
// names the fd it reports.
func FuzzTargets(f *testing.F) {
	f.Add([]byte("pos:\t0\nflags:\t02\nmnt_id:\t15\ntfd:        7 events:       19 data:                7  pos:0 ino:2a82 sdev:9\n"))
	f.Add([]byte("tfd:        5 events:       1b data:                5\n"))
	f.Add([]byte("tfd: x events: 19 data: 7\ntfd:\n"))
	f.Fuzz(func(t *testing.T, info []byte) {
		for _, tg := range targets(info) {
			if tg.fd < 0 && !strings.Contains(string(info), "-") {
				t.Fatalf("negative fd %d from %q", tg.fd, info)
			}
			if !strings.Contains(string(info), "tfd:") {
				t.Fatalf("a target from text without a tfd line: %q", info)
			}
		}
	})
}
