package loop

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/codec"
)

// Route answers one request on the loop: with a response, or by upgrading
// the connection to a WebSocket.
type Route func(r *Request)

// Request is a complete request head waiting for its answer.
type Request struct {
	*http.Request
	Peer string

	hub      *Hub
	hc       *httpConn
	conn     gnet.Conn
	head     []byte
	answered bool
	later    bool // the route answers after it returns (Later)
	ws       *WSConn
}

// httpConn is a connection that has not finished its request head.
type httpConn struct {
	hub  *Hub
	l    *Listener // whose routes answer it
	born time.Time
	peer string
	// later is a request whose route answers after returning; gone is set
	// once the connection closed, so that a late answer is dropped.
	later *Request
	gone  bool
}

func newHTTPConn(h *Hub, l *Listener, c net.Conn) *httpConn {
	return &httpConn{hub: h, l: l, born: time.Now(), peer: c.RemoteAddr().String()}
}

func (hc *httpConn) opened(c gnet.Conn) gnet.Action {
	h := hc.hub
	if h.Stopping() {
		return gnet.Close
	}
	if len(h.handshakes) >= h.cfg.MaxHandshakes {
		h.c.HandshakesRefused++
		if h.handshakeFlood.Due(h.now) {
			h.log.Warn("too many connections still sending a request head, refusing new ones",
				"limit", h.cfg.MaxHandshakes, "refused", h.handshakeFlood.Take(), "last_peer", hc.peer)
		}
		return gnet.Close
	}
	h.handshakes[hc] = c
	return gnet.None
}

func (hc *httpConn) closed(gnet.Conn, error) {
	hc.gone = true
	delete(hc.hub.handshakes, hc)
}

// traffic buffers the request head (gnet keeps unread bytes for us) and
// answers it once complete.
func (hc *httpConn) traffic(c gnet.Conn) gnet.Action {
	h := hc.hub
	if hc.later != nil { // waiting for its answer: anything more is ignored
		_, _ = c.Discard(c.InboundBuffered())
		return gnet.None
	}
	buf, _ := c.Peek(-1)
	headLen, err := codec.RequestHeadLength(buf, h.cfg.MaxHeadBytes)
	r := &Request{Peer: hc.peer, hub: h, hc: hc, conn: c}
	switch {
	case errors.Is(err, codec.ErrHeadTooLarge):
		h.c.HeadTooLarge++
		r.Error(http.StatusRequestHeaderFieldsTooLarge, "request head too large", "")
		return gnet.Close
	case err != nil:
		r.Error(http.StatusBadRequest, "malformed request", "")
		return gnet.Close
	case headLen == 0:
		return gnet.None
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(buf[:headLen])))
	if err != nil {
		r.Error(http.StatusBadRequest, "malformed request", "")
		return gnet.Close
	}
	r.Request, r.head = req, buf[:headLen]
	if route, ok := hc.l.route(req.URL.Path); ok {
		route(r)
	} else {
		r.Error(http.StatusNotFound, "not found", "")
	}
	if r.later && !r.answered {
		_, _ = c.Discard(headLen)
		hc.later = r
		return gnet.None
	}
	if r.ws == nil {
		if !r.answered {
			r.Error(http.StatusInternalServerError, "no answer", "")
		}
		return gnet.Close
	}
	// Upgraded: frames the client sent right behind its head are the
	// WebSocket's now.
	_, _ = c.Discard(headLen)
	if c.InboundBuffered() > 0 {
		return r.ws.traffic(c)
	}
	return gnet.None
}

// Respond writes a complete response and closes the connection: plain
// requests are rare (health checks, stats), so keep-alive buys nothing. A
// status of 400 and up counts as a failed handshake.
func (r *Request) Respond(status int, contentType string, body []byte) {
	r.RespondHeaders(status, contentType, "", body)
}

// RespondHeaders is Respond with extra header lines (each ending in CRLF).
func (r *Request) RespondHeaders(status int, contentType, extra string, body []byte) {
	if r.answered {
		return
	}
	r.answered = true
	if r.later && r.hc.gone {
		return // the client left before the answer was ready
	}
	if status >= 400 {
		r.hub.c.HandshakeFailures++
	}
	b := make([]byte, 0, 160+len(body))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\n"...)
	if contentType != "" {
		b = append(b, "Content-Type: "...)
		b = append(b, contentType...)
		b = append(b, "\r\n"...)
	}
	b = append(b, extra...)
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\nConnection: close\r\n\r\n"...)
	b = append(b, body...)
	_, _ = r.conn.Write(b)
	delete(r.hub.handshakes, r.hc)
	if r.hc.later == r {
		r.hub.closeConn(r.conn) // the route has returned: close it here
	}
}

// Later lets the route return before answering: the connection waits, on
// the loop, for Respond or Error, or for Accept and Upgrade, which must then
// be called on the loop (Hub.Post). The handshake deadline still bounds the
// wait; a client that leaves first makes the answer a no-op (Accept reports
// false). What the client sends meanwhile is discarded: a WebSocket client
// waits for the 101 before it sends a frame.
func (r *Request) Later() { r.later = true }

// Error answers with a JSON body {"error":msg[,"parameter":param]}.
func (r *Request) Error(status int, msg, param string) {
	r.Respond(status, "application/json", AppendJSONError(nil, msg, param))
}

// AppendJSONError renders {"error":msg[,"parameter":param]}.
func AppendJSONError(dst []byte, msg, param string) []byte {
	dst = append(dst, `{"error":`...)
	dst = AppendJSONString(dst, msg)
	if param != "" {
		dst = append(dst, `,"parameter":`...)
		dst = AppendJSONString(dst, param)
	}
	return append(dst, '}')
}

// AppendJSONString appends s as a JSON string.
func AppendJSONString(dst []byte, s string) []byte {
	quoted, _ := json.Marshal(s) // a string always marshals
	return append(dst, quoted...)
}

// Accept lets gobwas/ws validate the handshake and compose the 101, before
// the route binds or attaches anything; a refusal is answered (in
// text/plain, as gobwas/ws writes it) and reported as false.
func (r *Request) Accept() ([]byte, bool) {
	if r.later && r.hc.gone {
		r.answered = true // the client left while the route waited
		return nil, false
	}
	var answer bytes.Buffer
	if _, err := (ws.Upgrader{}).Upgrade(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(r.head), &answer}); err != nil {
		r.answered = true
		r.hub.c.HandshakeFailures++
		r.hub.log.Info("refused websocket handshake", "peer", r.Peer, "err", err)
		_, _ = r.conn.Write(answer.Bytes())
		delete(r.hub.handshakes, r.hc)
		if r.hc.later == r {
			r.hub.closeConn(r.conn) // the route has returned: close it here
		}
		return nil, false
	}
	return answer.Bytes(), true
}

// Upgrade sends the 101 Accept composed and makes the connection a
// WebSocket endpoint with the given role.
func (r *Request) Upgrade(answer []byte, role WSRole, opts WSOptions) *WSConn {
	h := r.hub
	r.answered = true
	delete(h.handshakes, r.hc)
	_, _ = r.conn.Write(answer)
	c := &WSConn{role: role, maxMessage: opts.MaxMessage, readAt: h.now}
	c.Peer = r.Peer
	if a, ok := r.conn.RemoteAddr().(*net.TCPAddr); ok {
		c.IP = a.AddrPort().Addr().Unmap().WithZone("")
		c.IPText = []byte(c.IP.String())
	}
	c.init(h, r.conn, opts.Class, c, opts.Output)
	r.conn.SetContext(c)
	r.ws = c
	return c
}
