package main

// Shared helpers of the end-to-end suite: the suite builds the real binary
// once, starts one server process per test and talks to it as drivers
// (WebSocket clients) and devices (plain TCP and UDP peers) do.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
)

const (
	basePath       = "/api/dispatch/v1"
	legacyBasePath = "/api/server"

	localhost = "127.0.0.1"

	// eventTimeout bounds the wait for anything the server should do promptly.
	eventTimeout = 10 * time.Second
	// startTimeout bounds the wait for the ready line.
	startTimeout = 10 * time.Second
	// shutdownTimeout is how long a SIGTERM may take (docs/interface.md).
	shutdownTimeout = 5 * time.Second

	emptyStats       = `{"udp_listeners":{},"tcp_listeners":{},"tcp_clients":{}}`
	invalidTokenBody = `{"error":"invalid authorisation token"}`
)

// dispatchBinary is the server binary built by TestMain.
var dispatchBinary string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dispatch-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	dispatchBinary = filepath.Join(dir, "dispatch")
	build := exec.Command("go", "build", "-o", dispatchBinary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the server:", err)
		return 1
	}
	return m.Run()
}

// ---------------------------------------------------------------------------
// The server process

type server struct {
	secret string // the token drivers must present
	addr   string // HTTP/WebSocket host:port, from the ready line
	cmd    *exec.Cmd
	logs   *logBuffer
	exited chan struct{} // closed once the process has been waited for
}

// startServer starts the binary with a fresh random secret and debug logging.
func startServer(t *testing.T) *server {
	t.Helper()
	secret := "e2e-secret-" + randomHex(t, 16)
	return launchServer(t, secret, "PLACE_SERVER_SECRET="+secret, "LOG_LEVEL=debug")
}

// launchServer starts the binary with exactly env (plus an empty
// SECRETS_PATH unless env sets one) and waits for its ready line. secret is
// the token the helpers will present.
func launchServer(t *testing.T, secret string, env ...string) *server {
	t.Helper()
	return launchWrapped(t, secret, nil, env...)
}

// launchWrapped is launchServer with the binary run through a wrapper
// command (prlimit ... --, which execs it, so the process id is the
// server's); nil for none.
func launchWrapped(t *testing.T, secret string, wrapper []string, env ...string) *server {
	t.Helper()
	if !hasEnv(env, "SECRETS_PATH") {
		env = append(env, "SECRETS_PATH="+t.TempDir())
	}
	s := &server{
		secret: secret,
		logs:   &logBuffer{ready: make(chan string, 1)},
		exited: make(chan struct{}),
	}
	argv := append(append([]string{}, wrapper...), dispatchBinary, "-p", "0")
	s.cmd = exec.Command(argv[0], argv[1:]...)
	s.cmd.Env = env
	s.cmd.Stdout = s.logs
	s.cmd.Stderr = s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting the server: %v", err)
	}
	go func() {
		_ = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("server output:\n%s", s.logs.tail(16<<10))
		}
	})
	select {
	case s.addr = <-s.logs.ready:
	case <-s.exited:
		t.Fatalf("server exited before listening:\n%s", s.logs.String())
	case <-time.After(startTimeout):
		t.Fatalf("no msg=listening line within %v:\n%s", startTimeout, s.logs.String())
	}
	return s
}

