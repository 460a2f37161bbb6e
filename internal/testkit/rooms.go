package testkit

// The room balancer (OpenTogetherTube) from the outside: an emulated
// Monolith (a WebSocket server on a balancing port that speaks the
// balancer protocol, with an HTTP port for proxied requests), browser-like
// room clients, and the balancer's listener address.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// StartRooms starts the binary with the room balancer on a free loopback
// port and returns it with the balancer's address; env adds variables
// (DISPATCH_ROOMS_MONOLITHS, …).
func StartRooms(tb testing.TB, env ...string) (*Process, string) {
	tb.Helper()
	p := Start(tb, append([]string{"DISPATCH_ROOMS_ADDR=127.0.0.1:0"}, env...)...)
	return p, RoomsAddr(tb, p)
}

// RoomsAddr is the balancer's listener, from its log line
// (msg="http listening" name=rooms addr=…), logged before the ready line.
func RoomsAddr(tb testing.TB, p *Process) string {
	tb.Helper()
	for _, line := range strings.Split(LinesContaining(p.Logs(), "http listening"), "\n") {
		if logField([]byte(line), "name") == "rooms" {
			return logField([]byte(line), "addr")
		}
	}
	tb.Fatalf("no rooms listener line in the logs:\n%s", p.LogTail(4096))
	return ""
}

// BalancerID is the id the balancer sends Monoliths in its init, from its
// start line (msg="room balancer" id=…).
func BalancerID(tb testing.TB, p *Process) string {
	tb.Helper()
	for _, line := range strings.Split(LinesContaining(p.Logs(), "room balancer"), "\n") {
		if id := logField([]byte(line), "id"); id != "" {
			return id
		}
	}
	tb.Fatalf("no room balancer line in the logs:\n%s", p.LogTail(4096))
	return ""
}

// MonolithOptions shape an emulated Monolith.
type MonolithOptions struct {
	ID     string // default: a random id
	Region string // default "unknown"
	Token  string // sent in init as "token" when not empty
	// Init, when not empty, is sent instead of the init message; "-" sends
	// nothing.
	Init string
	// Host is the address the balancing and HTTP ports bind to (default
	// 127.0.0.1).
	Host string
	// Addr, when set, is the balancing port's exact address (a Monolith
	// restarted where it was, or several on one port for DNS discovery).
	Addr string
	// ReceiveBuffer, when set, is the SO_RCVBUF of the balancing port's
	// sockets, set on the listener so that links have it from the start: a
	// link the test holds (MonolithLink.Hold) then backs up quickly.
	ReceiveBuffer int
	// HTTP serves the Monolith's HTTP port (default: an echo of the
	// request, see EchoHandler).
	HTTP http.Handler
}

// Monolith is an emulated OpenTogetherTube Monolith: it accepts the
// balancer's WebSocket on its balancing port, sends init at once as the
// real one does, and hands each link to the test.
type Monolith struct {
	tb       testing.TB
	opts     MonolithOptions
	ln       net.Listener
	httpLn   net.Listener
	httpSrv  *http.Server
	links    chan *MonolithLink
	mu       sync.Mutex
	all      []*MonolithLink
	closed   bool
	accepted sync.WaitGroup
}

