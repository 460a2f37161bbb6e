package loop

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/codec"
)

// httpConn is a connection that has not finished its request head.
type httpConn struct {
	born time.Time
	peer string
}

func newHTTPConn(c net.Conn) *httpConn {
	return &httpConn{born: time.Now(), peer: c.RemoteAddr().String()}
}

func (st *state) openHTTP(c gnet.Conn, h *httpConn) gnet.Action {
	if st.s.stopping.Load() {
		return gnet.Close
	}
	if len(st.handshakes) >= st.cfg.MaxHandshakes {
		st.c.HandshakesRefused++
		st.handshakeFlood.note(st, h.peer)
		return gnet.Close
	}
	st.handshakes[h] = c
	return gnet.None
}

func (st *state) closeHTTP(h *httpConn) {
	delete(st.handshakes, h)
}

// httpTraffic buffers the request head (gnet keeps unread bytes for us) and
// answers it once complete.
func (st *state) httpTraffic(c gnet.Conn, h *httpConn) gnet.Action {
	buf, _ := c.Peek(-1)
	headLen, err := codec.RequestHeadLength(buf, st.cfg.MaxHeadBytes)
	switch {
	case errors.Is(err, codec.ErrHeadTooLarge):
		st.c.HeadTooLarge++
		return st.refuse(c, h, http.StatusRequestHeaderFieldsTooLarge, "request head too large")
	case err != nil:
		return st.refuse(c, h, http.StatusBadRequest, "malformed request")
	case headLen == 0:
		return gnet.None
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(buf[:headLen])))
	if err != nil {
		return st.refuse(c, h, http.StatusBadRequest, "malformed request")
	}
	head := buf[:headLen]
	action := st.route(c, h, req, head)
	if action == gnet.None {
		// Upgraded: frames the client sent right behind its head are ours now.
		_, _ = c.Discard(headLen)
		if c.InboundBuffered() > 0 {
			return st.driverTraffic(c, c.Context().(*driver))
		}
	}
	return action
}

const (
	basePath   = "/api/dispatch/v1"
	legacyPath = "/api/server"
)

// route answers one request. It returns gnet.None only when the connection
// was upgraded to a driver session.
func (st *state) route(c gnet.Conn, h *httpConn, req *http.Request, head []byte) gnet.Action {
	path := req.URL.Path
	var rest string
	switch {
	case strings.HasPrefix(path, basePath):
		rest = path[len(basePath):]
	case strings.HasPrefix(path, legacyPath):
		rest = path[len(legacyPath):]
	default:
		return st.refuse(c, h, http.StatusNotFound, "not found")
	}
	if req.Method != http.MethodGet {
		return st.refuse(c, h, http.StatusNotFound, "not found")
	}
	switch rest {
	case "/healthz":
		return st.respond(c, h, http.StatusOK, "", nil)
	case "/version":
		return st.respond(c, h, http.StatusOK, "application/json", st.versionJSON())
	case "", "/":
		if !st.authorised(req) {
			return st.unauthorised(c, h)
		}
		return st.respond(c, h, http.StatusOK, "application/json", st.statsJSON())
	case "/tcp_dispatch":
		return st.upgradeDriver(c, h, req, head, protoTCP)
	case "/udp_dispatch":
		return st.upgradeDriver(c, h, req, head, protoUDP)
	case "/group_dispatch":
		return st.upgradeGroupDriver(c, h, req, head)
	case "/groups":
		if !st.authorised(req) {
			return st.unauthorised(c, h)
		}
		return st.respond(c, h, http.StatusOK, "application/json", st.groupsJSON())
	}
	return st.refuse(c, h, http.StatusNotFound, "not found")
}

// authorised reads the token as the original does: the Authorization header
// wins whenever it is present, even empty; otherwise the bearer_token query.
func (st *state) authorised(req *http.Request) bool {
	var token string
	if values, present := req.Header["Authorization"]; present {
		token = strings.TrimRight(strings.TrimPrefix(values[0], "Bearer "), " \t\r\n")
	} else {
		token = strings.TrimSpace(req.URL.Query().Get("bearer_token"))
	}
	// Comparing digests keeps the comparison constant-time in the length too.
	sum := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(sum[:], st.s.secretSum[:]) == 1
}

func (st *state) unauthorised(c gnet.Conn, h *httpConn) gnet.Action {
	st.log.Info("refused request: invalid token", "peer", h.peer)
	st.c.HandshakeFailures++
	return st.respond(c, h, http.StatusUnauthorized, "application/json", []byte(`{"error":"invalid authorisation token"}`))
}

// upgradeRequest runs the checks every upgrade route shares: the token, the
// Upgrade header, a parsable query. Unless it returns gnet.None, the request
// has been answered; param names the parameter a bad query is blamed on.
func (st *state) upgradeRequest(c gnet.Conn, h *httpConn, req *http.Request, param string) (url.Values, gnet.Action) {
	if !st.authorised(req) {
		return nil, st.unauthorised(c, h)
	}
	if !headerHasToken(req.Header, "Upgrade", "websocket") {
		st.c.HandshakeFailures++
		return nil, st.respondHeaders(c, h, http.StatusUpgradeRequired, "text/plain",
			"Upgrade: websocket\r\n", []byte("This service requires use of the WebSocket protocol"))
	}
	query, err := url.ParseQuery(req.URL.RawQuery)
	if err != nil {
		return nil, st.paramError(c, h, http.StatusBadRequest, param, "invalid query string")
	}
	return query, gnet.None
}