// stop sends SIGTERM and waits; a server that does not exit in time is killed.
func (s *server) stop() {
	if s.hasExited() {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(2 * shutdownTimeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *server) hasExited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

func hasEnv(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// logBuffer collects the process output and reports the address of the
// first msg=listening line on ready.
type logBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	scanned int // bytes of buf already searched for the ready line
	found   bool
	ready   chan string
}

var (
	// The ready line, in the text or the JSON log format.
	listeningMsg = regexp.MustCompile(`(^|\s)msg="?listening"?(\s|$)|"msg":"listening"`)
	listeningAt  = regexp.MustCompile(`(?:^|\s)addr="?([^\s"]+)|"addr":"([^"]+)"`)
)

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	for !l.found {
		rest := l.buf.Bytes()[l.scanned:]
		eol := bytes.IndexByte(rest, '\n')
		if eol < 0 {
			break
		}
		line := rest[:eol]
		l.scanned += eol + 1
		if listeningMsg.Match(line) {
			if m := listeningAt.FindSubmatch(line); m != nil {
				l.found = true
				l.ready <- string(m[1]) + string(m[2])
			}
		}
	}
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) tail(n int) string {
	s := l.String()
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// ---------------------------------------------------------------------------
// Plain HTTP

type response struct {
	status      int
	contentType string
	body        string
}

func (s *server) bearerHeader() string { return "Authorization: Bearer " + s.secret }

// get sends a plain GET with the given extra header lines, verbatim.
func (s *server) get(t *testing.T, target string, headerLines ...string) response {
	t.Helper()
	return s.roundTrip(t, target, append(headerLines, "Connection: close"))
}

// getUpgrade sends a WebSocket upgrade request with the given extra header lines.
func (s *server) getUpgrade(t *testing.T, target string, headerLines ...string) response {
	t.Helper()
	return s.roundTrip(t, target, append(headerLines,
		"Connection: Upgrade",
		"Upgrade: websocket",
		"Sec-WebSocket-Version: 13",
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="))
}

// roundTrip writes a request head by hand, so the tests control every byte
// (empty headers, trailing spaces), and reads one response.
func (s *server) roundTrip(t *testing.T, target string, headerLines []string) response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.addr, eventTimeout)
	if err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(eventTimeout))
	var head strings.Builder
	fmt.Fprintf(&head, "GET %s HTTP/1.1\r\nHost: %s\r\n", target, s.addr)
	for _, line := range headerLines {
		head.WriteString(line + "\r\n")
	}
	head.WriteString("\r\n")
	if _, err := io.WriteString(conn, head.String()); err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET %s: reading the response: %v", target, err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", target, err)
	}
	return response{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), body: string(body)}
}

// expectResponse checks status, body and, when contentType is not empty, the
// media type of the answer.
func expectResponse(t *testing.T, what string, got response, status int, contentType, body string) {
	t.Helper()
	if got.status != status {
		t.Errorf("%s: status %d, want %d (body %q)", what, got.status, status, got.body)
		return
	}
	if contentType != "" && !strings.HasPrefix(got.contentType, contentType) {
		t.Errorf("%s: Content-Type %q, want %s", what, got.contentType, contentType)
	}
	if got.body != body {
		t.Errorf("%s: body %q, want %q", what, got.body, body)
	}
}

// statsBody fetches the stats JSON with header auth.
func (s *server) statsBody(t *testing.T) string {
	t.Helper()
	return s.statsBodyAt(t, basePath)
}

func (s *server) statsBodyAt(t *testing.T, path string) string {
	t.Helper()
	r := s.get(t, path, s.bearerHeader())
	if r.status != http.StatusOK {
		t.Fatalf("stats at %s: status %d, body %q", path, r.status, r.body)
	}
	if !strings.HasPrefix(r.contentType, "application/json") {
		t.Fatalf("stats at %s: Content-Type %q, want application/json", path, r.contentType)
	}
	return r.body
}

// waitForStats polls the stats endpoint until it answers exactly want.
func (s *server) waitForStats(t *testing.T, want string) {
	t.Helper()
	s.waitForStatsAt(t, basePath, want)
}

func (s *server) waitForStatsAt(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		got := s.statsBodyAt(t, path)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never became\n  %s\nlast answer:\n  %s", want, got)
		}
		<-tick.C
	}
}

// tcpStats is the exact stats body for one open TCP port and nothing else.
func tcpStats(port, listeners, clients int) string {
	return fmt.Sprintf(`{"udp_listeners":{},"tcp_listeners":{"%d":%d},"tcp_clients":{"%d":%d}}`, port, listeners, port, clients)
}

// udpStats is the exact stats body for one open UDP port and nothing else.
func udpStats(port, listeners int) string {
	return fmt.Sprintf(`{"udp_listeners":{"%d":%d},"tcp_listeners":{},"tcp_clients":{}}`, port, listeners)
}

// ---------------------------------------------------------------------------
// Drivers: WebSocket clients

type driver struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func dispatchTarget(base, kind string, port int, accept string) string {
	return fmt.Sprintf("%s/%s_dispatch?port=%d&accept=%s", base, kind, port, accept)
}

// driverHeader is what PlaceOS drivers send.
func (s *server) driverHeader() http.Header {
	return http.Header{"Authorization": {"Bearer " + s.secret}, "X-Module-Id": {"mod-e2e"}}
}

// dialDriver opens a WebSocket to target; a refused upgrade is a ws.StatusError.
func (s *server) dialDriver(t *testing.T, target string, header http.Header) (*driver, error) {
	t.Helper()
	dialer := ws.Dialer{Timeout: eventTimeout, Header: ws.HandshakeHeaderHTTP(header)}
	conn, br, _, err := dialer.Dial(context.Background(), "ws://"+s.addr+target)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	if br == nil {
		br = bufio.NewReader(conn)
	}
	return &driver{t: t, conn: conn, r: br}, nil
}

