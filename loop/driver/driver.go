// Package driver is the dispatch driver role: a WebSocket upstream that
// hears a channel's members in the dispatch binary protocol (OPENED,
// RECEIVED, CLOSED) and answers them with WRITE and CLOSE. Dispatch ports
// and socket groups both attach drivers; what a WRITE or CLOSE does is the
// kind's, through a Target.
package driver

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/loop"
)

// Config is what every driver endpoint shares, whichever kind it attaches to.
type Config struct {
	Secret          string // shared bearer token
	MaxMessageBytes int    // largest driver message (close 1009 past it)
	MaxPending      int    // unsent bytes per driver (close 1008 past it)
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{Secret: "testing", MaxMessageBytes: 1 << 20, MaxPending: 16 << 20}
}

// Check validates the settings.
func (c *Config) Check() error {
	switch {
	case c.MaxMessageBytes < 64:
		return errors.New("max message bytes must be at least 64")
	case c.MaxPending < 64<<10:
		return errors.New("max driver pending must be at least 64 KiB")
	}
	return nil
}

// Format is the dispatch binary protocol as drivers receive it: each member
// event as one binary WebSocket message, tagged with the member's IP and id.
var Format = loop.NewFormat("dispatch", func(dst []byte, ev *loop.Event) ([]byte, []byte, bool) {
	t := codec.Received
	switch ev.Type {
	case loop.MemberOpened:
		t = codec.Opened
	case loop.MemberClosed:
		t = codec.Closed
	}
	m := ev.Member
	dst = codec.AppendFrameHeader(dst, ws.OpBinary, codec.HeaderLen(len(m.IPText))+len(ev.Data))
	return codec.AppendHeader(dst, t, m.IPText, m.ID, len(ev.Data)), nil, true
})

// Target carries a driver's WRITE and CLOSE to the members of its channel,
// as the kind addresses them. An unknown member is a silent no-op.
type Target interface {
	Write(d *Driver, ip []byte, id uint64, data []byte)
	Close(d *Driver, ip []byte, id uint64)
}

// Driver is one driver session: an upstream of one channel.
type Driver struct {
	Upstream loop.Upstream
	Accept   loop.Filter
	Module   string // X-Module-ID, for logs
	Conn     *loop.WSConn
	target   Target
	// WarnedBadWrite limits the warning for unsendable UDP WRITEs to one
	// per session.
	WarnedBadWrite bool
}

// Auth checks requests against the shared secret.
type Auth struct{ sum [sha256.Size]byte }

// NewAuth keeps a digest of the secret.
func NewAuth(secret string) Auth { return Auth{sum: sha256.Sum256([]byte(secret))} }

// Authorised reads the token as the original does: the Authorization
// header wins whenever it is present, even empty; otherwise the
// bearer_token query parameter.
func (a Auth) Authorised(req *http.Request) bool {
	var token string
	if values, present := req.Header["Authorization"]; present {
		token = strings.TrimRight(strings.TrimPrefix(values[0], "Bearer "), " \t\r\n")
	} else {
		token = strings.TrimSpace(req.URL.Query().Get("bearer_token"))
	}
	// Comparing digests keeps the comparison constant-time in the length too.
	sum := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(sum[:], a.sum[:]) == 1
}

// Unauthorised answers 401.
func Unauthorised(r *loop.Request, log interface{ Info(string, ...any) }) {
	log.Info("refused request: invalid token", "peer", r.Peer)
	r.Respond(http.StatusUnauthorized, "application/json", []byte(`{"error":"invalid authorisation token"}`))
}

// Preamble runs the checks every driver route shares: the method, the
// token, the Upgrade header, a parsable query. Unless ok, the request has
// been answered; param names the parameter a bad query is blamed on.
func (a Auth) Preamble(r *loop.Request, h *loop.Hub, param string) (query url.Values, ok bool) {
	if r.Method != http.MethodGet {
		r.Error(http.StatusNotFound, "not found", "")
		return nil, false
	}
	if !a.Authorised(r.Request) {
		Unauthorised(r, h.Log())
		return nil, false
	}
	if !headerHasToken(r.Header, "Upgrade", "websocket") {
		r.RespondHeaders(http.StatusUpgradeRequired, "text/plain",
			"Upgrade: websocket\r\n", []byte("This service requires use of the WebSocket protocol"))
		return nil, false
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		ParamError(r, h, http.StatusBadRequest, param, "invalid query string")
		return nil, false
	}
	return query, true
}

// DocumentRequest runs the checks of a GET for a document behind the shared
// secret (the stats and groups documents); unless ok, it has been answered.
func (a Auth) DocumentRequest(r *loop.Request, h *loop.Hub) (ok bool) {
	if r.Method != http.MethodGet {
		r.Error(http.StatusNotFound, "not found", "")
		return false
	}
	if !a.Authorised(r.Request) {
		Unauthorised(r, h.Log())
		return false
	}
	return true
}

// ParamError refuses a request for one of its parameters.
func ParamError(r *loop.Request, h *loop.Hub, status int, param, msg string) {
	h.Log().Info("refused dispatch request", "peer", r.Peer, "status", status, "parameter", param)
	r.Error(status, msg, param)
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, part := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}

// NewClass registers the driver class of a kind, with its log lines.
func NewClass(h *loop.Hub, kind string) *loop.Class {
	return h.NewClass(kind, "driver").
		Say(loop.EndSlow, "driver not keeping up, closing it").
		Say(loop.EndStalled, "driver not keeping up, closing it").
		Say(loop.EndMalformed, "malformed driver message, closing it").
		Say(loop.EndOversized, "driver message too large, closing it").
		Say(loop.EndProtocol, "driver broke the WebSocket protocol, closing it")
}

// Attach completes an upgrade (Accept's answer goes out) and attaches the
// new driver to ch as an upstream.
func Attach(r *loop.Request, answer []byte, cfg *Config, class *loop.Class, ch *loop.Channel, accept loop.Filter, target Target) *Driver {
	d := &Driver{Accept: accept, Module: r.Header.Get("X-Module-ID"), target: target}
	d.Conn = r.Upgrade(answer, d, loop.WSOptions{
		Class:      class,
		Output:     loop.Output{Format: Format, Limit: cfg.MaxPending, OnFull: loop.PauseWhenFull},
		MaxMessage: cfg.MaxMessageBytes,
	})
	d.Upstream = loop.Upstream{Out: &d.Conn.Endpoint, Filter: accept}
	ch.Attach(&d.Upstream)
	return d
}

// Channel is the channel the driver is attached to, or nil once detached.
func (d *Driver) Channel() *loop.Channel { return d.Upstream.Channel() }

// Message handles one driver message. Only binary messages carry the
// protocol; text messages are ignored.
func (d *Driver) Message(c *loop.WSConn, text bool, payload []byte) {
	if text || d.Channel() == nil {
		return
	}
	msg, err := codec.ParseMessage(payload)
	if err != nil {
		c.End(loop.EndMalformed, err.Error())
		return
	}
	switch msg.Type {
	case codec.Write:
		d.target.Write(d, msg.IP, msg.ID, msg.Data)
	case codec.Close:
		d.target.Close(d, msg.IP, msg.ID)
	}
}

// Ended detaches the driver from its channel.
func (d *Driver) Ended(_ *loop.WSConn, _ loop.EndReason) {
	if ch := d.Channel(); ch != nil {
		ch.Detach(&d.Upstream)
	}
}
