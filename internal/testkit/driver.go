package testkit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
)

// Driver is a WebSocket client as PlaceOS drivers are: it registers on a
// dispatch port or attaches to a socket group and exchanges dispatch
// messages. Its methods fail the test they were dialled in, so they belong
// on that test's goroutine; Conn and Reader are there for tests that speak
// raw frames or read on their own goroutine.
type Driver struct {
	tb     testing.TB
	Conn   net.Conn
	Reader *bufio.Reader // Conn's reader: it may hold bytes read past the handshake
}

// DispatchTarget is the upgrade target of a driver on a dispatch port of
// proto "tcp" or "udp" admitting accept (the query value, verbatim).
func DispatchTarget(base, proto string, port int, accept string) string {
	return fmt.Sprintf("%s/%s_dispatch?port=%d&accept=%s", base, proto, port, accept)
}

// GroupTarget is the upgrade target of a driver on the TCP socket group id,
// admitting accept, or every member when accept is "".
func GroupTarget(base, group, accept string) string {
	target := base + "/group_dispatch?group=" + group
	if accept != "" {
		target += "&accept=" + accept
	}
	return target
}

// DriverHeader is what PlaceOS drivers send: the token and a module id.
func DriverHeader(s Server) http.Header {
	return http.Header{"Authorization": {"Bearer " + s.Secret()}, "X-Module-Id": {"mod-e2e"}}
}

// DialDriver opens a WebSocket to target; a refused upgrade is a
// ws.StatusError. The connection is closed when the test ends.
func DialDriver(tb testing.TB, s Server, target string, header http.Header, opts ...DialOption) (*Driver, error) {
	tb.Helper()
	conn, br, err := dialWebSocket(s, target, header, opts)
	if err != nil {
		return nil, err
	}
	tb.Cleanup(func() { conn.Close() })
	return &Driver{tb: tb, Conn: conn, Reader: br}, nil
}

// dialWebSocket upgrades a connection to target; the caller owns it.
func dialWebSocket(s Server, target string, header http.Header, opts []DialOption) (net.Conn, *bufio.Reader, error) {
	dialer := ws.Dialer{
		Timeout: EventTimeout,
		Header:  ws.HandshakeHeaderHTTP(header),
		NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netDialer("", opts).DialContext(ctx, network, addr)
		},
	}
	conn, br, _, err := dialer.Dial(context.Background(), "ws://"+s.HTTPAddr()+target)
	if err != nil {
		return nil, nil, err
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	return conn, br, nil
}

// MustDialDriver dials target with the driver header, failing the test on error.
func MustDialDriver(tb testing.TB, s Server, target string, opts ...DialOption) *Driver {
	tb.Helper()
	d, err := DialDriver(tb, s, target, DriverHeader(s), opts...)
	if err != nil {
		tb.Fatalf("dialling driver %s: %v", target, err)
	}
	return d
}

// TCPDriver registers a driver on the TCP dispatch port, failing the test on error.
func TCPDriver(tb testing.TB, s Server, port int, accept string) *Driver {
	tb.Helper()
	return MustDialDriver(tb, s, DispatchTarget(BasePath, "tcp", port, accept))
}

// UDPDriver registers a driver on the UDP dispatch port, failing the test on error.
func UDPDriver(tb testing.TB, s Server, port int, accept string) *Driver {
	tb.Helper()
	return MustDialDriver(tb, s, DispatchTarget(BasePath, "udp", port, accept))
}

// OpenPort registers a driver on a free dispatch port of proto "tcp" or
// "udp", trying other ports if another process takes the one picked.
func OpenPort(tb testing.TB, s Server, proto, accept string) (*Driver, int) {
	tb.Helper()
	var d *Driver
	port := OnFreePort(tb, func(tb testing.TB) int { return FreePort(tb, proto) }, func(port int) (err error) {
		d, err = DialDriver(tb, s, DispatchTarget(BasePath, proto, port, accept), DriverHeader(s))
		return err
	})
	return d, port
}