// StartMonolith starts one; it is closed when the test ends.
func StartMonolith(tb testing.TB, opts MonolithOptions) *Monolith {
	tb.Helper()
	if opts.ID == "" {
		opts.ID = "monolith-" + RandomHex(tb, 6)
	}
	if opts.Region == "" {
		opts.Region = "unknown"
	}
	if opts.Host == "" {
		opts.Host = Localhost
	}
	if opts.HTTP == nil {
		opts.HTTP = EchoHandler(opts.ID)
	}
	m := &Monolith{tb: tb, opts: opts, links: make(chan *MonolithLink, 16)}
	var err error
	balancing := opts.Addr
	if balancing == "" {
		balancing = net.JoinHostPort(opts.Host, "0")
	}
	var lc net.ListenConfig
	if opts.ReceiveBuffer > 0 {
		lc.Control = dialConfig{rcvbuf: opts.ReceiveBuffer}.control
	}
	if m.ln, err = lc.Listen(context.Background(), "tcp", balancing); err != nil {
		tb.Fatalf("monolith balancing port: %v", err)
	}
	if m.httpLn, err = net.Listen("tcp", net.JoinHostPort(opts.Host, "0")); err != nil {
		tb.Fatalf("monolith HTTP port: %v", err)
	}
	m.httpSrv = &http.Server{Handler: opts.HTTP, ReadHeaderTimeout: EventTimeout}
	go func() { _ = m.httpSrv.Serve(m.httpLn) }()
	m.accepted.Add(1)
	go m.accept()
	tb.Cleanup(m.Close)
	return m
}

// EchoHandler answers every request with 200 (or the status in the
// X-Want-Status header), the Monolith's id in X-Monolith, and a body
// "METHOD PATH?QUERY\n" followed by the request body.
func EchoHandler(id string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Monolith", id)
		status := http.StatusOK
		if s, err := strconv.Atoi(r.Header.Get("X-Want-Status")); err == nil {
			status = s
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, "%s %s\n", r.Method, r.URL.RequestURI())
		_, _ = io.Copy(w, r.Body)
	})
}

// ID is the Monolith's id, as its init says.
func (m *Monolith) ID() string { return m.opts.ID }

// Addr is the balancing port, host:port.
func (m *Monolith) Addr() string { return m.ln.Addr().String() }

// HTTPPort is the port init announces.
func (m *Monolith) HTTPPort() int { return m.httpLn.Addr().(*net.TCPAddr).Port }

func (m *Monolith) accept() {
	defer m.accepted.Done()
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			return
		}
		if _, err := ws.Upgrade(conn); err != nil {
			conn.Close()
			continue
		}
		l := &MonolithLink{conn: conn, msgs: make(chan Envelope, 4096), done: make(chan struct{}), gate: make(chan struct{})}
		close(l.gate)
		switch m.opts.Init {
		case "":
			payload := map[string]any{"port": m.HTTPPort(), "region": m.opts.Region, "id": m.opts.ID}
			if m.opts.Token != "" {
				payload["token"] = m.opts.Token
			}
			b, _ := json.Marshal(map[string]any{"type": "init", "payload": payload})
			_ = l.write(b)
		case "-":
		default:
			_ = l.write([]byte(m.opts.Init))
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			conn.Close()
			return
		}
		m.all = append(m.all, l)
		m.mu.Unlock()
		go l.read()
		m.links <- l
	}
}

// NextLink waits for the balancer to connect and returns the link; its
// first message is normally the balancer's init.
func (m *Monolith) NextLink(tb testing.TB) *MonolithLink {
	tb.Helper()
	select {
	case l := <-m.links:
		return l
	case <-time.After(EventTimeout):
		tb.Fatalf("monolith %s: the balancer did not connect within %v", m.opts.ID, EventTimeout)
		return nil
	}
}

// Handshake waits for the next link and its balancer init, and returns
// the link with the init's payload.
func (m *Monolith) Handshake(tb testing.TB) (*MonolithLink, map[string]any) {
	tb.Helper()
	l := m.NextLink(tb)
	init := l.Expect(tb, "init")
	var payload map[string]any
	if err := json.Unmarshal(init.Payload, &payload); err != nil {
		tb.Fatalf("balancer init %s: %v", init.Raw, err)
	}
	return l, payload
}

// Links are the links not yet taken with NextLink.
func (m *Monolith) Links() <-chan *MonolithLink { return m.links }

// StopHTTP closes the HTTP port only: the balancing link stays up.
func (m *Monolith) StopHTTP() { _ = m.httpSrv.Close() }

// Close stops the Monolith: its ports close and its links drop, as when
// its process dies.
func (m *Monolith) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	links := m.all
	m.mu.Unlock()
	m.ln.Close()
	_ = m.httpSrv.Close()
	for _, l := range links {
		l.Close()
	}
	m.accepted.Wait()
}

