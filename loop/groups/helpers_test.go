package groups_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/inproc"
	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/groups"
)

const (
	testPrefix   = "SOCKETFORWARDER-NEW:"
	eventTimeout = 5 * time.Second
)

// groupServer is a test server with both group listeners on loopback.
func groupServer(t *testing.T, tweak func(*groups.Config)) *inproc.Server {
	t.Helper()
	return groupServerWith(t, nil, tweak)
}

// groupServerWith also adjusts the core's configuration.
func groupServerWith(t *testing.T, core func(*loop.Config), tweak func(*groups.Config)) *inproc.Server {
	t.Helper()
	return inproc.Start(t, inproc.Options{Core: core, Groups: func(c *groups.Config) {
		c.TCPAddr = "127.0.0.1:0"
		c.UDPAddr = "127.0.0.1:0"
		c.JoinTimeout = time.Second // the loop ticks, and publishes counters, every 250ms
		if tweak != nil {
			tweak(c)
		}
	}})
}

// udpGroupID is the id of the server's UDP group: its port.
func udpGroupID(s *inproc.Server) string {
	return strconv.Itoa(s.Groups.UDPAddr().(*net.UDPAddr).Port)
}

// dialGroup connects to the TCP group listener from fromIP (127.0.0.x).
func dialGroup(t *testing.T, s *inproc.Server, fromIP string) *net.TCPConn {
	t.Helper()
	return dialGroupWith(t, s, net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(fromIP)}})
}

func dialGroupWith(t *testing.T, s *inproc.Server, d net.Dialer) *net.TCPConn {
	t.Helper()
	d.Timeout = eventTimeout
	conn, err := d.Dial("tcp", s.Groups.TCPAddr().String())
	if err != nil {
		t.Fatalf("dial group listener: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn.(*net.TCPConn)
}

// joinMember connects from 127.0.0.1 and sends a join line.
func joinMember(t *testing.T, s *inproc.Server, group string) *net.TCPConn {
	t.Helper()
	conn := dialGroup(t, s, "127.0.0.1")
	send(t, conn, testPrefix+group+"\n")
	return conn
}

func send(t *testing.T, conn net.Conn, data string) {
	t.Helper()
	_ = conn.SetWriteDeadline(time.Now().Add(eventTimeout))
	if _, err := conn.Write([]byte(data)); err != nil {
		t.Fatalf("%v: write: %v", conn.LocalAddr(), err)
	}
}

// expectRead reads exactly len(want) bytes and compares them.
func expectRead(t *testing.T, conn net.Conn, want string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(eventTimeout))
	got := make([]byte, len(want))
	if n, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("%v: read %d of %d bytes (%q): %v", conn.LocalAddr(), n, len(want), got[:n], err)
	}
	if string(got) != want {
		t.Fatalf("%v: got %q, want %q", conn.LocalAddr(), got, want)
	}
}

// expectClosed checks the server closed the connection without sending anything.
func expectClosed(t *testing.T, conn net.Conn) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(eventTimeout))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	switch {
	case n > 0:
		t.Fatalf("%v: got %q, want the connection closed", conn.LocalAddr(), buf[:n])
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
	default:
		t.Fatalf("%v: want the connection closed, got %v", conn.LocalAddr(), err)
	}
}

// groupCounts is one group in the groups document.
type groupCounts struct {
	Members        int    `json:"members"`
	Upstreams      int    `json:"upstreams"`
	BytesForwarded uint64 `json:"bytes_forwarded"`
}

type groupsDoc struct {
	TCP map[string]groupCounts `json:"tcp"`
	UDP map[string]groupCounts `json:"udp"`
}

// groupsBody fetches GET <base>/groups with the token.
func groupsBody(t *testing.T, s *inproc.Server, base string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.Addr().String()+base+"/groups", nil)
	req.Header.Set("Authorization", "Bearer "+inproc.Secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("groups: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return string(b)
}

func groupsOf(t *testing.T, s *inproc.Server) groupsDoc {
	t.Helper()
	var doc groupsDoc
	body := groupsBody(t, s, "/api/dispatch/v1")
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("groups document %s: %v", body, err)
	}
	return doc
}

// statsOf fetches the dispatch stats document.
func statsOf(t *testing.T, s *inproc.Server) string {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr().String() + "/api/dispatch/v1?bearer_token=" + inproc.Secret)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