// OpenPortWithDevice registers a driver on a free TCP dispatch port
// admitting fromIP, connects a device from fromIP and checks that the
// driver is told OPENED for it, with id 0.
func OpenPortWithDevice(tb testing.TB, s Server, fromIP string) (*Driver, int, *net.TCPConn) {
	tb.Helper()
	d, port := OpenPort(tb, s, "tcp", fromIP)
	device := DialDevice(tb, fromIP, port)
	d.ExpectOpened(fromIP, 0)
	return d, port, device
}

// Send writes one binary WebSocket message.
func (d *Driver) Send(msg []byte) {
	d.tb.Helper()
	_ = d.Conn.SetWriteDeadline(time.Now().Add(EventTimeout))
	if err := wsutil.WriteClientBinary(d.Conn, msg); err != nil {
		d.tb.Fatalf("driver: sending: %v", err)
	}
}

// Write sends WRITE: data for the TCP client id (or UDP peer ip:port).
func (d *Driver) Write(ip string, idOrPort uint64, data []byte) {
	d.tb.Helper()
	d.Send(codec.AppendMessage(nil, codec.Write, []byte(ip), idOrPort, data))
}

// CloseClient sends CLOSE for a TCP client.
func (d *Driver) CloseClient(ip string, id uint64) {
	d.tb.Helper()
	d.Send(codec.AppendMessage(nil, codec.Close, []byte(ip), id, nil))
}

// ReadFrame reads one raw frame; server frames must not be masked.
func (d *Driver) ReadFrame() (ws.Header, []byte, error) {
	_ = d.Conn.SetReadDeadline(time.Now().Add(EventTimeout))
	h, err := ws.ReadHeader(d.Reader)
	if err != nil {
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server sent a masked frame")
	}
	payload := make([]byte, h.Length)
	_, err = io.ReadFull(d.Reader, payload)
	return h, payload, err
}

// CloseFrameError reports a close frame received while a message was expected.
type CloseFrameError struct {
	Code   ws.StatusCode
	Reason string
}

func (e *CloseFrameError) Error() string {
	return fmt.Sprintf("close frame %d %q", e.Code, e.Reason)
}

// NextMessage returns the next data message, reassembling fragments,
// answering pings and skipping pongs. A close frame is a *CloseFrameError.
func (d *Driver) NextMessage() (ws.OpCode, []byte, error) {
	var op ws.OpCode
	var msg []byte
	for {
		h, payload, err := d.ReadFrame()
		if err != nil {
			return 0, nil, err
		}
		switch h.OpCode {
		case ws.OpPing:
			_ = wsutil.WriteClientMessage(d.Conn, ws.OpPong, payload)
			continue
		case ws.OpPong:
			continue
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(payload)
			return ws.OpClose, nil, &CloseFrameError{Code: code, Reason: reason}
		case ws.OpContinuation:
		default:
			op = h.OpCode
		}
		msg = append(msg, payload...)
		if h.Fin {
			return op, msg, nil
		}
	}
}

// Next returns the next protocol message, which must be a binary message.
func (d *Driver) Next() []byte {
	d.tb.Helper()
	op, msg, err := d.NextMessage()
	if err != nil {
		d.tb.Fatalf("driver: waiting for a message: %v", err)
	}
	if op != ws.OpBinary {
		d.tb.Fatalf("driver: got a %v message %q, want binary", op, msg)
	}
	return msg
}

// NextParsed returns the next protocol message, decoded.
func (d *Driver) NextParsed() codec.Message {
	d.tb.Helper()
	raw := d.Next()
	m, err := codec.ParseMessage(raw)
	if err != nil {
		d.tb.Fatalf("driver: undecodable message % x: %v", raw, err)
	}
	return m
}

// Expect checks that the next message is exactly the encoding of the given one.
func (d *Driver) Expect(typ codec.MsgType, ip string, idOrPort uint64, data []byte) {
	d.tb.Helper()
	got := d.Next()
	want := codec.AppendMessage(nil, typ, []byte(ip), idOrPort, data)
	if !bytes.Equal(got, want) {
		d.tb.Fatalf("driver got %s\n          want %s", Describe(got), Describe(want))
	}
}

func (d *Driver) ExpectOpened(ip string, id uint64) {
	d.tb.Helper()
	d.Expect(codec.Opened, ip, id, nil)
}

