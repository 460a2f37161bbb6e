package loop

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/internal/testkit"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
)

// testClientFormat carries each payload as one masked text message: the
// shape of a kind's link format.
var testClientFormat = NewSealedFormat("test-client", func(dst []byte, ev *Event) ([]byte, []byte, bool) {
	if ev.Type != MemberData {
		return dst, nil, false
	}
	return codec.AppendMaskedFrameHeader(dst, ws.OpText, len(ev.Data), NewMask()), nil, true
}, codec.MaskFrame)

// recordingRole hands what a dialled link hears to the test.
type recordingRole struct {
	messages chan string
	ended    chan EndReason
}

func newRecordingRole() *recordingRole {
	return &recordingRole{messages: make(chan string, 16), ended: make(chan EndReason, 1)}
}

func (r *recordingRole) Message(_ *WSConn, _ bool, payload []byte) { r.messages <- string(payload) }
func (r *recordingRole) Ended(_ *WSConn, reason EndReason)         { r.ended <- reason }

// dialFrom dials url from the server's loop and returns the endpoint or
// the error done was called with.
func dialFrom(t *testing.T, s *Server, class *Class, o DialOptions) (*WSConn, error) {
	t.Helper()
	type result struct {
		c   *WSConn
		err error
	}
	got := make(chan result, 1)
	o.WS = WSOptions{Class: class, Output: Output{Format: testClientFormat, Limit: 1 << 20, OnFull: PauseWhenFull}, MaxMessage: 1 << 20}
	s.Post(func(h *Hub) { h.DialWS(o, func(c *WSConn, err error) { got <- result{c, err} }) })
	select {
	case r := <-got:
		return r.c, r.err
	case <-time.After(2 * testkit.EventTimeout):
		t.Fatal("done never called")
		return nil, nil
	}
}

func startWithClass(t *testing.T) (*Server, *Class) {
	t.Helper()
	var class *Class
	s := testServerWithKind(t, nil, nil, testKind{start: func(h *Hub) { class = h.NewClass("test", "link") }})
	return s, class
}

// testServerWithKind starts a core on loopback, logging nowhere: tweak
// adjusts its configuration, setup its routes, and k (if not nil) is
// registered before Start. It is shut down when the test ends.
func testServerWithKind(t *testing.T, tweak func(*Config), setup func(*Server), k Kind) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if k != nil {
		s.Register(k)
	}
	if setup != nil {
		setup(s)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return s
}

// wsPeer accepts one WebSocket on a loopback listener; first is sent right
// behind the 101.
func wsPeer(t *testing.T, first string) (url string, conns <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { conn.Close() })
		if _, err := ws.Upgrade(conn); err != nil {
			return
		}
		if first != "" {
			_ = wsutil.WriteServerText(conn, []byte(first))
		}
		ch <- conn
	}()
	return "ws://" + ln.Addr().String() + "/link", ch
}

// A dialled link is the client side: it reads what the server sent right
// behind its 101, its frames and its pong and close are masked, and the
// server's close ends it.
func TestDialWSIsTheClientSide(t *testing.T) {
	s, class := startWithClass(t)
	url, conns := wsPeer(t, "init")
	role := newRecordingRole()
	c, err := dialFrom(t, s, class, DialOptions{URL: url, Timeout: testkit.EventTimeout, Role: role})
	if err != nil {
		t.Fatal(err)
	}
	peer := <-conns
	_ = peer.SetDeadline(time.Now().Add(testkit.EventTimeout))
	select {
	case m := <-role.messages:
		if m != "init" {
			t.Fatalf("link heard %q", m)
		}
	case <-time.After(testkit.EventTimeout):
		t.Fatal("the frame sent right behind the 101 never reached the role")
	}

	big := strings.Repeat("x", directWriteBytes+10) // a payload that would be written directly if it were not sealed
	s.Post(func(h *Hub) {
		h.Send(&Member{Conn: &c.Endpoint}, true, []byte("up"))
		h.Send(&Member{Conn: &c.Endpoint}, true, []byte(big))
	})
	for _, want := range []string{"up", big} {
		msg, op, err := wsutil.ReadClientData(peer) // refuses unmasked frames
		if err != nil || op != ws.OpText || string(msg) != want {
			t.Fatalf("peer read %d bytes, %v, %v; want %d bytes", len(msg), op, err, len(want))
		}
	}

	if err := ws.WriteFrame(peer, ws.NewPingFrame([]byte("p1"))); err != nil {
		t.Fatal(err)
	}
	expectMaskedFrame(t, peer, ws.OpPong, "p1")

	if err := ws.WriteFrame(peer, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))); err != nil {
		t.Fatal(err)
	}
	expectMaskedFrame(t, peer, ws.OpClose, "\x03\xe8")
	select {
	case r := <-role.ended:
		if r != EndGone {
			t.Fatalf("ended %v", r)
		}
	case <-time.After(testkit.EventTimeout):
		t.Fatal("role never heard the end")
	}
}

// testPoll reports whether cond holds within timeout.
func testPoll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
	return true
}