// waitMembers waits until a group has exactly n members.
func waitMembers(t *testing.T, s *inproc.Server, proto, group string, n int) {
	t.Helper()
	eventually(t, eventTimeout, fmt.Sprintf("%s group %q with %d members", proto, group, n), func() bool {
		doc := groupsOf(t, s)
		m := doc.TCP
		if proto == "udp" {
			m = doc.UDP
		}
		return m[group].Members == n
	})
}

// udpMemberPeer is a UDP socket on loopback, registered with the UDP group
// once register is called.
func udpMemberPeer(t *testing.T) *net.UDPConn {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func portOf(conn *net.UDPConn) int { return conn.LocalAddr().(*net.UDPAddr).Port }

func sendTo(t *testing.T, conn *net.UDPConn, s *inproc.Server, data string) {
	t.Helper()
	if _, err := conn.WriteToUDP([]byte(data), s.Groups.UDPAddr().(*net.UDPAddr)); err != nil {
		t.Fatal(err)
	}
}

// register sends the join datagram for the peer's own port.
func register(t *testing.T, s *inproc.Server, peer *net.UDPConn) {
	t.Helper()
	sendTo(t, peer, s, testPrefix+strconv.Itoa(portOf(peer)))
}

// expectDatagramFrom reads one datagram, which must be want and come from the group port.
func expectDatagramFrom(t *testing.T, peer *net.UDPConn, s *inproc.Server, want string) {
	t.Helper()
	_ = peer.SetReadDeadline(time.Now().Add(eventTimeout))
	buf := make([]byte, 70000)
	n, from, err := peer.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("peer %v waiting for %q: %v", peer.LocalAddr(), want, err)
	}
	if string(buf[:n]) != want {
		t.Fatalf("peer %v got %q, want %q", peer.LocalAddr(), buf[:n], want)
	}
	if from.Port != s.Groups.UDPAddr().(*net.UDPAddr).Port {
		t.Fatalf("datagram came from %v, want the group port", from)
	}
}

// testDriver is a driver attached to a socket group.
type testDriver struct {
	t    *testing.T
	conn net.Conn
}

// dialGroupDriver attaches a driver: path is everything after the base path.
func dialGroupDriver(t *testing.T, s *inproc.Server, path string) *testDriver {
	t.Helper()
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + inproc.Secret}}), Timeout: eventTimeout}
	conn, br, _, err := d.Dial(context.Background(), "ws://"+s.Addr().String()+path)
	if err != nil {
		t.Fatalf("dial group driver %s: %v", path, err)
	}
	t.Cleanup(func() { conn.Close() })
	if br != nil {
		// Members are announced right behind the 101: the dialer may have read them already.
		conn = bufferedConn{conn, br}
	}
	return &testDriver{t: t, conn: conn}
}

// bufferedConn reads what the handshake reader buffered before the socket.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// next returns the next protocol message, skipping non-binary frames.
func (d *testDriver) next() codec.Message {
	d.t.Helper()
	_ = d.conn.SetReadDeadline(time.Now().Add(eventTimeout))
	for {
		b, op, err := wsutil.ReadServerData(d.conn)
		if err != nil {
			d.t.Fatalf("driver read: %v", err)
		}
		if op != ws.OpBinary {
			continue
		}
		m, err := codec.ParseMessage(b)
		if err != nil {
			d.t.Fatalf("bad message % x: %v", b, err)
		}
		return m
	}
}

func (d *testDriver) send(t codec.MsgType, ip string, id uint64, data []byte) {
	d.t.Helper()
	if err := wsutil.WriteClientBinary(d.conn, codec.AppendMessage(nil, t, []byte(ip), id, data)); err != nil {
		d.t.Fatal(err)
	}
}

// expectMsg reads the next driver message and compares every field.
func expectMsg(t *testing.T, d *testDriver, typ codec.MsgType, ip string, id uint64, data string) {
	t.Helper()
	m := d.next()
	if m.Type != typ || string(m.IP) != ip || m.ID != id || string(m.Data) != data {
		t.Fatalf("driver got %v ip=%q id=%d data=%q, want %v ip=%q id=%d data=%q",
			m.Type, m.IP, m.ID, m.Data, typ, ip, id, data)
	}
}

// upgradeAnswer sends a WebSocket upgrade request by hand and returns the
// status and body of the answer.
func upgradeAnswer(t *testing.T, s *inproc.Server, target string, token bool) (int, string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr().String(), eventTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(eventTimeout))
	var head strings.Builder
	fmt.Fprintf(&head, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", target)
	if token {
		head.WriteString("Authorization: Bearer " + inproc.Secret + "\r\n")
	}
	head.WriteString("\r\n")
	if _, err := io.WriteString(conn, head.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(bytes.TrimSpace(body))
}
