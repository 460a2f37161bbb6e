package testkit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// EmptyStats is the dispatch stats document with no port open.
	EmptyStats = `{"udp_listeners":{},"tcp_listeners":{},"tcp_clients":{}}`
	// InvalidTokenBody is the answer to a missing or wrong token.
	InvalidTokenBody = `{"error":"invalid authorisation token"}`
)

// TCPStats is the exact stats document for one open TCP port and nothing else.
func TCPStats(port, listeners, clients int) string {
	return fmt.Sprintf(`{"udp_listeners":{},"tcp_listeners":{"%d":%d},"tcp_clients":{"%d":%d}}`, port, listeners, port, clients)
}

// UDPStats is the exact stats document for one open UDP port and nothing else.
func UDPStats(port, listeners int) string {
	return fmt.Sprintf(`{"udp_listeners":{"%d":%d},"tcp_listeners":{},"tcp_clients":{}}`, port, listeners)
}

// Response is an HTTP answer, read by hand.
type Response struct {
	Status      int
	ContentType string
	Body        string
}

// BearerHeader is the Authorization header line carrying the server's token.
func BearerHeader(s Server) string { return "Authorization: Bearer " + s.Secret() }

// Get sends a plain GET with the given extra header lines, verbatim.
func Get(tb testing.TB, s Server, target string, headerLines ...string) Response {
	tb.Helper()
	return RoundTrip(tb, s, target, append(headerLines, "Connection: close"))
}

// GetUpgrade sends a WebSocket upgrade request with the given extra header
// lines and reads the answer (a 101 is left unanswered).
func GetUpgrade(tb testing.TB, s Server, target string, headerLines ...string) Response {
	tb.Helper()
	return RoundTrip(tb, s, target, append(headerLines,
		"Connection: Upgrade",
		"Upgrade: websocket",
		"Sec-WebSocket-Version: 13",
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="))
}

// RoundTrip writes a request head by hand, so the tests control every byte
// (empty headers, trailing spaces), and reads one response.
func RoundTrip(tb testing.TB, s Server, target string, headerLines []string) Response {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", s.HTTPAddr(), EventTimeout)
	if err != nil {
		tb.Fatalf("GET %s: %v", target, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(EventTimeout))
	var head strings.Builder
	fmt.Fprintf(&head, "GET %s HTTP/1.1\r\nHost: %s\r\n", target, s.HTTPAddr())
	for _, line := range headerLines {
		head.WriteString(line + "\r\n")
	}
	head.WriteString("\r\n")
	if _, err := io.WriteString(conn, head.String()); err != nil {
		tb.Fatalf("GET %s: %v", target, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		tb.Fatalf("GET %s: reading the response: %v", target, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("GET %s: reading the body: %v", target, err)
	}
	return Response{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: string(body)}
}

// ExpectResponse checks status, body and, when contentType is not empty,
// the media type of an answer.
func ExpectResponse(tb testing.TB, what string, got Response, status int, contentType, body string) {
	tb.Helper()
	if got.Status != status {
		tb.Errorf("%s: status %d, want %d (body %q)", what, got.Status, status, got.Body)
		return
	}
	if contentType != "" && !strings.HasPrefix(got.ContentType, contentType) {
		tb.Errorf("%s: Content-Type %q, want %s", what, got.ContentType, contentType)
	}
	if got.Body != body {
		tb.Errorf("%s: body %q, want %q", what, got.Body, body)
	}
}

// StatsBody fetches the dispatch stats document at path (BasePath, or a
// variant of it) with header auth.
func StatsBody(tb testing.TB, s Server, path string) string {
	tb.Helper()
	r := Get(tb, s, path, BearerHeader(s))
	if r.Status != http.StatusOK {
		tb.Fatalf("stats at %s: status %d, body %q", path, r.Status, r.Body)
	}
	if !strings.HasPrefix(r.ContentType, "application/json") {
		tb.Fatalf("stats at %s: Content-Type %q, want application/json", path, r.ContentType)
	}
	return r.Body
}

// WaitForStats polls the stats document at BasePath until it is exactly want.
func WaitForStats(tb testing.TB, s Server, want string) {
	tb.Helper()
	WaitForStatsAt(tb, s, BasePath, want)
}

// WaitForStatsAt polls the stats document at path until it is exactly want.
func WaitForStatsAt(tb testing.TB, s Server, path, want string) {
	tb.Helper()
	var got string
	if !Poll(EventTimeout, func() bool { got = StatsBody(tb, s, path); return got == want }) {
		tb.Fatalf("stats never became\n  %s\nlast answer:\n  %s", want, got)
	}
}

// DialRaw opens a plain TCP connection to the HTTP listener, closed when the test ends.
func DialRaw(tb testing.TB, s Server) net.Conn {
	tb.Helper()
	conn, err := net.DialTimeout("tcp", s.HTTPAddr(), EventTimeout)
	if err != nil {
		tb.Fatalf("dialling %s: %v", s.HTTPAddr(), err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// ExpectClosedWithoutAnswer waits (up to within) for the server to close
// the connection, and checks it sent nothing more first.
func ExpectClosedWithoutAnswer(tb testing.TB, what string, conn net.Conn, within time.Duration) {
	tb.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(within))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	switch {
	case n > 0:
		tb.Errorf("%s: got %q, want the connection closed", what, buf[:n])
	case IsTimeout(err):
		tb.Errorf("%s: still open after %v", what, within)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
	default:
		tb.Errorf("%s: unexpected read error %v", what, err)
	}
}

// IsTimeout reports whether err is a deadline passing.
func IsTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

// IsConnGone reports whether err means the peer closed the connection.
func IsConnGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed)
}