func expectMaskedFrame(t *testing.T, conn net.Conn, op ws.OpCode, payload string) {
	t.Helper()
	f, err := ws.ReadFrame(conn)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Header.Masked {
		t.Fatalf("%v frame not masked", f.Header.OpCode)
	}
	ws.Cipher(f.Payload, f.Header.Mask, 0)
	if f.Header.OpCode != op || string(f.Payload) != payload {
		t.Fatalf("got %v %q, want %v %q", f.Header.OpCode, f.Payload, op, payload)
	}
}

// A server that masks its frames breaks RFC 6455: the link is closed with
// 1002, masked.
func TestDialWSRefusesMaskedServerFrames(t *testing.T) {
	s, class := startWithClass(t)
	url, conns := wsPeer(t, "")
	role := newRecordingRole()
	if _, err := dialFrom(t, s, class, DialOptions{URL: url, Timeout: testkit.EventTimeout, Role: role}); err != nil {
		t.Fatal(err)
	}
	peer := <-conns
	_ = peer.SetDeadline(time.Now().Add(testkit.EventTimeout))
	if err := wsutil.WriteClientText(peer, []byte("masked")); err != nil {
		t.Fatal(err)
	}
	f, err := ws.ReadFrame(peer)
	if err != nil {
		t.Fatal(err)
	}
	ws.Cipher(f.Payload, f.Header.Mask, 0)
	if code, _ := ws.ParseCloseFrameData(f.Payload); !f.Header.Masked || f.Header.OpCode != ws.OpClose || code != ws.StatusProtocolError {
		t.Fatalf("got %+v code %d, want a masked close 1002", f.Header, code)
	}
	if r := <-role.ended; r != EndProtocol {
		t.Fatalf("ended %v", r)
	}
}

// Every failure reaches done, once, with an error that says what failed.
func TestDialWSFailures(t *testing.T) {
	s, class := startWithClass(t)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedAddr := closed.Addr().String()
	closed.Close()

	notWS := httpServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }))

	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	var held sync.WaitGroup
	held.Add(1)
	go func() {
		defer held.Done()
		if c, err := silent.Accept(); err == nil {
			_, _ = io.Copy(io.Discard, c) // never answers; ends when the dialler gives up
			c.Close()
		}
	}()

	for _, c := range []struct {
		name, url string
		timeout   time.Duration
		want      string
	}{
		{"refused", "ws://" + refusedAddr + "/", testkit.EventTimeout, "refused"},
		{"404", "ws://" + notWS + "/", testkit.EventTimeout, "HTTP status 404"},
		{"silent", "ws://" + silent.Addr().String() + "/", 200 * time.Millisecond, "timeout"},
		{"scheme", "wss://" + notWS + "/", testkit.EventTimeout, "only ws://"},
	} {
		_, err := dialFrom(t, s, class, DialOptions{URL: c.url, Timeout: c.timeout, Role: newRecordingRole()})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	held.Wait()
}

func httpServer(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: testkit.EventTimeout}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// A dial under way when the server stops is interrupted, and done hears
// of it.
func TestDialWSInterruptedByShutdown(t *testing.T) {
	s, class := startWithClass(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := silent.Accept(); err == nil {
			accepted <- c
		}
	}()
	got := make(chan error, 1)
	s.Post(func(h *Hub) {
		h.DialWS(DialOptions{URL: "ws://" + silent.Addr().String() + "/", Timeout: time.Hour, Role: newRecordingRole(),
			WS: WSOptions{Class: class, Output: Output{Format: testClientFormat, Limit: 1 << 20}, MaxMessage: 1024}},
			func(_ *WSConn, err error) { got <- err })
	})
	c := <-accepted
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testkit.EventTimeout)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err == nil {
			t.Fatal("dial succeeded")
		}
	default:
		// done was posted after the loop stopped: nothing ran it, which is
		// what a stopped loop does with every task.
	}
}

// producerRole publishes every message a WebSocket member sends to its
// channel.
type producerRole struct {
	m  *Member
	ch *Channel
}

func (p *producerRole) Message(_ *WSConn, text bool, payload []byte) {
	p.ch.Publish(MemberData, p.m, text, payload)
}
func (p *producerRole) Ended(*WSConn, EndReason) { p.ch.Leave(p.m) }

// upstreamRole is a raw TCP peer attached as the channel's upstream.
type upstreamRole struct{ attach func(*TCPConn) }

func (u upstreamRole) Open(c *TCPConn) bool        { u.attach(c); return true }
func (upstreamRole) Data(_ *TCPConn, d []byte) int { return len(d) }
func (upstreamRole) Ended(*TCPConn, EndReason)     {}

type nopOwner struct{}

func (nopOwner) Detached(*Channel, *Upstream) {}

