package loop

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/codec"
)

// Outbound WebSockets. A kind that keeps links to services of its own dials
// them with Hub.DialWS: the TCP connection and the client handshake are
// made on a goroutine, off the loop; the connection is then enrolled into
// the loop as the client side of a WebSocket (WSConn with client set):
// frames in are unmasked, frames out are masked with a fresh key each,
// drawn from crypto/rand, as RFC 6455 §5.3 requires. Output reaches a link
// through the outbox like any other endpoint's; a format for links is made
// with NewSealedFormat, whose seal masks each encoded frame in place once
// its payload is there. A sealed format is never written straight from a
// read buffer (the payload would be masked in the sender's buffer), and an
// encoding is shared only by the endpoints of one event, so a frame sent
// to one link is never sent to another.

// DialOptions describes one outbound WebSocket.
type DialOptions struct {
	URL     string        // ws://host:port/path
	Header  http.Header   // extra request headers
	Timeout time.Duration // for the TCP connection and the handshake together
	Role    WSRole        // what the endpoint is for, once on the loop
	WS      WSOptions
}

// ErrStopping is why a dial that completes while the server stops is not
// handed over.
var ErrStopping = errors.New("the server is stopping")

// DialWS connects to a WebSocket server off the loop. done runs on the
// loop exactly once, with the open endpoint or with why there is none (a
// refused connection, a failed handshake, a timeout, the server stopping).
// It may be called from the loop only.
func (h *Hub) DialWS(o DialOptions, done func(c *WSConn, err error)) {
	s := h.s
	ctx, ok := s.dials.begin()
	if !ok {
		s.post(func() { done(nil, ErrStopping) })
		return
	}
	go func() {
		defer s.dials.end()
		fail := func(err error) { s.post(func() { done(nil, err) }) }
		conn, err := dialWS(ctx, o)
		if err != nil {
			fail(err)
			return
		}
		c := &WSConn{role: o.Role, maxMessage: o.WS.MaxMessage, client: true}
		c.addressOf(conn)
		if _, err := s.cli.EnrollContext(conn, &dialedConn{h: h, c: c, opts: o.WS, done: done}); err != nil {
			_ = conn.Close()
			fail(fmt.Errorf("hand to the loop: %w", err))
		}
	}()
}

// dialWS makes the TCP connection and the client handshake, within
// o.Timeout and while ctx lasts.
func dialWS(ctx context.Context, o DialOptions) (*net.TCPConn, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("%s: only ws:// URLs can be dialled", o.URL)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var nd net.Dialer
	nc, err := nd.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	conn := nc.(*net.TCPConn)
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	// A cancelled dial (the server stopping) interrupts the handshake.
	interrupt := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	br, _, err := ws.Dialer{Header: ws.HandshakeHeaderHTTP(o.Header)}.Upgrade(headReader{conn}, u)
	if br != nil {
		// headReader reads the response head a byte at a time, so nothing
		// the server sends after it can be buffered here.
		ws.PutReader(br)
		err = errors.Join(err, errors.New("bytes buffered past the handshake"))
	}
	if !interrupt() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		_ = conn.Close()
		var status ws.StatusError
		if errors.As(err, &status) {
			return nil, fmt.Errorf("handshake refused with HTTP status %d", int(status))
		}
		return nil, fmt.Errorf("handshake: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// headReader reads at most one byte per call, so that the handshake's
// buffered reader stops exactly at the end of the response head: frames
// the server sends right behind its 101 stay in the socket for the loop.
// A response head is a few hundred bytes, read once per link.
type headReader struct{ c *net.TCPConn }

func (r headReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return r.c.Read(p)
}

func (r headReader) Write(p []byte) (int, error) { return r.c.Write(p) }

var _ io.ReadWriter = headReader{}

// dialedConn carries a dialled connection to the loop: on open it becomes
// a WSConn (the connection's context from then on) and done hears of it.
type dialedConn struct {
	h    *Hub
	c    *WSConn
	opts WSOptions
	done func(*WSConn, error)
}

func (d *dialedConn) opened(gc gnet.Conn) gnet.Action {
	if d.h.Stopping() {
		d.done(nil, ErrStopping)
		return gnet.Close
	}
	c := d.c
	c.init(d.h, gc, d.opts.Class, c, d.opts.Output)
	gc.SetContext(c)
	d.done(c, nil)
	return gnet.None
}

// traffic and closed never run for an open connection (its context is the
// WSConn by then); closed runs for one refused at open.
func (d *dialedConn) traffic(gnet.Conn) gnet.Action { return gnet.None }
func (d *dialedConn) closed(gnet.Conn, error)       {}

// dialer tracks the goroutines making outbound connections, so that
// shutdown can interrupt them and wait for them.
type dialer struct {
	mu      sync.Mutex
	ctx     context.Context
	cancel  context.CancelFunc
	stopped bool
	wg      sync.WaitGroup
}

func (d *dialer) begin() (context.Context, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		return nil, false
	}
	if d.ctx == nil {
		d.ctx, d.cancel = context.WithCancel(context.Background())
	}
	d.wg.Add(1)
	return d.ctx, true
}

func (d *dialer) end() { d.wg.Done() }

// stop interrupts the dials under way and waits for them.
func (d *dialer) stop() {
	d.mu.Lock()
	d.stopped = true
	if d.cancel != nil {
		d.cancel()
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// NewMask draws a WebSocket masking key from crypto/rand.
func NewMask() (mask [4]byte) {
	_, _ = rand.Read(mask[:]) // never fails (crypto/rand crashes the program instead)
	return mask
}

// NewSealedFormat registers a wire format whose encodings seal finishes in
// place, once the payload has been appended: a client-side WebSocket format
// writes a masked header (codec.AppendMaskedFrameHeader with NewMask) and
// seals with codec.MaskFrame. Call it from a package-level variable
// initialiser.
func NewSealedFormat(name string, frame FrameFunc, seal func(encoded []byte)) *Format {
	f := NewFormat(name, frame)
	f.seal = seal
	return f
}

// queueControl queues a control frame (a pong) for a WebSocket, masked
// on the client side.
func (c *WSConn) queueControl(op ws.OpCode, payload []byte) {
	h := c.hub
	if !c.client {
		h.queueFrame(&c.Endpoint, op, payload)
		return
	}
	start := len(h.out.arena)
	h.out.arena = codec.AppendMaskedFrame(h.out.arena, op, payload, NewMask())
	h.queue(&c.Endpoint, start, len(h.out.arena))
	h.scheduleFlush()
}

// appendClose appends the close frame for code (masked on the client
// side); StatusNoStatusRcvd is a close frame without a payload.
func (c *WSConn) appendClose(dst []byte, code ws.StatusCode, text string) []byte {
	switch {
	case !c.client && code == ws.StatusNoStatusRcvd:
		return codec.AppendFrameHeader(dst, ws.OpClose, 0)
	case !c.client:
		return codec.AppendCloseFrame(dst, code, text)
	case code == ws.StatusNoStatusRcvd:
		return codec.AppendMaskedFrameHeader(dst, ws.OpClose, 0, NewMask())
	}
	return codec.AppendMaskedCloseFrame(dst, code, text, NewMask())
}