// Envelope is one message from the balancer.
type Envelope struct {
	Type    string          `json:"type"`
	Payload json.RawMessage `json:"payload"`
	Raw     []byte          `json:"-"`
}

// MonolithLink is one balancer connection to the emulated Monolith.
type MonolithLink struct {
	conn net.Conn
	msgs chan Envelope
	wmu  sync.Mutex
	done chan struct{}
	err  error
	gmu  sync.Mutex
	gate chan struct{} // closed while the link is read
}

// Hold stops reading the link: what the balancer sends backs up.
func (l *MonolithLink) Hold() {
	l.gmu.Lock()
	l.gate = make(chan struct{})
	l.gmu.Unlock()
}

// Release reads the link again.
func (l *MonolithLink) Release() {
	l.gmu.Lock()
	close(l.gate)
	l.gmu.Unlock()
}

func (l *MonolithLink) read() {
	defer close(l.done)
	defer close(l.msgs)
	for {
		l.gmu.Lock()
		gate := l.gate
		l.gmu.Unlock()
		<-gate
		// The balancer is the client side: its frames must be masked,
		// which ReadClientData insists on.
		b, op, err := wsutil.ReadClientData(l.conn)
		if err != nil {
			l.err = err
			return
		}
		if op != ws.OpText {
			l.err = fmt.Errorf("balancer sent a %v frame", op)
			return
		}
		var e Envelope
		if err := json.Unmarshal(b, &e); err != nil {
			l.err = fmt.Errorf("balancer sent %q: %v", b, err)
			return
		}
		e.Raw = b
		l.msgs <- e // a test that does not read holds the link back, as a slow Monolith would
	}
}

func (l *MonolithLink) write(b []byte) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	_ = l.conn.SetWriteDeadline(time.Now().Add(EventTimeout))
	return wsutil.WriteServerText(l.conn, b)
}

// Next returns the balancer's next message.
func (l *MonolithLink) Next(tb testing.TB) Envelope {
	tb.Helper()
	select {
	case e, ok := <-l.msgs:
		if !ok {
			tb.Fatalf("link ended while waiting for a message: %v", l.err)
		}
		return e
	case <-time.After(EventTimeout):
		tb.Fatalf("no message from the balancer within %v", EventTimeout)
		return Envelope{}
	}
}

// Expect returns the next message, which must be of type typ.
func (l *MonolithLink) Expect(tb testing.TB, typ string) Envelope {
	tb.Helper()
	e := l.Next(tb)
	if e.Type != typ {
		tb.Fatalf("balancer sent %s, want a %s", e.Raw, typ)
	}
	return e
}

// RoomJoin is a join the balancer sent.
type RoomJoin struct {
	Room   string `json:"room"`
	Client string `json:"client"`
	Token  string `json:"token"`
}

// ExpectJoin returns the next message, which must be a join.
func (l *MonolithLink) ExpectJoin(tb testing.TB) RoomJoin {
	tb.Helper()
	var j RoomJoin
	if e := l.Expect(tb, "join"); json.Unmarshal(e.Payload, &j) != nil {
		tb.Fatalf("join %s", e.Raw)
	}
	return j
}

// Messages are the balancer's messages on this link, closed when it ends.
func (l *MonolithLink) Messages() <-chan Envelope { return l.msgs }

// ExpectJoinOnOne waits for a join on any of links and returns which got
// it; the others must not get one first.
func ExpectJoinOnOne(tb testing.TB, links ...*MonolithLink) (int, RoomJoin) {
	tb.Helper()
	cases := make([]reflect.SelectCase, 0, len(links)+1)
	for _, l := range links {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(l.msgs)})
	}
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(time.After(EventTimeout))})
	i, v, ok := reflect.Select(cases)
	switch {
	case i == len(links):
		tb.Fatalf("no join on any of %d links within %v", len(links), EventTimeout)
	case !ok:
		tb.Fatalf("link %d ended while waiting for a join: %v", i, links[i].err)
	}
	e := v.Interface().(Envelope)
	var j RoomJoin
	if e.Type != "join" || json.Unmarshal(e.Payload, &j) != nil {
		tb.Fatalf("link %d got %s, want a join", i, e.Raw)
	}
	return i, j
}

