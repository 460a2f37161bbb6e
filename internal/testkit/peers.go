package testkit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// DialOption adjusts a TCP socket before it connects.
type DialOption func(*dialConfig)

type dialConfig struct {
	rcvbuf    int
	reuseAddr bool
}

// ReceiveBuffer sets SO_RCVBUF before connecting, so that the window the
// socket advertises is small from the start and the kernel cannot hide a
// peer's backlog. It implies ReuseAddr.
func ReceiveBuffer(size int) DialOption {
	return func(c *dialConfig) { c.rcvbuf, c.reuseAddr = size, true }
}

// ReuseAddr sets SO_REUSEADDR. It matters on a busy test machine: a client
// socket that closes first lingers in TIME_WAIT for a minute, and without
// it that port cannot be bound by a wildcard listener (another test's
// server opening a device port) until then.
func ReuseAddr() DialOption {
	return func(c *dialConfig) { c.reuseAddr = true }
}

func (c dialConfig) control(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if c.reuseAddr {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
		}
		if serr == nil && c.rcvbuf > 0 {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, c.rcvbuf)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func netDialer(fromIP string, opts []DialOption) *net.Dialer {
	var c dialConfig
	for _, o := range opts {
		o(&c)
	}
	d := &net.Dialer{Timeout: EventTimeout}
	if c.reuseAddr || c.rcvbuf > 0 {
		d.Control = c.control
	}
	if fromIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(fromIP)}
	}
	return d
}

// Dial connects to addr from fromIP ("" for any local address).
func Dial(fromIP, addr string, opts ...DialOption) (*net.TCPConn, error) {
	conn, err := netDialer(fromIP, opts).Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return conn.(*net.TCPConn), nil
}

// TryDialDevice connects to a device port from fromIP (127.0.0.x, or ::1 to
// reach the port over IPv6).
func TryDialDevice(fromIP string, port int, opts ...DialOption) (*net.TCPConn, error) {
	host := Localhost
	if net.ParseIP(fromIP).To4() == nil {
		host = "::1"
	}
	return Dial(fromIP, net.JoinHostPort(host, strconv.Itoa(port)), opts...)
}

// DialDevice is TryDialDevice that fails the test on error; the connection
// is closed when the test ends.
func DialDevice(tb testing.TB, fromIP string, port int, opts ...DialOption) *net.TCPConn {
	tb.Helper()
	conn, err := TryDialDevice(fromIP, port, opts...)
	if err != nil {
		tb.Fatalf("device %s → port %d: %v", fromIP, port, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// Send writes data to a raw TCP peer's connection.
func Send(tb testing.TB, conn net.Conn, data []byte) {
	tb.Helper()
	_ = conn.SetWriteDeadline(time.Now().Add(EventTimeout))
	if _, err := conn.Write(data); err != nil {
		tb.Fatalf("peer %v: writing: %v", conn.LocalAddr(), err)
	}
}

// ExpectReceives reads exactly len(want) bytes and compares them.
func ExpectReceives(tb testing.TB, conn net.Conn, want []byte) {
	tb.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(EventTimeout))
	got := make([]byte, len(want))
	n, err := io.ReadFull(conn, got)
	if err != nil {
		tb.Fatalf("peer %v: read %d of %d bytes: %v", conn.LocalAddr(), n, len(want), err)
	}
	if !bytes.Equal(got, want) {
		tb.Fatalf("peer %v received %q, want %q", conn.LocalAddr(), Abbreviate(got), Abbreviate(want))
	}
}

// ExpectDisconnected checks that the server has closed the connection (end
// of file or reset) without sending anything first.
func ExpectDisconnected(tb testing.TB, conn net.Conn) {
	tb.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(EventTimeout))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	switch {
	case n > 0:
		tb.Fatalf("peer %v: got %q, want the connection closed", conn.LocalAddr(), buf[:n])
	case IsTimeout(err):
		tb.Fatalf("peer %v: still connected after %v", conn.LocalAddr(), EventTimeout)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
	default:
		tb.Fatalf("peer %v: unexpected read error %v", conn.LocalAddr(), err)
	}
}

// ExpectDisconnectedEventually drains a connection until the server's close
// shows (end of file or reset).
func ExpectDisconnectedEventually(tb testing.TB, conn net.Conn) {
	tb.Helper()
	buf := make([]byte, 64<<10)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(EventTimeout))
		_, err := conn.Read(buf)
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
			return
		default:
			tb.Fatalf("peer %v: %v while waiting for the server to close it", conn.LocalAddr(), err)
		}
	}
}