func (s *server) mustDialDriver(t *testing.T, target string) *driver {
	t.Helper()
	d, err := s.dialDriver(t, target, s.driverHeader())
	if err != nil {
		t.Fatalf("dialling driver %s: %v", target, err)
	}
	return d
}

func (s *server) tcpDriver(t *testing.T, port int, accept string) *driver {
	t.Helper()
	return s.mustDialDriver(t, dispatchTarget(basePath, "tcp", port, accept))
}

func (s *server) udpDriver(t *testing.T, port int, accept string) *driver {
	t.Helper()
	return s.mustDialDriver(t, dispatchTarget(basePath, "udp", port, accept))
}

// openPort registers a driver on a free port of kind "tcp" or "udp".
func (s *server) openPort(t *testing.T, kind, accept string) (*driver, int) {
	t.Helper()
	var d *driver
	port := onFreePort(t, func(t *testing.T) int { return freePort(t, kind) }, func(port int) (err error) {
		d, err = s.dialDriver(t, dispatchTarget(basePath, kind, port, accept), s.driverHeader())
		return err
	})
	return d, port
}

// errPortInUse tells onFreePort that a picked port turned out to be busy.
var errPortInUse = errors.New("port in use")

// onFreePort calls register with freshly picked ports until it succeeds. A
// port that another process took between picking and binding (409, or
// errPortInUse) is retried with another one.
func onFreePort(t *testing.T, pick func(*testing.T) int, register func(port int) error) int {
	t.Helper()
	for attempt := 1; ; attempt++ {
		port := pick(t)
		err := register(port)
		if err == nil {
			return port
		}
		var status ws.StatusError
		busy := errors.Is(err, errPortInUse) || errors.As(err, &status) && int(status) == http.StatusConflict
		if !busy || attempt == 5 {
			t.Fatalf("registering on port %d: %v", port, err)
		}
	}
}

// send writes one binary WebSocket message.
func (d *driver) send(msg []byte) {
	d.t.Helper()
	_ = d.conn.SetWriteDeadline(time.Now().Add(eventTimeout))
	if err := wsutil.WriteClientBinary(d.conn, msg); err != nil {
		d.t.Fatalf("driver: sending: %v", err)
	}
}

func (d *driver) write(ip string, idOrPort uint64, data []byte) {
	d.t.Helper()
	d.send(codec.AppendMessage(nil, codec.Write, []byte(ip), idOrPort, data))
}

func (d *driver) closeClient(ip string, id uint64) {
	d.t.Helper()
	d.send(codec.AppendMessage(nil, codec.Close, []byte(ip), id, nil))
}

// readFrame reads one raw frame; server frames must not be masked.
func (d *driver) readFrame() (ws.Header, []byte, error) {
	_ = d.conn.SetReadDeadline(time.Now().Add(eventTimeout))
	h, err := ws.ReadHeader(d.r)
	if err != nil {
		return h, nil, err
	}
	if h.Masked {
		return h, nil, errors.New("server sent a masked frame")
	}
	payload := make([]byte, h.Length)
	_, err = io.ReadFull(d.r, payload)
	return h, payload, err
}

// closeFrameError reports a close frame received while a message was expected.
type closeFrameError struct {
	code   ws.StatusCode
	reason string
}

func (e *closeFrameError) Error() string {
	return fmt.Sprintf("close frame %d %q", e.code, e.reason)
}

