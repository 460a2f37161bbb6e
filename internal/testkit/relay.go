package testkit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"

	"github.com/placeos-gnet/dispatch/loop/relay/token"
)

// Relay is a server started with relay topics on: the process, where its
// relay listens, and the secret its tokens are signed with.
type Relay struct {
	*Process
	RelaySecret []byte
	// Key signs the tokens the helpers mint: the relay secret unless a
	// test sets a private key.
	Key       any
	Addr      string // the relay listener, host:port
	AccessURL string // tokens' aud (unless Audience is set); POST <AccessURL>/session/<topic>
	RelayURL  string
	// Audience, when set, is tokens' aud instead of AccessURL: replicas
	// behind one load balancer share the access URL clients see, while a
	// test reaches each at its own address.
	Audience string
}

// RelayEnv is the environment that turns the relay on, on a free port of
// loopback, with secret.
func RelayEnv(secret string) []string {
	return []string{"DISPATCH_RELAY_LISTEN=127.0.0.1:0", "DISPATCH_RELAY_SECRET=" + secret}
}

// StartRelay starts the binary with relay topics on and a fresh relay
// secret; env adds or overrides variables (DISPATCH_RELAY_*).
func StartRelay(tb testing.TB, env ...string) *Relay {
	tb.Helper()
	secret := "relay-secret-" + RandomHex(tb, 16)
	return RelayOf(tb, Start(tb, append(RelayEnv(secret), env...)...), secret)
}

// RelayOf reads where a started server's relay listens from its
// "relay listening" line; secret is the relay secret it was given ("" if
// none).
func RelayOf(tb testing.TB, p *Process, secret string) *Relay {
	tb.Helper()
	r := &Relay{Process: p, RelaySecret: []byte(secret), Key: []byte(secret)}
	for _, line := range strings.Split(p.Logs(), "\n") {
		if logField([]byte(line), "msg") == "relay listening" {
			r.Addr = logField([]byte(line), "addr")
			r.AccessURL = logField([]byte(line), "access_url")
			r.RelayURL = logField([]byte(line), "relay_url")
		}
	}
	if r.Addr == "" {
		tb.Fatalf("no \"relay listening\" line:\n%s", p.LogTail(8192))
	}
	return r
}

// ReplicaRelay is the relay of one replica of a cluster whose replicas
// share the access URL audience (DISPATCH_RELAY_ACCESS_URL): requests go to
// the replica's own listener, tokens name the shared audience.
func ReplicaRelay(tb testing.TB, p *Process, secret, audience string) *Relay {
	tb.Helper()
	r := RelayOf(tb, p, secret)
	r.AccessURL, r.Audience = "http://"+r.Addr, audience
	return r
}

// At is uri (a WebSocket URI a relay handed out) pointed at this relay's
// listener instead: a load balancer may send the connection to any replica.
func (r *Relay) At(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		panic(err)
	}
	u.Host = r.Addr
	return u.String()
}

// TokenSpec says what a test token claims; zero fields take defaults.
type TokenSpec struct {
	Topic     string
	Scopes    []string // default read, write
	BookingID string   // default "booking-e2e"
	Prefix    string   // default "session"
	Audience  string   // default the relay's access URL
	NoBooking bool     // leave booking_id out
	NotBefore time.Time
	Expires   time.Time // default an hour from now
	IssuedAt  time.Time
	// Key signs the token; default the Relay's Key.
	Key any
}

// Claims builds the claims of spec.
func (r *Relay) Claims(spec TokenSpec) *token.Claims {
	now := time.Now()
	c := &token.Claims{Topic: spec.Topic, Scopes: spec.Scopes, BookingID: spec.BookingID, Prefix: spec.Prefix}
	if c.Scopes == nil {
		c.Scopes = []string{token.ScopeRead, token.ScopeWrite}
	}
	if c.BookingID == "" && !spec.NoBooking {
		c.BookingID = "booking-e2e"
	}
	if c.Prefix == "" {
		c.Prefix = token.PrefixSession
	}
	aud := spec.Audience
	if aud == "" {
		aud = r.Audience
	}
	if aud == "" {
		aud = r.AccessURL
	}
	c.Audience = jwt.ClaimStrings{aud}
	c.IssuedAt = jwt.NewNumericDate(or(spec.IssuedAt, now))
	c.NotBefore = jwt.NewNumericDate(or(spec.NotBefore, now))
	c.ExpiresAt = jwt.NewNumericDate(or(spec.Expires, now.Add(time.Hour)))
	return c
}

func or(t, def time.Time) time.Time {
	if t.IsZero() {
		return def
	}
	return t
}

// Token mints a token for spec.
func (r *Relay) Token(tb testing.TB, spec TokenSpec) string {
	tb.Helper()
	key := r.Key
	if spec.Key != nil {
		key = spec.Key
	}
	token, err := token.Mint(r.Claims(spec), key)
	if err != nil {
		tb.Fatalf("minting a token: %v", err)
	}
	return token
}