// Ended is closed once the balancer's side of the link is gone.
func (l *MonolithLink) Ended() <-chan struct{} { return l.done }

// WaitEnded waits for the balancer to close the link and returns why the
// read ended (the close frame, or the connection's end).
func (l *MonolithLink) WaitEnded(tb testing.TB) error {
	tb.Helper()
	for {
		select {
		case _, ok := <-l.msgs:
			if !ok {
				<-l.done
				return l.err
			}
		case <-time.After(EventTimeout):
			tb.Fatalf("the balancer did not close the link within %v", EventTimeout)
			return nil
		}
	}
}

// SendRaw sends one text frame.
func (l *MonolithLink) SendRaw(tb testing.TB, msg string) {
	tb.Helper()
	if err := l.write([]byte(msg)); err != nil {
		tb.Fatalf("monolith link: sending %q: %v", Abbreviate([]byte(msg)), err)
	}
}

// Send sends {"type":typ,"payload":payload}.
func (l *MonolithLink) Send(tb testing.TB, typ string, payload any) {
	tb.Helper()
	b, err := json.Marshal(map[string]any{"type": typ, "payload": payload})
	if err != nil {
		tb.Fatal(err)
	}
	l.SendRaw(tb, string(b))
}

// RoomMeta is the metadata a Monolith reports for a room.
func RoomMeta(name string, public bool, users int) map[string]any {
	vis := "private"
	if public {
		vis = "public"
	}
	return map[string]any{"name": name, "title": "Title of " + name, "description": "", "isTemporary": false,
		"visibility": vis, "queueMode": "manual", "currentSource": nil, "users": users}
}

// Loaded reports a room loaded at epoch.
func (l *MonolithLink) Loaded(tb testing.TB, room string, epoch uint32) {
	tb.Helper()
	l.Send(tb, "loaded", map[string]any{"room": RoomMeta(room, false, 0), "load_epoch": epoch})
}

// GossipRoom is one entry of a gossip.
type GossipRoom struct {
	Meta  map[string]any
	Epoch uint32
}

// Gossip sends the full list of loaded rooms.
func (l *MonolithLink) Gossip(tb testing.TB, rooms ...GossipRoom) {
	tb.Helper()
	list := make([]map[string]any, 0, len(rooms))
	for _, r := range rooms {
		list = append(list, map[string]any{"room": r.Meta, "load_epoch": r.Epoch})
	}
	l.Send(tb, "gossip", map[string]any{"rooms": list})
}

// RoomMsg sends payload (raw JSON) to one client of room, or to all of
// them when client is "".
func (l *MonolithLink) RoomMsg(tb testing.TB, room, client, payload string) {
	tb.Helper()
	target := "null"
	if client != "" {
		target = strconv.Quote(client)
	}
	l.SendRaw(tb, fmt.Sprintf(`{"type":"room_msg","payload":{"room":%q,"client_id":%s,"payload":%s}}`, room, target, payload))
}

// Kick closes a client with code.
func (l *MonolithLink) Kick(tb testing.TB, client string, code int) {
	tb.Helper()
	l.Send(tb, "kick", map[string]any{"client_id": client, "reason": code})
}

// Close drops the link as a dying Monolith does: no close frame.
func (l *MonolithLink) Close() { l.conn.Close() }

// RoomClient is a browser's WebSocket to a room.
type RoomClient struct {
	conn    net.Conn
	r       io.Reader
	frames  chan clientFrame
	wmu     sync.Mutex
	readErr error
}

type clientFrame struct {
	op      ws.OpCode
	payload []byte
}