// nextMessage returns the next data message, reassembling fragments,
// answering pings and skipping pongs. A close frame is a *closeFrameError.
func (d *driver) nextMessage() (ws.OpCode, []byte, error) {
	var op ws.OpCode
	var msg []byte
	for {
		h, payload, err := d.readFrame()
		if err != nil {
			return 0, nil, err
		}
		switch h.OpCode {
		case ws.OpPing:
			_ = wsutil.WriteClientMessage(d.conn, ws.OpPong, payload)
			continue
		case ws.OpPong:
			continue
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(payload)
			return ws.OpClose, nil, &closeFrameError{code: code, reason: reason}
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

// next returns the next protocol message, which must be a binary message.
func (d *driver) next() []byte {
	d.t.Helper()
	op, msg, err := d.nextMessage()
	if err != nil {
		d.t.Fatalf("driver: waiting for a message: %v", err)
	}
	if op != ws.OpBinary {
		d.t.Fatalf("driver: got a %v message %q, want binary", op, msg)
	}
	return msg
}

// expect checks that the next message is exactly the encoding of the given one.
func (d *driver) expect(typ codec.MsgType, ip string, idOrPort uint64, data []byte) {
	d.t.Helper()
	got := d.next()
	want := codec.AppendMessage(nil, typ, []byte(ip), idOrPort, data)
	if !bytes.Equal(got, want) {
		d.t.Fatalf("driver got %s\n          want %s", describe(got), describe(want))
	}
}

func (d *driver) expectOpened(ip string, id uint64) {
	d.t.Helper()
	d.expect(codec.Opened, ip, id, nil)
}

func (d *driver) expectReceived(ip string, idOrPort uint64, data []byte) {
	d.t.Helper()
	d.expect(codec.Received, ip, idOrPort, data)
}

func (d *driver) expectClientClosed(ip string, id uint64) {
	d.t.Helper()
	d.expect(codec.Closed, ip, id, nil)
}

// expectStream reads RECEIVED messages for one TCP client until n bytes have
// arrived (a large write may be delivered in several reads) and returns them.
func (d *driver) expectStream(ip string, id uint64, n int) []byte {
	d.t.Helper()
	var got []byte
	for len(got) < n {
		raw := d.next()
		m, err := codec.ParseMessage(raw)
		if err != nil || m.Type != codec.Received || string(m.IP) != ip || m.ID != id || len(m.Data) == 0 {
			d.t.Fatalf("driver got %s after %d of %d bytes, want RECEIVED ip=%q id=%d with data", describe(raw), len(got), n, ip, id)
		}
		got = append(got, m.Data...)
	}
	if len(got) != n {
		d.t.Fatalf("driver received %d bytes, want %d", len(got), n)
	}
	return got
}

// expectCloseCode checks that the next frame other than a pong is a close frame with code.
func (d *driver) expectCloseCode(code ws.StatusCode) {
	d.t.Helper()
	op, msg, err := d.nextMessage()
	var closeErr *closeFrameError
	switch {
	case errors.As(err, &closeErr):
		if closeErr.code != code {
			d.t.Fatalf("driver: close code %d (%q), want %d", closeErr.code, closeErr.reason, code)
		}
	case err != nil:
		d.t.Fatalf("driver: waiting for close frame %d: %v", code, err)
	default:
		d.t.Fatalf("driver: got %v message %s, want close frame %d", op, describe(msg), code)
	}
}

// leave closes the session politely: close frame, wait for the answer, hang up.
func (d *driver) leave() {
	_ = wsutil.WriteClientMessage(d.conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
	for {
		if _, _, err := d.nextMessage(); err != nil {
			break
		}
	}
	d.conn.Close()
}

// drop hangs up without a close frame, as a crashing driver would.
func (d *driver) drop() { d.conn.Close() }

// describe renders a dispatch message for failure output.
func describe(b []byte) string {
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

// fromHex decodes a spec example, spaces allowed.
func fromHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// ---------------------------------------------------------------------------
// Devices: TCP and UDP peers

// handedOut holds every port freePort has returned, so that two tests of
// this process never pick the same one.
var handedOut sync.Map

// freePort returns a port that was free for network ("tcp" or "udp") on
// localhost and was not handed out before.
func freePort(t *testing.T, network string) int {
	t.Helper()
	for {
		port := unusedPort(t, network)
		if _, taken := handedOut.LoadOrStore(network+"/"+strconv.Itoa(port), true); !taken {
			return port
		}
	}
}

func freeTCPPort(t *testing.T) int { return freePort(t, "tcp") }
func freeUDPPort(t *testing.T) int { return freePort(t, "udp") }

// unusedPort returns a port with nothing bound to it on any address. It
// picks from below the kernel's ephemeral range: outgoing connections (other
// tests, load generators) draw their source ports from that range, so a port
// picked there can be taken again before the server binds it.
func unusedPort(t *testing.T, network string) int {
	t.Helper()
	if network != "tcp" && network != "udp" {
		t.Fatalf("unusedPort: unknown network %q", network)
	}
	lo, hi := 20000, ephemeralPortsStart()-1
	for range 1000 {
		port := lo + mathrand.IntN(hi-lo+1)
		if portUnused(network, port) {
			return port
		}
	}
	t.Fatalf("no unused %s port in %d-%d", network, lo, hi)
	return 0
}

func portUnused(network string, port int) bool {
	addr := ":" + strconv.Itoa(port)
	if network == "udp" {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		return pc.Close() == nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	return ln.Close() == nil
}

// ephemeralPortsStart is the first port the kernel hands out on its own.
func ephemeralPortsStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 21000 {
				return n
			}
		}
	}
	return 32768
}

// freePortForBoth returns a port number free for TCP and for UDP.
func freePortForBoth(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := freeTCPPort(t)
		pc, err := net.ListenPacket("udp", net.JoinHostPort(localhost, strconv.Itoa(port)))
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// dialDevice connects to the dispatch port from the given local IP
// (127.0.0.x, or ::1 to reach the port over IPv6).
func dialDevice(t *testing.T, fromIP string, port int) *net.TCPConn {
	t.Helper()
	conn, err := tryDialDevice(fromIP, port)
	if err != nil {
		t.Fatalf("device %s → port %d: %v", fromIP, port, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func tryDialDevice(fromIP string, port int) (*net.TCPConn, error) {
	local := net.ParseIP(fromIP)
	host := localhost
	if local.To4() == nil {
		host = "::1"
	}
	dialer := net.Dialer{Timeout: eventTimeout, LocalAddr: &net.TCPAddr{IP: local}}
	conn, err := dialer.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	return conn.(*net.TCPConn), nil
}

func deviceSend(t *testing.T, conn net.Conn, data []byte) {
	t.Helper()
	_ = conn.SetWriteDeadline(time.Now().Add(eventTimeout))
	if _, err := conn.Write(data); err != nil {
		t.Fatalf("device %v: writing: %v", conn.LocalAddr(), err)
	}
}

// expectDeviceReceives reads exactly len(want) bytes and compares them.
func expectDeviceReceives(t *testing.T, conn net.Conn, want []byte) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(eventTimeout))
	got := make([]byte, len(want))
	n, err := io.ReadFull(conn, got)
	if err != nil {
		t.Fatalf("device %v: read %d of %d bytes: %v", conn.LocalAddr(), n, len(want), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("device %v received %q, want %q", conn.LocalAddr(), abbreviate(got), abbreviate(want))
	}
}

// expectDeviceDisconnected checks that the server has closed the connection
// (end of file or reset) without sending anything first.
func expectDeviceDisconnected(t *testing.T, conn net.Conn) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(eventTimeout))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	switch {
	case n > 0:
		t.Fatalf("device %v: got %q, want the connection closed", conn.LocalAddr(), buf[:n])
	case isTimeout(err):
		t.Fatalf("device %v: still connected after %v", conn.LocalAddr(), eventTimeout)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
	default:
		t.Fatalf("device %v: unexpected read error %v", conn.LocalAddr(), err)
	}
}

// waitTCPPortClosed dials the port until the connection is refused.
func waitTCPPortClosed(t *testing.T, port int) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for {
		conn, err := tryDialDevice(localhost, port)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
		if err == nil {
			conn.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("TCP port %d still accepts connections (last error %v)", port, err)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

// udpPeer is an unconnected UDP socket on ip, port chosen by the kernel.
func udpPeer(t *testing.T, ip string) *net.UDPConn {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatalf("UDP peer on %s: %v", ip, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func udpPort(conn *net.UDPConn) uint64 { return uint64(conn.LocalAddr().(*net.UDPAddr).Port) }

func sendDatagram(t *testing.T, peer *net.UDPConn, port int, data []byte) {
	t.Helper()
	if _, err := peer.WriteToUDP(data, &net.UDPAddr{IP: net.ParseIP(localhost), Port: port}); err != nil {
		t.Fatalf("UDP peer %v: sending %d bytes: %v", peer.LocalAddr(), len(data), err)
	}
}

// expectDatagram reads one datagram, compares it and returns its source.
func expectDatagram(t *testing.T, peer *net.UDPConn, want []byte) *net.UDPAddr {
	t.Helper()
	_ = peer.SetReadDeadline(time.Now().Add(eventTimeout))
	buf := make([]byte, 70000)
	n, from, err := peer.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("UDP peer %v: waiting for %q: %v", peer.LocalAddr(), abbreviate(want), err)
	}
	if !bytes.Equal(buf[:n], want) {
		t.Fatalf("UDP peer %v received %q, want %q", peer.LocalAddr(), abbreviate(buf[:n]), abbreviate(want))
	}
	return from
}

// warnLine matches a warning-level log line, text or JSON.
var warnLine = regexp.MustCompile(`(?i)level"?[=:]"?warn`)

func isTimeout(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) && netErr.Timeout()
}

func abbreviate(b []byte) string {
	if len(b) > 48 {
		return fmt.Sprintf("%s… (%d bytes)", b[:48], len(b))
	}
	return string(b)
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}