var relayHTTP = &http.Client{Timeout: EventTimeout, Transport: &http.Transport{DisableKeepAlives: true}}

// Request sends method to url with the Authorization header (none if
// auth is "") and returns the answer.
func Request(tb testing.TB, method, url, auth string) Response {
	tb.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := relayHTTP.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return Response{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: string(body)}
}

// RelayError is the JSON body of a refusal.
type RelayError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
}

// ExpectRelayError checks that an answer is a JSON refusal with status and
// reason ("" for none).
func ExpectRelayError(tb testing.TB, what string, got Response, status int, reason string) {
	tb.Helper()
	var e RelayError
	switch {
	case got.Status != status:
		tb.Errorf("%s: status %d, want %d (body %q)", what, got.Status, status, got.Body)
	case !strings.HasPrefix(got.ContentType, "application/json"):
		tb.Errorf("%s: Content-Type %q, want application/json (body %q)", what, got.ContentType, got.Body)
	case json.Unmarshal([]byte(got.Body), &e) != nil || e.Message == "" || e.Code != fmt.Sprint(status):
		tb.Errorf("%s: body %q is not {\"code\":\"%d\",\"message\":…}", what, got.Body, status)
	case e.Reason != reason:
		tb.Errorf("%s: reason %q, want %q (body %q)", what, e.Reason, reason, got.Body)
	}
}

// Access POSTs token (sent raw, as practable's clients send it) for topic.
func (r *Relay) Access(tb testing.TB, topic, token string) Response {
	tb.Helper()
	return Request(tb, http.MethodPost, r.AccessURL+"/session/"+topic, token)
}

// CodeURI asks for a code and returns the WebSocket URI, failing the test
// unless the answer is 200 {"uri":…}.
func (r *Relay) CodeURI(tb testing.TB, topic, token string) string {
	tb.Helper()
	resp := r.Access(tb, topic, token)
	var answer struct {
		URI string `json:"uri"`
	}
	if resp.Status != http.StatusOK || json.Unmarshal([]byte(resp.Body), &answer) != nil || answer.URI == "" {
		tb.Fatalf("access to %s: %d %q", topic, resp.Status, resp.Body)
	}
	return answer.URI
}

// RelayClient is a WebSocket client of a relay topic. It is a Driver, so
// that frames, closes and pings are read the same way.
type RelayClient struct {
	*Driver
}

// DialRelay opens the WebSocket at uri; a refused upgrade is a
// ws.StatusError. opts adjust the socket (ReceiveBuffer).
func DialRelay(tb testing.TB, uri string, opts ...DialOption) (*RelayClient, error) {
	tb.Helper()
	dialer := ws.Dialer{
		Timeout: EventTimeout,
		NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netDialer("", opts).DialContext(ctx, network, addr)
		},
	}
	conn, br, _, err := dialer.Dial(context.Background(), uri)
	if err != nil {
		return nil, err
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	tb.Cleanup(func() { conn.Close() })
	return &RelayClient{Driver: &Driver{tb: tb, Conn: conn, Reader: br}}, nil
}

// Join mints a token for topic with scopes, gets a code and connects.
func (r *Relay) Join(tb testing.TB, topic string, scopes ...string) *RelayClient {
	tb.Helper()
	spec := TokenSpec{Topic: topic}
	if len(scopes) > 0 {
		spec.Scopes = scopes
	}
	return r.JoinWith(tb, spec)
}

// JoinWith connects with a token for spec.
func (r *Relay) JoinWith(tb testing.TB, spec TokenSpec, opts ...DialOption) *RelayClient {
	tb.Helper()
	uri := r.CodeURI(tb, spec.Topic, r.Token(tb, spec))
	c, err := DialRelay(tb, uri, opts...)
	if err != nil {
		tb.Fatalf("connecting to %s: %v", uri, err)
	}
	return c
}

// UpgradeAnswer sends a WebSocket upgrade for uri by hand and reads the
// answer: a refusal's status and body (a 101 is returned as is).
func UpgradeAnswer(tb testing.TB, uri string) Response {
	tb.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, EventTimeout)
	if err != nil {
		tb.Fatalf("dialling %s: %v", u.Host, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(EventTimeout))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", u.RequestURI(), u.Host)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		tb.Fatalf("upgrade %s: reading the answer: %v", uri, err)
	}
	body := ""
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
	}
	resp.Body.Close()
	return Response{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: body}
}

// SendText writes one text message.
func (c *RelayClient) SendText(msg string) {
	c.tb.Helper()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(EventTimeout))
	if err := wsutil.WriteClientText(c.Conn, []byte(msg)); err != nil {
		c.tb.Fatalf("relay client: sending: %v", err)
	}
}

// ExpectMessage checks that the next data message has op and payload.
func (c *RelayClient) ExpectMessage(op ws.OpCode, payload []byte) {
	c.tb.Helper()
	gotOp, got, err := c.NextMessage()
	if err != nil {
		c.tb.Fatalf("relay client: waiting for %v %q: %v", op, payload, err)
	}
	if gotOp != op || string(got) != string(payload) {
		c.tb.Fatalf("relay client: got %v %q, want %v %q", gotOp, got, op, payload)
	}
}

