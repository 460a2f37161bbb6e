package loop

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// pingPath is the test server's only route: it answers 200 with no body.
const pingPath = "/ping"

// testServer starts a core with no kinds on loopback: its only route is
// pingPath.
func testServer(t *testing.T, tweak func(*Config)) *Server {
	t.Helper()
	return testServerWithKind(t, tweak, func(s *Server) {
		s.Handle(pingPath, func(r *Request) { r.Respond(http.StatusOK, "", nil) })
	}, nil)
}

// dialIdle opens a connection that never sends a request head.
func dialIdle(t *testing.T, s *Server) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.Addr().String(), testkit.EventTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// expectRefused checks the server closed the connection without answering.
func expectRefused(t *testing.T, c net.Conn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(testkit.EventTimeout))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection over the cap: read %d bytes, %v; want EOF", n, err)
	}
}

// Connections still sending their request head are capped: one more is
// closed at once, and once a slot frees up requests are served again.
func TestPendingHandshakesAreCapped(t *testing.T) {
	s := testServer(t, func(c *Config) { c.MaxHandshakes = 2 })
	idle := []net.Conn{dialIdle(t, s), dialIdle(t, s)}
	// The accept goroutine hands connections to the loop one at a time, in
	// order, so this one arrives with both slots taken.
	expectRefused(t, dialIdle(t, s))
	idle[0].Close()
	testkit.Eventually(t, testkit.EventTimeout, "requests served again", func() bool {
		resp, err := http.Get("http://" + s.Addr().String() + pingPath)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	testkit.Eventually(t, testkit.EventTimeout, "refusal published", func() bool { return s.Snapshot().HandshakesRefused >= 1 })
}

// The published snapshot counts every connection refused for the cap, and
// the connections still pending.
func TestSnapshotCountsRefusedHandshakes(t *testing.T) {
	s := testServer(t, func(c *Config) { c.MaxHandshakes = 1 })
	dialIdle(t, s)
	const refused = 3
	for range refused {
		expectRefused(t, dialIdle(t, s))
	}
	testkit.Eventually(t, testkit.EventTimeout, "refusals published", func() bool {
		snap := s.Snapshot()
		return snap.HandshakesRefused == refused && snap.Handshakes == 1
	})
}

func TestUnknownPathIsNotFound(t *testing.T) {
	s := testServer(t, nil)
	resp, err := http.Get("http://" + s.Addr().String() + "/nowhere")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/json" ||
		string(body) != `{"error":"not found"}` {
		t.Fatalf("got %d %q %s, want 404 application/json {\"error\":\"not found\"}",
			resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}