// WaitTCPPortClosed dials the port until the connection is refused.
func WaitTCPPortClosed(tb testing.TB, port int) {
	tb.Helper()
	var last error
	if !Poll(EventTimeout, func() bool {
		conn, err := TryDialDevice(Localhost, port)
		if err == nil {
			conn.Close()
		}
		last = err
		return errors.Is(err, syscall.ECONNREFUSED)
	}) {
		tb.Fatalf("TCP port %d still accepts connections (last error %v)", port, last)
	}
}

// WaitUDPPortFree binds the port until the server has released it.
func WaitUDPPortFree(tb testing.TB, port int) {
	tb.Helper()
	var last error
	if !Poll(EventTimeout, func() bool {
		conn, err := net.ListenPacket("udp", ":"+strconv.Itoa(port))
		if err == nil {
			conn.Close()
		}
		last = err
		return err == nil
	}) {
		tb.Fatalf("UDP port %d still bound: %v", port, last)
	}
}

// UDPPeer is an unconnected UDP socket on ip, port chosen by the kernel.
func UDPPeer(tb testing.TB, ip string) *net.UDPConn {
	tb.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		tb.Fatalf("UDP peer on %s: %v", ip, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// UDPPort is a UDP socket's local port, as the dispatch protocol carries it.
func UDPPort(conn *net.UDPConn) uint64 { return uint64(conn.LocalAddr().(*net.UDPAddr).Port) }

// SendDatagram sends data to port on localhost.
func SendDatagram(tb testing.TB, peer *net.UDPConn, port int, data []byte) {
	tb.Helper()
	if _, err := peer.WriteToUDP(data, &net.UDPAddr{IP: net.ParseIP(Localhost), Port: port}); err != nil {
		tb.Fatalf("UDP peer %v: sending %d bytes: %v", peer.LocalAddr(), len(data), err)
	}
}

// ExpectDatagram reads one datagram, compares it and returns its source.
func ExpectDatagram(tb testing.TB, peer *net.UDPConn, want []byte) *net.UDPAddr {
	tb.Helper()
	_ = peer.SetReadDeadline(time.Now().Add(EventTimeout))
	buf := make([]byte, 70000)
	n, from, err := peer.ReadFromUDP(buf)
	if err != nil {
		tb.Fatalf("UDP peer %v: waiting for %q: %v", peer.LocalAddr(), Abbreviate(want), err)
	}
	if !bytes.Equal(buf[:n], want) {
		tb.Fatalf("UDP peer %v received %q, want %q", peer.LocalAddr(), Abbreviate(buf[:n]), Abbreviate(want))
	}
	return from
}

// ExpectDatagramFrom reads one datagram, which must be want and come from
// port on the server (a dispatch port, or the UDP group's).
func ExpectDatagramFrom(tb testing.TB, peer *net.UDPConn, port int, want []byte) {
	tb.Helper()
	if from := ExpectDatagram(tb, peer, want); from.Port != port {
		tb.Fatalf("UDP peer %v: %q came from %v, want port %d", peer.LocalAddr(), Abbreviate(want), from, port)
	}
}

// Abbreviate renders bytes for failure output, cut at 48.
func Abbreviate(b []byte) string {
	if len(b) > 48 {
		return fmt.Sprintf("%s… (%d bytes)", b[:48], len(b))
	}
	return string(b)
}