// ExpectNothing checks that no data message arrives within d (pings are
// answered meanwhile); the connection stays usable only if this passes.
func (c *RelayClient) ExpectNothing(d time.Duration) {
	c.tb.Helper()
	_ = c.Conn.SetReadDeadline(time.Now().Add(d))
	h, err := ws.ReadHeader(c.Reader)
	if err == nil {
		payload := make([]byte, h.Length)
		_, _ = io.ReadFull(c.Reader, payload)
		c.tb.Fatalf("relay client: got a %v frame %q, want nothing", h.OpCode, payload)
	}
	if !IsTimeout(err) {
		c.tb.Fatalf("relay client: %v, want nothing", err)
	}
}

// ExpectNoMessage sends a ping and reads to its pong: a data message
// before it fails the test. Whatever the server queued for the client
// before it read the ping arrives first, so this checks that nothing was.
func (c *RelayClient) ExpectNoMessage() {
	c.tb.Helper()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(EventTimeout))
	if err := wsutil.WriteClientMessage(c.Conn, ws.OpPing, []byte("barrier")); err != nil {
		c.tb.Fatalf("relay client: ping: %v", err)
	}
	for {
		h, payload, err := c.ReadFrame()
		switch {
		case err != nil:
			c.tb.Fatalf("relay client: waiting for a pong: %v", err)
		case h.OpCode == ws.OpPong && string(payload) == "barrier":
			return
		case h.OpCode == ws.OpPing:
			_ = wsutil.WriteClientMessage(c.Conn, ws.OpPong, payload)
		case h.OpCode == ws.OpText || h.OpCode == ws.OpBinary || h.OpCode == ws.OpContinuation:
			c.tb.Fatalf("relay client: got %v %q, want no message", h.OpCode, payload)
		case h.OpCode == ws.OpClose:
			c.tb.Fatalf("relay client: closed while waiting for a pong")
		}
	}
}

// ExpectClose reads to the close frame and checks its code and reason.
func (c *RelayClient) ExpectClose(code ws.StatusCode, reason string) {
	c.tb.Helper()
	for {
		op, msg, err := c.NextMessage()
		if ce, ok := err.(*CloseFrameError); ok {
			if ce.Code != code || !strings.Contains(ce.Reason, reason) {
				c.tb.Fatalf("relay client: close %d %q, want %d with %q", ce.Code, ce.Reason, code, reason)
			}
			return
		}
		if err != nil {
			c.tb.Fatalf("relay client: waiting for close %d: %v", code, err)
		}
		_, _ = op, msg
	}
}

// Admin sends method to <access><path> with a token holding scopes.
func (r *Relay) Admin(tb testing.TB, method, path string, scopes ...string) Response {
	tb.Helper()
	return Request(tb, method, r.AccessURL+path, "Bearer "+r.Token(tb, TokenSpec{Scopes: scopes}))
}

// RelayStatus fetches GET <access>/status.
func (r *Relay) RelayStatus(tb testing.TB) []RelayReport {
	tb.Helper()
	resp := r.Admin(tb, http.MethodGet, "/status", token.ScopeStats)
	var reports []RelayReport
	if resp.Status != http.StatusOK || json.Unmarshal([]byte(resp.Body), &reports) != nil {
		tb.Fatalf("status: %d %q", resp.Status, resp.Body)
	}
	return reports
}

// WaitRelayConns waits until the status lists n connections on topic.
func (r *Relay) WaitRelayConns(tb testing.TB, topic string, n int) {
	tb.Helper()
	count := func() int {
		k := 0
		for _, rep := range r.RelayStatus(tb) {
			if rep.Topic == topic {
				k++
			}
		}
		return k
	}
	got := -1
	if !Poll(EventTimeout, func() bool { got = count(); return got == n }) {
		tb.Fatalf("topic %s never had %d connections (last %d)", topic, n, got)
	}
}

// MetricValueOf scrapes once and returns one metric's value and whether it
// is exported.
func MetricValueOf(tb testing.TB, addr, name string, labelPairs ...string) (float64, bool) {
	tb.Helper()
	all, err := Scrape(addr)
	if err != nil {
		tb.Fatalf("scraping %s: %v", addr, err)
	}
	return MetricValue(all, name, labelPairs...)
}

// RelayReport is one connection in the relay's status document, as a test
// reads it.
type RelayReport struct {
	Topic        string   `json:"topic"`
	CanRead      bool     `json:"can_read"`
	CanWrite     bool     `json:"can_write"`
	Scopes       []string `json:"scopes"`
	BookingID    string   `json:"booking_id,omitempty"`
	Connected    string   `json:"connected"`
	ExpiresAt    string   `json:"expires_at"`
	RemoteAddr   string   `json:"remote_addr"`
	ForwardedFor string   `json:"forwarded_for,omitempty"`
	UserAgent    string   `json:"user_agent,omitempty"`
	Role         string   `json:"role"`
}
