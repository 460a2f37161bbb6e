package loop

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/stats"
)

// echoRole sends every message back to its sender, as the same opcode.
type echoRole struct{ h *Hub }

func (r echoRole) Message(c *WSConn, text bool, payload []byte) {
	r.h.Send(&Member{Conn: &c.Endpoint}, text, payload)
}
func (echoRole) Ended(*WSConn, EndReason) {}

// A listener of a kind's own: WebSocket upgrades to its routes are served
// on the loop, everything else by net/http off the loop, even a request
// head that arrives in pieces.
func TestListenerSortsUpgradesFromOtherRequests(t *testing.T) {
	cfg := DefaultConfig()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := s.NewListener("extra", "127.0.0.1:0")
	var class *Class
	l.HandlePrefix("/api/room/", func(r *Request) {
		answer, ok := r.Accept()
		if !ok {
			return
		}
		r.Upgrade(answer, echoRole{s.h}, WSOptions{Class: class, Output: Output{Format: WSMessage, Limit: 1 << 20}, MaxMessage: 1 << 20})
	})
	l.ServeOther(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "off the loop: "+r.URL.Path)
	}))
	s.Register(testKind{start: func(h *Hub) { class = h.NewClass("test", "echo") }})
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	base := l.Addr().String()

	for _, path := range []string{"/api/room/lobby/info", "/anything"} {
		resp, err := http.Get("http://" + base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "off the loop: "+path {
			t.Fatalf("GET %s: %q", path, body)
		}
	}

	conn, _, _, err := ws.Dialer{Timeout: testkit.EventTimeout}.Dial(context.Background(), "ws://"+base+"/api/room/lobby")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := wsutil.WriteClientText(conn, []byte(`{"hello":1}`)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(testkit.EventTimeout))
	msg, op, err := wsutil.ReadServerData(conn)
	if err != nil || op != ws.OpText || string(msg) != `{"hello":1}` {
		t.Fatalf("echo: %q %v %v", msg, op, err)
	}

	// A head sent in two pieces is still sorted to net/http.
	raw, err := net.Dial("tcp", base)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_, _ = io.WriteString(raw, "GET /split HTTP/1.1\r\nHo")
	time.Sleep(20 * time.Millisecond) // let the first piece be looked at alone
	_, _ = io.WriteString(raw, "st: x\r\nConnection: close\r\n\r\n")
	_ = raw.SetReadDeadline(time.Now().Add(testkit.EventTimeout))
	answer, _ := io.ReadAll(raw)
	if !strings.Contains(string(answer), "off the loop: /split") {
		t.Fatalf("split head: %q", answer)
	}
}

// testKind lets a test run code on the loop at start.
type testKind struct{ start func(*Hub) }

func (testKind) Name() string                                      { return "test" }
func (k testKind) Start(h *Hub) error                              { k.start(h); return nil }
func (testKind) Tick(*Hub)                                         {}
func (testKind) Shutdown(*Hub)                                     {}
func (testKind) Collect(_ *Hub, dst []stats.Sample) []stats.Sample { return dst }