// RoomDialError is a refused upgrade: the status and the body.
type RoomDialError struct {
	Status int
	Body   string
}

func (e *RoomDialError) Error() string {
	return fmt.Sprintf("upgrade refused: %d %s", e.Status, e.Body)
}

// TryDialRoom opens a room client's WebSocket to /api/room/<room> (room
// is put in the path as given). A refused upgrade is a *RoomDialError.
func TryDialRoom(addr, room string, opts ...DialOption) (*RoomClient, error) {
	var body string
	d := ws.Dialer{
		Timeout: EventTimeout,
		NetDial: func(ctx context.Context, network, a string) (net.Conn, error) {
			return netDialer("", opts).DialContext(ctx, network, a)
		},
		OnStatusError: func(status int, reason []byte, resp io.Reader) {
			if r, err := http.ReadResponse(bufio.NewReader(resp), nil); err == nil {
				b, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
				body = string(b)
			}
		},
	}
	conn, br, _, err := d.Dial(context.Background(), "ws://"+addr+"/api/room/"+room)
	if err != nil {
		var status ws.StatusError
		if errors.As(err, &status) {
			return nil, &RoomDialError{Status: int(status), Body: body}
		}
		return nil, err
	}
	c := &RoomClient{conn: conn, r: conn, frames: make(chan clientFrame, 256)}
	if br != nil {
		c.r = io.MultiReader(br, conn)
	}
	return c, nil
}

// DialRoom is TryDialRoom that fails the test on error and reads the
// client's frames on a goroutine; the client is closed when the test ends.
func DialRoom(tb testing.TB, addr, room string, opts ...DialOption) *RoomClient {
	tb.Helper()
	c, err := TryDialRoom(addr, room, opts...)
	if err != nil {
		tb.Fatalf("room client for %q: %v", room, err)
	}
	tb.Cleanup(func() { c.conn.Close() })
	go c.read()
	return c
}

// DialRooms dials n clients of room concurrently (a few at a time) and
// authenticates each with token; the Monolith gets their joins in any
// order.
func DialRooms(tb testing.TB, addr, room, token string, n int) []*RoomClient {
	tb.Helper()
	out := make([]*RoomClient, n)
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := TryDialRoom(addr, room)
				if err == nil {
					err = c.TrySendText(fmt.Sprintf(`{"action":"auth","token":%q}`, token))
				}
				out[i], errs[i] = c, err
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, c := range out {
		if c != nil {
			tb.Cleanup(func() { c.conn.Close() })
			go c.read()
		}
		if errs[i] != nil {
			tb.Fatalf("room client %d of %d: %v", i, n, errs[i])
		}
	}
	return out
}

// DialRoomUnread is DialRoom whose client never reads: the server's
// frames pile up in its socket.
func DialRoomUnread(tb testing.TB, addr, room string, opts ...DialOption) *RoomClient {
	tb.Helper()
	c, err := TryDialRoom(addr, room, opts...)
	if err != nil {
		tb.Fatalf("room client for %q: %v", room, err)
	}
	tb.Cleanup(func() { c.conn.Close() })
	return c
}

func (c *RoomClient) read() {
	defer close(c.frames)
	for {
		f, err := ws.ReadFrame(c.r)
		if err != nil {
			c.readErr = err
			return
		}
		if f.Header.Masked {
			c.readErr = errors.New("server frame masked")
			return
		}
		c.frames <- clientFrame{f.Header.OpCode, f.Payload}
		if f.Header.OpCode == ws.OpClose {
			return
		}
	}
}

// StartReading reads the frames of a client dialled with DialRoomUnread
// from now on.
func (c *RoomClient) StartReading() { go c.read() }

