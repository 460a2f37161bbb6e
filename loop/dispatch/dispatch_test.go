package dispatch_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/inproc"
)

const eventTimeout = 5 * time.Second

// freePort returns a port with nothing bound to it, picked below the
// kernel's ephemeral range so that no outgoing connection takes it before
// the server binds it.
func freePort(t *testing.T, network string) int {
	t.Helper()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		addr := fmt.Sprintf(":%d", port)
		if network == "udp" {
			if c, err := net.ListenPacket("udp", addr); err == nil {
				c.Close()
				return port
			}
			continue
		}
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatalf("no free %s port", network)
	return 0
}

// testDriver is a driver attached to a dispatch port.
type testDriver struct {
	t    *testing.T
	conn net.Conn
}

// dialDriver attaches a driver to a device port: kind is "tcp" or "udp".
func dialDriver(t *testing.T, s *inproc.Server, kind string, port int, accept string) *testDriver {
	t.Helper()
	url := fmt.Sprintf("ws://%s/api/dispatch/v1/%s_dispatch?port=%d&accept=%s", s.Addr(), kind, port, accept)
	d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + inproc.Secret}}), Timeout: eventTimeout}
	conn, _, _, err := d.Dial(context.Background(), url)
	if err != nil {
		t.Fatalf("dial driver: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &testDriver{t: t, conn: conn}
}

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

func TestTCPRoundTripExactBytes(t *testing.T) {
	s := inproc.Start(t, inproc.Options{})
	port := freePort(t, "tcp")
	drv := dialDriver(t, s, "tcp", port, "127.0.0.1")
	dev, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	_ = drv.conn.SetReadDeadline(time.Now().Add(eventTimeout))
	raw, _, err := wsutil.ReadServerData(drv.conn)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(raw), "00"+"3132372e302e302e31"+"00"+"0000000000000000"+"00000000"; got != want {
		t.Fatalf("OPENED = %s, want %s", got, want)
	}
	if _, err := dev.Write([]byte("testing")); err != nil {
		t.Fatal(err)
	}
	raw, _, err = wsutil.ReadServerData(drv.conn)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(raw), "02"+"3132372e302e302e31"+"00"+"0000000000000000"+"00000007"+"74657374696e67"; got != want {
		t.Fatalf("RECEIVED = %s, want %s", got, want)
	}
	drv.send(codec.Write, "127.0.0.1", 0, []byte("reply"))
	buf := make([]byte, 5)
	_ = dev.SetReadDeadline(time.Now().Add(eventTimeout))
	if _, err := io.ReadFull(dev, buf); err != nil || string(buf) != "reply" {
		t.Fatalf("device got %q, %v", buf, err)
	}
	drv.send(codec.Close, "127.0.0.1", 0, nil)
	if m := drv.next(); m.Type != codec.Closed || m.ID != 0 {
		t.Fatalf("want CLOSED id 0, got %v id %d", m.Type, m.ID)
	}
	if _, err := dev.Read(buf); err == nil {
		t.Fatal("device still open after CLOSE")
	}
}

func TestUDPRoundTrip(t *testing.T) {
	s := inproc.Start(t, inproc.Options{})
	port := freePort(t, "udp")
	drv := dialDriver(t, s, "udp", port, "127.0.0.1")
	peer, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	if _, err := peer.WriteTo(nil, dst); err != nil { // zero-length: ignored
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 32<<10)
	if _, err := peer.WriteTo(big, dst); err != nil {
		t.Fatal(err)
	}
	m := drv.next()
	if m.Type != codec.Received || int(m.ID) != peer.LocalAddr().(*net.UDPAddr).Port || !bytes.Equal(m.Data, big) {
		t.Fatalf("unexpected %v id %d len %d", m.Type, m.ID, len(m.Data))
	}
	drv.send(codec.Write, "127.0.0.1", m.ID, []byte("pong"))
	buf := make([]byte, 100)
	_ = peer.SetReadDeadline(time.Now().Add(eventTimeout))
	n, from, err := peer.ReadFromUDP(buf)
	if err != nil || string(buf[:n]) != "pong" || from.Port != port {
		t.Fatalf("peer got %q from %v: %v", buf[:n], from, err)
	}
}

func TestMalformedMessageClosesWith1007(t *testing.T) {
	s := inproc.Start(t, inproc.Options{})
	port := freePort(t, "tcp")
	drv := dialDriver(t, s, "tcp", port, "127.0.0.1")
	if err := wsutil.WriteClientBinary(drv.conn, []byte{3, '1', '2'}); err != nil {
		t.Fatal(err)
	}
	_ = drv.conn.SetReadDeadline(time.Now().Add(eventTimeout))
	_, _, err := wsutil.ReadServerData(drv.conn)
	var closed wsutil.ClosedError
	if !errors.As(err, &closed) || closed.Code != ws.StatusInvalidFramePayloadData {
		t.Fatalf("want close 1007, got %v", err)
	}
	eventually(t, eventTimeout, "port closed with its last driver", func() bool {
		return strings.Contains(statsOf(t, s), `"tcp_listeners":{}`)
	})
}

// Large reads skip the arena and are written at once; small ones are
// batched. Interleaved, every driver must still see the device's exact byte
// stream in order.
func TestLargeAndSmallReadsKeepTheirOrder(t *testing.T) {
	s := inproc.Start(t, inproc.Options{})
	port := freePort(t, "tcp")
	drivers := []*testDriver{dialDriver(t, s, "tcp", port, "127.0.0.1"), dialDriver(t, s, "tcp", port, "127.0.0.0/8")}
	dev, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	for _, d := range drivers {
		if m := d.next(); m.Type != codec.Opened {
			t.Fatalf("want OPENED, got %v", m.Type)
		}
	}
	var sent []byte
	for i := range 40 {
		size := 10
		if i%3 == 0 {
			size = 48 << 10
		}
		chunk := bytes.Repeat([]byte{byte('a' + i%26)}, size)
		sent = append(sent, chunk...)
		if _, err := dev.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	for i, d := range drivers {
		var got []byte
		for len(got) < len(sent) {
			m := d.next()
			if m.Type != codec.Received {
				t.Fatalf("driver %d: want RECEIVED, got %v", i, m.Type)
			}
			got = append(got, m.Data...)
		}
		if !bytes.Equal(got, sent) {
			t.Fatalf("driver %d: stream differs (got %d bytes, sent %d)", i, len(got), len(sent))
		}
	}
}