// upgradeDriver validates a dispatch request, binds the device port if this
// is its first session, and only then answers 101.
func (st *state) upgradeDriver(c gnet.Conn, h *httpConn, req *http.Request, head []byte, p proto) gnet.Action {
	query, refused := st.upgradeRequest(c, h, req, "port")
	if refused != gnet.None {
		return refused
	}
	portValues, ok := query["port"]
	if !ok {
		return st.paramError(c, h, http.StatusUnprocessableEntity, "port", "missing required parameter 'port'")
	}
	acceptValues, ok := query["accept"]
	if !ok {
		return st.paramError(c, h, http.StatusUnprocessableEntity, "accept", "missing required parameter 'accept'")
	}
	port, err := strconv.Atoi(strings.TrimSpace(portValues[0]))
	if err != nil || port < 1 || port > 65535 {
		return st.paramError(c, h, http.StatusBadRequest, "port", "invalid parameter value for 'port'")
	}
	accept, err := parseAcceptList(acceptValues[0])
	if err != nil {
		return st.paramError(c, h, http.StatusBadRequest, "accept", "invalid parameter value for 'accept'")
	}

	// The 101 is composed before the port is bound, and sent after.
	answer, ok := st.websocketAnswer(c, h, head)
	if !ok {
		return gnet.Close
	}

	ch, err := st.channelFor(p, port)
	if err != nil {
		st.c.HandshakeFailures++
		st.log.Warn("cannot open device port", "proto", p.String(), "port", port, "peer", h.peer, "err", err)
		body := appendJSONError(nil, err.Error(), "port")
		return st.respond(c, h, http.StatusConflict, "application/json", body)
	}
	st.attachDriver(c, h, req, answer, accept, ch)
	return gnet.None
}

// websocketAnswer lets gobwas/ws validate the handshake and compose the 101
// before anything is bound or attached; a refusal is answered and reported as false.
func (st *state) websocketAnswer(c gnet.Conn, h *httpConn, head []byte) ([]byte, bool) {
	var answer bytes.Buffer
	if _, err := (ws.Upgrader{}).Upgrade(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(head), &answer}); err != nil {
		st.c.HandshakeFailures++
		st.log.Info("refused websocket handshake", "peer", h.peer, "err", err)
		_, _ = c.Write(answer.Bytes())
		delete(st.handshakes, h)
		return nil, false
	}
	return answer.Bytes(), true
}

// attachDriver completes an upgrade: the 101 goes out and the connection
// becomes a driver session on ch.
func (st *state) attachDriver(c gnet.Conn, h *httpConn, req *http.Request, answer []byte, accept acceptList, ch *channel) *driver {
	delete(st.handshakes, h)
	_, _ = c.Write(answer)
	d := &driver{
		sink:   sink{conn: c},
		peer:   h.peer,
		accept: accept,
		module: req.Header.Get("X-Module-ID"),
	}
	c.SetContext(d)
	st.registerDriver(d, ch)
	return d
}

func (st *state) paramError(c gnet.Conn, h *httpConn, status int, param, msg string) gnet.Action {
	st.c.HandshakeFailures++
	st.log.Info("refused dispatch request", "peer", h.peer, "status", status, "parameter", param)
	return st.respond(c, h, status, "application/json", appendJSONError(nil, msg, param))
}

// refuse answers a request the server will not serve, with a JSON body.
func (st *state) refuse(c gnet.Conn, h *httpConn, status int, msg string) gnet.Action {
	st.c.HandshakeFailures++
	st.log.Debug("refused request", "peer", h.peer, "status", status, "reason", msg)
	return st.respond(c, h, status, "application/json", appendJSONError(nil, msg, ""))
}

func (st *state) respond(c gnet.Conn, h *httpConn, status int, contentType string, body []byte) gnet.Action {
	return st.respondHeaders(c, h, status, contentType, "", body)
}

// respondHeaders writes a complete response and closes the connection:
// plain requests are rare (health checks, stats), so keep-alive buys nothing.
func (st *state) respondHeaders(c gnet.Conn, h *httpConn, status int, contentType, extra string, body []byte) gnet.Action {
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
	_, _ = c.Write(b)
	delete(st.handshakes, h)
	return gnet.Close
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

// appendJSONError renders {"error":msg[,"parameter":param]}.
func appendJSONError(dst []byte, msg, param string) []byte {
	dst = append(dst, `{"error":`...)
	dst = appendJSONString(dst, msg)
	if param != "" {
		dst = append(dst, `,"parameter":`...)
		dst = appendJSONString(dst, param)
	}
	return append(dst, '}')
}

func (st *state) versionJSON() []byte {
	v := st.cfg.Version
	b := []byte(`{"service":"dispatch","commit":`)
	b = appendJSONString(b, v.Commit)
	b = append(b, `,"version":`...)
	b = appendJSONString(b, v.Version)
	b = append(b, `,"build_time":`...)
	b = appendJSONString(b, v.BuildTime)
	b = append(b, `,"platform_version":`...)
	b = appendJSONString(b, v.PlatformVersion)
	return append(b, '}')
}

func appendJSONString(dst []byte, s string) []byte {
	quoted, _ := json.Marshal(s) // a string always marshals
	return append(dst, quoted...)
}