func (d *Driver) ExpectReceived(ip string, idOrPort uint64, data []byte) {
	d.tb.Helper()
	d.Expect(codec.Received, ip, idOrPort, data)
}

func (d *Driver) ExpectClosed(ip string, id uint64) {
	d.tb.Helper()
	d.Expect(codec.Closed, ip, id, nil)
}

// ExpectStream reads RECEIVED messages for one TCP client until n bytes have
// arrived (a large write may be delivered in several reads) and returns them.
func (d *Driver) ExpectStream(ip string, id uint64, n int) []byte {
	d.tb.Helper()
	var got []byte
	for len(got) < n {
		raw := d.Next()
		m, err := codec.ParseMessage(raw)
		if err != nil || m.Type != codec.Received || string(m.IP) != ip || m.ID != id || len(m.Data) == 0 {
			d.tb.Fatalf("driver got %s after %d of %d bytes, want RECEIVED ip=%q id=%d with data", Describe(raw), len(got), n, ip, id)
		}
		got = append(got, m.Data...)
	}
	if len(got) != n {
		d.tb.Fatalf("driver received %d bytes, want %d", len(got), n)
	}
	return got
}

// ExpectCloseCode checks that the next frame other than a ping or pong is a
// close frame with code.
func (d *Driver) ExpectCloseCode(code ws.StatusCode) {
	d.tb.Helper()
	op, msg, err := d.NextMessage()
	var closeErr *CloseFrameError
	switch {
	case errors.As(err, &closeErr):
		if closeErr.Code != code {
			d.tb.Fatalf("driver: close code %d (%q), want %d", closeErr.Code, closeErr.Reason, code)
		}
	case err != nil:
		d.tb.Fatalf("driver: waiting for close frame %d: %v", code, err)
	default:
		d.tb.Fatalf("driver: got %v message %s, want close frame %d", op, Describe(msg), code)
	}
}

