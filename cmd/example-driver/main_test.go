package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
)

const waitFor = 5 * time.Second

type closeFrame struct {
	op   ws.OpCode
	code ws.StatusCode
}

// lineWriter hands every complete line written to it to a channel.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
}

func newLineWriter() *lineWriter { return &lineWriter{lines: make(chan string, 256)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.lines <- string(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}

// next waits for the next line that contains substr, skipping others.
func (w *lineWriter) next(t *testing.T, substr string) string {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case l := <-w.lines:
			if strings.Contains(l, substr) {
				return l
			}
		case <-deadline:
			t.Fatalf("no line containing %q within %v", substr, waitFor)
		}
	}
}

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting for %s", what)
	}
	panic("unreachable")
}

// fakeServer is a dispatch server stand-in: it checks the upgrade request,
// then hands the connection to script.
func fakeServer(t *testing.T, wantPath string, script func(conn net.Conn, rw io.ReadWriter)) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"invalid authorisation token"}`)
			return
		}
		if r.URL.Path != wantPath {
			http.NotFound(w, r)
			return
		}
		conn, brw, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			t.Errorf("upgrade: %v", err)
			return
		}
		defer conn.Close()
		script(conn, struct {
			io.Reader
			io.Writer
		}{brw.Reader, conn})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func send(t *testing.T, w io.Writer, typ codec.MsgType, ip string, id uint64, data string) {
	t.Helper()
	msg := codec.AppendMessage(nil, typ, []byte(ip), id, []byte(data))
	if err := wsutil.WriteServerBinary(w, msg); err != nil {
		t.Errorf("send %s: %v", typ, err)
	}
}

// startDriver runs the driver until the test ends and checks it then stops.
func startDriver(t *testing.T, cfg config) (out, log *lineWriter, cancel func()) {
	t.Helper()
	out, log = newLineWriter(), newLineWriter()
	ctx, cancelCtx := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx, cfg, out, log)
	}()
	cancel = func() {
		cancelCtx()
		receive(t, done, "the driver to stop after cancel")
	}
	t.Cleanup(cancel)
	return out, log, cancel
}

func testConfig(server string) config {
	return config{
		server:  server,
		secret:  "s3cret",
		proto:   "tcp",
		port:    6001,
		accept:  "127.0.0.1",
		minWait: time.Millisecond,
		maxWait: 10 * time.Millisecond,
	}
}

func TestTCPEcho(t *testing.T) {
	writes := make(chan []byte, 1)
	closes := make(chan closeFrame, 1)
	srv := fakeServer(t, "/api/dispatch/v1/tcp_dispatch", func(conn net.Conn, rw io.ReadWriter) {
		send(t, conn, codec.Opened, "127.0.0.1", 0, "")
		send(t, conn, codec.Received, "127.0.0.1", 0, "testing")
		p, err := wsutil.ReadClientBinary(rw)
		if err != nil {
			t.Errorf("read WRITE: %v", err)
			return
		}
		writes <- p
		send(t, conn, codec.Closed, "127.0.0.1", 0, "")
		f, err := ws.ReadFrame(rw) // the driver's goodbye
		if err != nil {
			t.Errorf("read close: %v", err)
			return
		}
		f = ws.UnmaskFrameInPlace(f)
		code, _ := ws.ParseCloseFrameData(f.Payload)
		closes <- closeFrame{op: f.Header.OpCode, code: code}
	})
	cfg := testConfig(srv.URL)
	cfg.echo = true
	out, _, cancel := startDriver(t, cfg)

	if got := out.next(t, ""); got != "OPENED 127.0.0.1 id=0" {
		t.Errorf("first line = %q", got)
	}
	if got := out.next(t, ""); got != `RECEIVED 127.0.0.1 id=0 7 bytes "testing"` {
		t.Errorf("second line = %q", got)
	}
	// The example from the wire contract, with type 03 (WRITE).
	want, _ := hex.DecodeString("03" + "3132372e302e302e31" + "00" + "0000000000000000" + "00000007" + "74657374696e67")
	if got := receive(t, writes, "the echoed WRITE"); !bytes.Equal(got, want) {
		t.Errorf("WRITE = % x\nwant    % x", got, want)
	}
	if got := out.next(t, ""); got != "CLOSED 127.0.0.1 id=0" {
		t.Errorf("third line = %q", got)
	}

	cancel() // Ctrl-C: the driver sends a normal close frame and run returns
	if got := receive(t, closes, "the close frame"); got != (closeFrame{op: ws.OpClose, code: ws.StatusNormalClosure}) {
		t.Errorf("after cancel the server read %+v, want a close frame with 1000", got)
	}
}

func TestUDPNoEcho(t *testing.T) {
	next := make(chan ws.OpCode, 1)
	srv := fakeServer(t, "/api/dispatch/v1/udp_dispatch", func(conn net.Conn, rw io.ReadWriter) {
		send(t, conn, codec.Received, "10.0.0.5", 53012, "abc")
		// The driver answers in order, so if it sent a WRITE for the
		// datagram it would arrive before the pong.
		if err := ws.WriteFrame(conn, ws.NewPingFrame([]byte("p"))); err != nil {
			t.Errorf("ping: %v", err)
			return
		}
		h, err := ws.ReadHeader(rw)
		if err != nil {
			t.Errorf("read: %v", err)
			return
		}
		next <- h.OpCode
		io.Copy(io.Discard, rw)
	})
	cfg := testConfig(srv.URL)
	cfg.proto = "udp"
	out, _, _ := startDriver(t, cfg)

	if got := out.next(t, ""); got != `RECEIVED 10.0.0.5 port=53012 3 bytes "abc"` {
		t.Errorf("line = %q", got)
	}
	if op := receive(t, next, "the pong"); op != ws.OpPong {
		t.Errorf("without -echo the driver sent opcode %v before the pong", op)
	}
}

func TestReconnectAfterRefusal(t *testing.T) {
	var attempts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if attempts.Add(1) == 1 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusConflict)
			io.WriteString(w, `{"error":"listen tcp :6001: bind: address already in use"}`)
			return
		}
		conn, _, _, err := ws.UpgradeHTTP(r, w)
		if err != nil {
			return
		}
		defer conn.Close()
		send(t, conn, codec.Opened, "127.0.0.1", 3, "")
		io.Copy(io.Discard, conn)
	}))
	t.Cleanup(srv.Close)
	out, log, _ := startDriver(t, testConfig(srv.URL))

	l := log.next(t, "disconnected")
	if !strings.Contains(l, "409") || !strings.Contains(l, "address already in use") {
		t.Errorf("the refusal is not explained: %q", l)
	}
	log.next(t, "connected to ws://")
	if got := out.next(t, ""); got != "OPENED 127.0.0.1 id=3" {
		t.Errorf("line = %q", got)
	}
}

func TestWrongSecret(t *testing.T) {
	srv := fakeServer(t, "/api/dispatch/v1/tcp_dispatch", func(net.Conn, io.ReadWriter) {})
	cfg := testConfig(srv.URL)
	cfg.secret = "wrong"
	_, log, _ := startDriver(t, cfg)
	if l := log.next(t, "disconnected"); !strings.Contains(l, "invalid authorisation token") {
		t.Errorf("log = %q", l)
	}
}

func TestHandleRejectsMalformed(t *testing.T) {
	cases := []struct {
		name string
		msg  []byte
	}{
		{"empty", nil},
		{"no NUL after the ip", []byte("\x02127.0.0.1")},
		{"data_size past the end", codec.AppendHeader(nil, codec.Received, []byte("127.0.0.1"), 0, 5)},
		{"WRITE from the server", codec.AppendMessage(nil, codec.Write, []byte("127.0.0.1"), 0, nil)},
	}
	for _, c := range cases {
		if _, err := handle(io.Discard, testConfig(""), c.msg); err == nil {
			t.Errorf("%s: no error", c.name)
		}
	}
}

func TestConfig(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }

	cfg, err := parseConfig(nil, getenv)
	if err != nil || cfg.secret != "testing" || cfg.proto != "tcp" || cfg.port != 6001 {
		t.Errorf("defaults: %+v, %v", cfg, err)
	}
	env["PLACE_SERVER_SECRET"] = "from-env"
	if cfg, _ := parseConfig(nil, getenv); cfg.secret != "from-env" {
		t.Errorf("secret = %q, want the env value", cfg.secret)
	}
	if cfg, _ := parseConfig([]string{"-secret", "flag"}, getenv); cfg.secret != "flag" {
		t.Errorf("secret = %q, want the flag value", cfg.secret)
	}
	if _, err := parseConfig([]string{"-proto", "sctp"}, getenv); err == nil {
		t.Error("-proto sctp accepted")
	}

	cfg.server, cfg.proto, cfg.port, cfg.accept = "https://dispatch.example/base/", "udp", 162, "10.0.0.1,10.0.1.0/24"
	got, err := dispatchURL(cfg)
	want := "wss://dispatch.example/base/api/dispatch/v1/udp_dispatch?accept=10.0.0.1%2C10.0.1.0%2F24&port=162"
	if err != nil || got != want {
		t.Errorf("dispatchURL = %q, %v\nwant %q", got, err, want)
	}
}