// TryNext is Next that returns an error instead of failing the test, for
// goroutines of the test's own.
func (c *RoomClient) TryNext() (string, error) {
	select {
	case f, ok := <-c.frames:
		switch {
		case !ok:
			return "", fmt.Errorf("connection ended: %v", c.readErr)
		case f.op == ws.OpClose:
			code, reason := closeOf(f.payload)
			return "", fmt.Errorf("closed with %d %q", code, reason)
		}
		return string(f.payload), nil
	case <-time.After(EventTimeout):
		return "", fmt.Errorf("no message within %v", EventTimeout)
	}
}

// TrySendText sends one text message and returns the error.
func (c *RoomClient) TrySendText(msg string) error { return c.TrySend(ws.OpText, []byte(msg)) }

// Auth sends the auth message.
func (c *RoomClient) Auth(tb testing.TB, token string) {
	tb.Helper()
	c.SendText(tb, fmt.Sprintf(`{"action":"auth","token":%q}`, token))
}

// SendText sends one text message.
func (c *RoomClient) SendText(tb testing.TB, msg string) {
	tb.Helper()
	c.SendFrame(tb, ws.OpText, []byte(msg))
}

// SendFrame sends one masked frame.
func (c *RoomClient) SendFrame(tb testing.TB, op ws.OpCode, payload []byte) {
	tb.Helper()
	if err := c.TrySend(op, payload); err != nil {
		tb.Fatalf("room client: sending: %v", err)
	}
}

// TrySend sends one masked frame and returns the error.
func (c *RoomClient) TrySend(op ws.OpCode, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(EventTimeout))
	return wsutil.WriteClientMessage(c.conn, op, payload)
}

// Next returns the next data message the client hears (pings are not
// answered; the balancer sends none).
func (c *RoomClient) Next(tb testing.TB) string {
	tb.Helper()
	msg, err := c.TryNext()
	if err != nil {
		tb.Fatalf("room client: %v while waiting for a message", err)
	}
	return msg
}

// Expect reads the next message and compares it.
func (c *RoomClient) Expect(tb testing.TB, want string) {
	tb.Helper()
	if got := c.Next(tb); got != want {
		tb.Fatalf("room client got %q, want %q", Abbreviate([]byte(got)), Abbreviate([]byte(want)))
	}
}

// ExpectClose waits for a close frame (skipping data) and checks its code.
func (c *RoomClient) ExpectClose(tb testing.TB, code int) string {
	tb.Helper()
	deadline := time.After(EventTimeout)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				tb.Fatalf("room client: connection ended (%v) without a close frame, want %d", c.readErr, code)
			}
			if f.op != ws.OpClose {
				continue
			}
			got, reason := closeOf(f.payload)
			if got != code {
				tb.Fatalf("room client closed with %d %q, want %d", got, reason, code)
			}
			return reason
		case <-deadline:
			tb.Fatalf("room client: no close frame within %v (want %d)", EventTimeout, code)
			return ""
		}
	}
}

// Ping sends a ping and waits for its pong.
func (c *RoomClient) Ping(tb testing.TB, payload string) {
	tb.Helper()
	c.SendFrame(tb, ws.OpPing, []byte(payload))
	select {
	case f, ok := <-c.frames:
		if !ok || f.op != ws.OpPong || string(f.payload) != payload {
			tb.Fatalf("room client: got %v %q, want a pong %q", f.op, f.payload, payload)
		}
	case <-time.After(EventTimeout):
		tb.Fatal("room client: no pong")
	}
}

// Close closes the client's connection (without a close frame).
func (c *RoomClient) Close() { c.conn.Close() }