// ReadToClose reads frames until a close frame, returning its code and how
// many data bytes came before it; onData, if not nil, hears of them as they
// arrive. An error means no close frame arrived; idle bounds each read.
func (d *Driver) ReadToClose(idle time.Duration, onData func(n int64)) (ws.StatusCode, int64, error) {
	var data int64
	buf := make([]byte, 64<<10)
	for {
		_ = d.Conn.SetReadDeadline(time.Now().Add(idle))
		h, err := ws.ReadHeader(d.Reader)
		if err != nil {
			return 0, data, err
		}
		if h.Masked {
			return 0, data, errors.New("server sent a masked frame")
		}
		if h.OpCode != ws.OpClose {
			for left := h.Length; left > 0; {
				_ = d.Conn.SetReadDeadline(time.Now().Add(idle))
				n, err := d.Reader.Read(buf[:min(int64(len(buf)), left)])
				left -= int64(n)
				data += int64(n)
				if onData != nil && n > 0 {
					onData(int64(n))
				}
				if err != nil {
					return 0, data, fmt.Errorf("inside a %d-byte frame: %w", h.Length, err)
				}
			}
			continue
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(d.Reader, payload); err != nil {
			return 0, data, err
		}
		if len(payload) < 2 {
			return ws.StatusNoStatusRcvd, data, nil
		}
		return ws.StatusCode(binary.BigEndian.Uint16(payload)), data, nil
	}
}

// Leave closes the session politely: close frame, wait for the answer, hang up.
func (d *Driver) Leave() {
	_ = wsutil.WriteClientMessage(d.Conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
	for {
		if _, _, err := d.NextMessage(); err != nil {
			break
		}
	}
	d.Conn.Close()
}

// Drop hangs up without a close frame, as a crashing driver would.
func (d *Driver) Drop() { d.Conn.Close() }

// Pumped is one thing a pumped driver received: a protocol message, a close
// frame (Closed, with CloseCode) or the error that ended reading.
type Pumped struct {
	Msg       codec.Message
	Closed    bool
	CloseCode ws.StatusCode
	Err       error
}

// Pump reads the driver's frames on its own goroutine, without a read
// deadline, until the connection ends, and hands them out in order.
// Protocol messages are copied. The driver must not be read otherwise.
func (d *Driver) Pump() <-chan Pumped {
	out := make(chan Pumped, 1<<14)
	_ = d.Conn.SetReadDeadline(time.Time{})
	go func() {
		defer close(out)
		for {
			h, err := ws.ReadHeader(d.Reader)
			if err != nil {
				out <- Pumped{Err: err}
				return
			}
			payload := make([]byte, h.Length)
			if _, err := io.ReadFull(d.Reader, payload); err != nil {
				out <- Pumped{Err: err}
				return
			}
			switch h.OpCode {
			case ws.OpClose:
				code := ws.StatusNoStatusRcvd
				if len(payload) >= 2 {
					code, _ = ws.ParseCloseFrameData(payload)
				}
				out <- Pumped{Closed: true, CloseCode: code}
				return
			case ws.OpBinary:
				m, err := codec.ParseMessage(payload)
				if err != nil {
					out <- Pumped{Err: fmt.Errorf("undecodable message % x: %w", payload, err)}
					return
				}
				out <- Pumped{Msg: m}
			}
		}
	}()
	return out
}

// ExpectPumped waits for a pumped message matching want; other messages
// are skipped. The connection ending, a close frame or EventTimeout fail the test.
func ExpectPumped(tb testing.TB, pump <-chan Pumped, what string, want func(codec.Message) bool) codec.Message {
	tb.Helper()
	deadline := time.After(EventTimeout)
	for {
		select {
		case it, ok := <-pump:
			switch {
			case !ok:
				tb.Fatalf("%s: the driver connection has ended", what)
			case it.Err != nil:
				tb.Fatalf("%s: %v", what, it.Err)
			case it.Closed:
				tb.Fatalf("%s: close frame %d", what, it.CloseCode)
			case want(it.Msg):
				return it.Msg
			}
		case <-deadline:
			tb.Fatalf("%s: nothing within %v", what, EventTimeout)
		}
	}
}

// Describe renders an encoded dispatch message for failure output.
func Describe(b []byte) string {
	m, err := codec.ParseMessage(b)
	if err != nil {
		return fmt.Sprintf("undecodable %x (%v)", b, err)
	}
	data, more := m.Data, ""
	if len(data) > 32 {
		data, more = data[:32], "…"
	}
	s := fmt.Sprintf("%s ip=%q id=%d size=%d data=%q%s", m.Type, m.IP, m.ID, len(m.Data), data, more)
	if extra := len(b) - codec.HeaderLen(len(m.IP)) - len(m.Data); extra != 0 {
		s += fmt.Sprintf(" +%d trailing bytes", extra)
	}
	return s
}

// DescribeMessage renders a decoded dispatch message for failure output.
func DescribeMessage(m codec.Message) string {
	return Describe(codec.AppendMessage(nil, m.Type, m.IP, m.ID, m.Data))
}

// FromHex decodes a spec example, spaces allowed.
func FromHex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		tb.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// RawClientFrame builds one client frame by hand, so tests control every bit.
func RawClientFrame(fin bool, rsv byte, op ws.OpCode, masked bool, payload []byte) []byte {
	b := []byte{byte(op)&0x0f | rsv<<4, 0}
	if fin {
		b[0] |= 0x80
	}
	n := len(payload)
	switch {
	case n < 126:
		b[1] = byte(n)
	case n <= 0xffff:
		b[1] = 126
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b[1] = 127
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if !masked {
		return append(b, payload...)
	}
	b[1] |= 0x80
	mask := [4]byte{0x1f, 0x2e, 0x3d, 0x4c}
	b = append(b, mask[:]...)
	start := len(b)
	b = append(b, payload...)
	ws.Cipher(b[start:], mask, 0)
	return b
}

// RawFrameHeader is a masked frame header announcing length bytes, with no payload.
func RawFrameHeader(fin bool, op ws.OpCode, length uint64) []byte {
	b := []byte{byte(op), 0x80 | 127}
	if fin {
		b[0] |= 0x80
	}
	b = binary.BigEndian.AppendUint64(b, length)
	return append(b, 0x1f, 0x2e, 0x3d, 0x4c)
}