// A WebSocket member is a producer like a raw socket: while the upstream
// it feeds is past its high watermark it is not read, and once the
// upstream drains it is read again; nothing is lost or reordered.
func TestWebSocketProducerPausesForItsUpstream(t *testing.T) {
	var producers *Class
	var ch *Channel
	var upstreamLn net.Listener
	k := testKind{start: func(h *Hub) {
		producers = h.NewClass("test", "producer")
		upstreams := h.NewClass("test", "upstream")
		ch, _ = h.OpenChannel(Key{Kind: "test", Name: "c"}, Policy{ToUpstreams: true}, nopOwner{}, 0)
		var err error
		upstreamLn, err = h.Listen("127.0.0.1:0", "upstream", func(c net.Conn) *TCPConn {
			return h.NewTCPConn(c, upstreams, Output{Format: Raw, Limit: 1 << 30, OnFull: PauseWhenFull},
				upstreamRole{attach: func(tc *TCPConn) { ch.Attach(&Upstream{Out: &tc.Endpoint}) }})
		})
		if err != nil {
			t.Error(err)
		}
	}}
	s := testServerWithKind(t, func(c *Config) { c.HighWater, c.LowWater = 64<<10, 16<<10 }, func(s *Server) {
		s.Handle("/produce", func(r *Request) {
			answer, ok := r.Accept()
			if !ok {
				return
			}
			p := &producerRole{ch: ch}
			c := r.Upgrade(answer, p, WSOptions{Class: producers, Output: Output{Format: WSMessage, Limit: 1 << 20}, MaxMessage: 1 << 20})
			p.m = &Member{Conn: &c.Endpoint}
			ch.Join(p.m)
		})
	}, k)
	t.Cleanup(func() { upstreamLn.Close() }) // before the server's shutdown, which waits for its accept loop

	// A small receive buffer set before connecting: the window is small
	// from the start (shrinking it later makes the kernel drop segments).
	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
	}}
	up, err := dialer.Dial("tcp", upstreamLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	testkit.Eventually(t, testkit.EventTimeout, "upstream attached", func() bool {
		n := 0
		_ = s.Run(context.Background(), func(*Hub) { n = ch.Upstreams() })
		return n == 1
	})

	prod, _, _, err := ws.Dialer{Timeout: testkit.EventTimeout}.Dial(context.Background(), "ws://"+s.Addr().String()+"/produce")
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	const msgSize, total = 16 << 10, 2048 // 32 MiB: more than the kernel buffers on both sides hold
	sent := make(chan error, 1)
	go func() {
		msg := make([]byte, msgSize)
		for i := range total {
			copy(msg, fmt.Sprintf("%08d", i))
			_ = prod.SetWriteDeadline(time.Now().Add(4 * testkit.EventTimeout))
			if err := wsutil.WriteClientBinary(prod, msg); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	testkit.Eventually(t, testkit.EventTimeout, "producer paused", func() bool {
		snap := s.Snapshot()
		return snap.Class("test", "producer").Paused == 1
	})
	snap := s.Snapshot()
	if got := snap.Class("test", "producer").BytesIn; got >= msgSize*total {
		t.Fatalf("the server read all %d bytes while the upstream read nothing", got)
	}

	// The producer also hears something, and reads it: gnet drains its
	// output with no callback to us and turns reading back on as it does.
	// The next traffic callback must pause it again, or it is read freely
	// while its upstream is still blocked.
	const echo = 4 << 20
	var pm *Member
	_ = s.Run(context.Background(), func(*Hub) { ch.EachMember(func(m *Member) { pm = m }) })
	s.Post(func(h *Hub) {
		chunk := make([]byte, 64<<10)
		for range echo / len(chunk) {
			h.Send(pm, false, chunk)
		}
	})
	for heard := 0; heard < echo; {
		_ = prod.SetReadDeadline(time.Now().Add(testkit.EventTimeout))
		msg, _, err := wsutil.ReadServerData(prod)
		if err != nil {
			t.Fatalf("producer reading what it was sent: %v", err)
		}
		heard += len(msg)
	}
	// Give a read that gnet turned back on the chance to run away: the
	// writer has 32 MiB to send, so it would within this window.
	if testPoll(time.Second, func() bool { snap := s.Snapshot(); return snap.Class("test", "producer").BytesIn >= msgSize*total }) {
		t.Fatal("after its output drained the producer was read freely while its upstream was blocked")
	}

	// The upstream reads: everything arrives, in order.
	_ = up.SetReadDeadline(time.Now().Add(4 * testkit.EventTimeout))
	buf := make([]byte, msgSize)
	for i := range total {
		if _, err := io.ReadFull(up, buf); err != nil {
			snap := s.Snapshot()
			var blocked, paused int
			_ = s.Run(context.Background(), func(h *Hub) { blocked, paused = len(h.blocked), len(h.paused) })
			t.Fatalf("message %d: %v\n%+v\n%+v\nblocked %d paused %d delay %d", i, err, snap.Class("test", "producer"), snap.Class("test", "upstream"), blocked, paused, s.flowDelay.Load())
		}
		if want := fmt.Sprintf("%08d", i); string(buf[:8]) != want {
			t.Fatalf("message %d starts %q", i, buf[:8])
		}
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	snap = s.Snapshot()
	if c := snap.Class("test", "producer"); c.Pauses == 0 || c.Forced() != 0 {
		t.Fatalf("producer counters %+v", c)
	}
}