// CloseNormally sends a close frame 1000 and closes.
func (c *RoomClient) CloseNormally() {
	_ = c.TrySend(ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
	c.conn.Close()
}

func closeOf(payload []byte) (int, string) {
	if len(payload) < 2 {
		return 1005, ""
	}
	return int(binary.BigEndian.Uint16(payload)), string(payload[2:])
}

// JoinRoom dials a client, authenticates it and returns it with the join
// the Monolith got for it (read from link).
func JoinRoom(tb testing.TB, addr, room, token string, link *MonolithLink) (*RoomClient, RoomJoin) {
	tb.Helper()
	c := DialRoom(tb, addr, room)
	c.Auth(tb, token)
	j := link.ExpectJoin(tb)
	if j.Token != token {
		tb.Fatalf("join %+v, want token %q", j, token)
	}
	return c, j
}

// WaitMonolithUp waits until the balancer has logged n handshakes
// completed with the Monolith whose id this is (the first: n = 1).
func WaitMonolithUp(tb testing.TB, p *Process, id string, n int) {
	tb.Helper()
	count := func() int {
		c := 0
		for _, line := range strings.Split(LinesContaining(p.Logs(), "Monolith connected"), "\n") {
			if logField([]byte(line), "id") == id {
				c++
			}
		}
		return c
	}
	if !Poll(EventTimeout, func() bool { return count() >= n }) {
		tb.Fatalf("the balancer did not log its handshake %d with Monolith %s:\n%s", n, id, p.LogTail(4096))
	}
}

// WaitLogLines waits until the server has logged at least n lines that
// contain substr.
func WaitLogLines(tb testing.TB, p *Process, substr string, n int) {
	tb.Helper()
	if !Poll(EventTimeout, func() bool { return CountLines(p.Logs(), substr) >= n }) {
		tb.Fatalf("fewer than %d log lines with %q:\n%s", n, substr, p.LogTail(4096))
	}
}

// DNSServer answers A queries for every name with the addresses it is
// given (none for AAAA): a stand-in for the DNS that discovery polls.
type DNSServer struct {
	conn *net.UDPConn
	mu   sync.Mutex
	ips  []net.IP
}

// StartDNS serves on a free UDP port of 127.0.0.1 until the test ends.
func StartDNS(tb testing.TB) *DNSServer {
	tb.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(Localhost)})
	if err != nil {
		tb.Fatal(err)
	}
	d := &DNSServer{conn: conn}
	tb.Cleanup(func() { conn.Close() })
	go d.serve()
	return d
}

// Addr is ip:port.
func (d *DNSServer) Addr() string { return d.conn.LocalAddr().String() }

// SetA sets the addresses every A query is answered with.
func (d *DNSServer) SetA(ips ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ips = d.ips[:0]
	for _, ip := range ips {
		d.ips = append(d.ips, net.ParseIP(ip).To4())
	}
}

func (d *DNSServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		if resp := d.answer(buf[:n]); resp != nil {
			_, _ = d.conn.WriteToUDP(resp, from)
		}
	}
}

// answer builds the response to one query: the question echoed, and an A
// record per address for an A question.
func (d *DNSServer) answer(q []byte) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return nil
	}
	i := 12
	for i < len(q) && q[i] != 0 {
		i += int(q[i]) + 1
	}
	if i+5 > len(q) {
		return nil
	}
	question := q[12 : i+5]
	qtype := binary.BigEndian.Uint16(q[i+1:])
	d.mu.Lock()
	var ips []net.IP
	if qtype == 1 {
		ips = append(ips, d.ips...)
	}
	d.mu.Unlock()
	resp := append([]byte(nil), q[:2]...)
	resp = append(resp, 0x81, 0x80, 0, 1)
	resp = binary.BigEndian.AppendUint16(resp, uint16(len(ips)))
	resp = append(resp, 0, 0, 0, 0)
	resp = append(resp, question...)
	for _, ip := range ips {
		resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4)
		resp = append(resp, ip...)
	}
	return resp
}

// RoomsHTTP is a plain client for the balancer's HTTP side.
var RoomsHTTP = &http.Client{Timeout: EventTimeout, Transport: &http.Transport{DisableKeepAlives: true}}

// RoomsGet GETs path on the balancer with extra header lines ("Name: value").
func RoomsGet(tb testing.TB, addr, path string, headers ...string) (int, http.Header, string) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for _, h := range headers {
		if k, v, ok := strings.Cut(h, ":"); ok {
			req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
		}
	}
	resp, err := RoomsHTTP.Do(req)
	if err != nil {
		tb.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}
