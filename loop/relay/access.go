package relay

import (
	_ "embed"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
)

// The access API, served by net/http off the loop (loop.Listener.ServeOther):
//
//	POST <access>/session/<topic>   a code for the topic (token in Authorization)
//	POST <access>/bids/deny?bid=&exp=   deny-list a booking (relay:admin)
//	POST <access>/bids/allow?bid=&exp=  undo it (relay:admin)
//	GET  <access>/bids/deny, /bids/allow  list them (relay:admin)
//	GET  <access>/status            the connections (relay:stats)
//	GET  <access>/                  the browser page
//
// Token checks and the deny list's disk store run here; codes, the deny
// list's copy and the connections are the loop's, reached through Do.

//go:embed page.html
var page []byte

// errorBody is a JSON error as practable's access API shapes it
// ({"code":"401","message":…}), with the reason this server adds.
func errorBody(status int, msg, reason string) []byte {
	b := []byte(`{"code":"`)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, `","message":`...)
	b = loop.AppendJSONString(b, msg)
	if reason != "" {
		b = append(b, `,"reason":`...)
		b = loop.AppendJSONString(b, reason)
	}
	return append(b, '}')
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (k *Kind) accessHandler() http.Handler { return http.HandlerFunc(k.serveAccess) }

func (k *Kind) serveAccess(w http.ResponseWriter, r *http.Request) {
	// Browsers on other origins (a booking system's pages) send the token
	// in a header, never a cookie: any origin may ask.
	w.Header().Set("Access-Control-Allow-Origin", "*")
	if r.Method == http.MethodOptions {
		w.Header().Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
		w.Header().Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	path := r.URL.Path
	if strings.HasPrefix(path, k.relayPath+"/session/") && r.Method == http.MethodGet {
		k.badRequest(w, r, http.StatusUpgradeRequired, "this is the relay's WebSocket: open it with a WebSocket upgrade")
		return
	}
	rest, ok := strings.CutPrefix(path, k.accessPath)
	if !ok || rest != "" && rest[0] != '/' {
		k.badRequest(w, r, http.StatusNotFound, "not found")
		return
	}
	switch {
	case rest == "" || rest == "/" || rest == "/index.html":
		if !k.method(w, r, http.MethodGet) {
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src * ws: wss:")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(page)
	case strings.HasPrefix(rest, "/session/"):
		if k.method(w, r, http.MethodPost) {
			k.session(w, r, strings.TrimPrefix(rest, "/session/"))
		}
	case rest == "/bids/deny" || rest == "/bids/allow":
		k.bids(w, r, rest == "/bids/deny")
	case rest == "/status":
		if k.method(w, r, http.MethodGet) {
			k.status(w, r)
		}
	default:
		if prefix, topic, ok := strings.Cut(strings.TrimPrefix(rest, "/"), "/"); ok && prefix != "" && topic != "" && r.Method == http.MethodPost {
			k.badRequest(w, r, http.StatusNotFound, "unknown prefix "+strconv.Quote(prefix)+": only session is served")
			return
		}
		k.badRequest(w, r, http.StatusNotFound, "not found")
	}
}

func (k *Kind) method(w http.ResponseWriter, r *http.Request, want string) bool {
	if r.Method == want {
		return true
	}
	w.Header().Set("Allow", want)
	k.badRequest(w, r, http.StatusMethodNotAllowed, "method not allowed: use "+want)
	return false
}

func (k *Kind) badRequest(w http.ResponseWriter, r *http.Request, status int, msg string) {
	k.badRequests.Add(1)
	k.log().Debug("refused relay access request", "peer", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "status", status)
	writeJSON(w, status, errorBody(status, msg, ""))
}

// authFailed answers a refused token, counted by reason and logged once
// per interval.
func (k *Kind) authFailed(w http.ResponseWriter, r *http.Request, status int, e *AuthError) {
	k.authFailures[e.Reason].Add(1)
	if n := k.refusedLog.due(time.Now()); n > 0 {
		k.log().Info("refused relay access", "peer", r.RemoteAddr, "path", r.URL.Path, "reason", string(e.Reason), "count", n)
	}
	writeJSON(w, status, errorBody(status, e.Message, string(e.Reason)))
}

func (k *Kind) log() *slog.Logger { return k.logger }

// unavailable answers when the loop is gone (the server is stopping).
func (k *Kind) unavailable(w http.ResponseWriter) {
	writeJSON(w, http.StatusServiceUnavailable, errorBody(http.StatusServiceUnavailable, "relay stopping", ""))
}

// session answers POST <access>/session/<topic>: the token is checked and
// a single-use code issued for it.
func (k *Kind) session(w http.ResponseWriter, r *http.Request, name string) {
	tp, err := ParseTopic(name)
	if err != nil {
		k.badRequest(w, r, http.StatusBadRequest, err.Error())
		return
	}
	claims, aerr := k.verifier.Verify(BearerToken(r.Header.Get("Authorization")), time.Now())
	if aerr != nil {
		k.authFailed(w, r, http.StatusUnauthorized, aerr)
		return
	}
	switch {
	case claims.Topic == "" || claims.Prefix == "" || len(claims.Scopes) == 0:
		k.authFailed(w, r, http.StatusUnauthorized, refuse(ReasonMissingClaims, "token missing a required claim (topic, prefix, scopes)"))
		return
	case claims.Prefix != PrefixSession:
		k.authFailed(w, r, http.StatusNotFound, refuse(ReasonPrefix, "unknown prefix %q: only session is served", claims.Prefix))
		return
	case claims.Topic != tp.Name:
		k.authFailed(w, r, http.StatusUnauthorized, refuse(ReasonTopic, "token wrong topic"))
		return
	case !claims.Has(ScopeRead) && !claims.Has(ScopeWrite):
		k.authFailed(w, r, http.StatusUnauthorized, refuse(ReasonScope, "token has neither the read nor the write scope"))
		return
	case claims.BookingID == "" && !k.cfg.AllowNoBookingID:
		k.authFailed(w, r, http.StatusBadRequest, refuse(ReasonNoBooking, "empty booking_id is not permitted"))
		return
	}
	g := &grant{code: k.newCode(), topic: tp.Name, read: claims.Has(ScopeRead), write: claims.Has(ScopeWrite),
		scopes: claims.Scopes, bid: claims.BookingID, exp: claims.ExpiresAt.Time}
	var status int
	var reason Reason
	var msg string
	if k.srv.Do(func(*loop.Hub) { status, reason, msg = k.issue(g) }) != nil {
		k.unavailable(w)
		return
	}
	if status != 0 {
		if reason != "" {
			k.log().Info("refused relay access", "peer", r.RemoteAddr, "reason", string(reason), "booking", g.bid)
		}
		writeJSON(w, status, errorBody(status, msg, string(reason)))
		return
	}
	uri := k.relayURL + "/session/" + (&url.URL{Path: tp.Name}).EscapedPath() + "?code=" + g.code
	b := []byte(`{"uri":`)
	b = loop.AppendJSONString(b, uri)
	writeJSON(w, http.StatusOK, append(b, '}'))
}

// scoped checks a token for an admin or stats request.
func (k *Kind) scoped(w http.ResponseWriter, r *http.Request, scope string) bool {
	claims, aerr := k.verifier.Verify(BearerToken(r.Header.Get("Authorization")), time.Now())
	if aerr != nil {
		k.authFailed(w, r, http.StatusUnauthorized, aerr)
		return false
	}
	if !claims.Has(scope) {
		k.authFailed(w, r, http.StatusUnauthorized, refuse(ReasonScope, "token missing the %s scope", scope))
		return false
	}
	return true
}

// maxBookingID bounds a booking id given to deny or allow.
const maxBookingID = 1024

// bids serves /bids/deny and /bids/allow.
func (k *Kind) bids(w http.ResponseWriter, r *http.Request, deny bool) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		k.badRequest(w, r, http.StatusMethodNotAllowed, "method not allowed: use GET or POST")
		return
	}
	if !k.scoped(w, r, ScopeAdmin) {
		return
	}
	if r.Method == http.MethodGet {
		topic := allowedTopic
		if deny {
			topic = deniedTopic
		}
		parts, err := k.gather(topic) // every replica's list, in a cluster
		if err != nil {
			k.unavailable(w)
			return
		}
		body, _ := json.Marshal(struct {
			BookingIDs []string `json:"booking_ids"`
		}{mergeLists(parts)})
		writeJSON(w, http.StatusOK, body)
		return
	}
	q := r.URL.Query()
	bid := q.Get("bid")
	expUnix, err := strconv.ParseInt(q.Get("exp"), 10, 64)
	now := time.Now()
	switch {
	case bid == "":
		k.badRequest(w, r, http.StatusBadRequest, "bid (booking id) missing")
		return
	case len(bid) > maxBookingID:
		k.badRequest(w, r, http.StatusBadRequest, "bid (booking id) too long")
		return
	case err != nil || expUnix <= now.Unix():
		k.badRequest(w, r, http.StatusBadRequest, "exp (booking expiry, unix seconds) missing, malformed or in the past")
		return
	}
	v, ok := k.decideAndApply(w, deny, bid, time.Unix(expUnix, 0), now)
	if !ok {
		return
	}
	k.spread(&v) // to the other replicas, in a cluster
	w.WriteHeader(http.StatusNoContent)
}

// decideAndApply makes an admin request's verdict, writes it to the store
// and applies it on the loop; it answers the request itself on failure.
func (k *Kind) decideAndApply(w http.ResponseWriter, deny bool, bid string, exp, now time.Time) (verdict, bool) {
	k.adminMu.Lock()
	defer k.adminMu.Unlock()
	var v verdict
	if k.srv.Do(func(*loop.Hub) { v = k.decide(deny, bid, exp) }) != nil {
		k.unavailable(w)
		return v, false
	}
	if k.store != nil {
		if _, err := k.store.put(&v, now); err != nil {
			k.log().Error("relay deny list: cannot write the store", "err", err)
			writeJSON(w, http.StatusInternalServerError, errorBody(http.StatusInternalServerError, "cannot record it: "+err.Error(), ""))
			return v, false
		}
	}
	if k.srv.Do(func(*loop.Hub) { k.apply(&v) }) != nil {
		k.unavailable(w)
		return v, false
	}
	return v, true
}

// Report is one connection in GET <access>/status, with practable's keys.
type Report struct {
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

func (k *Kind) status(w http.ResponseWriter, r *http.Request) {
	if !k.scoped(w, r, ScopeStats) {
		return
	}
	parts, err := k.gather(statusTopic) // every replica's connections, in a cluster
	if err != nil {
		k.unavailable(w)
		return
	}
	body, err := json.Marshal(mergeReports(parts))
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, errorBody(http.StatusInternalServerError, err.Error(), ""))
		return
	}
	writeJSON(w, http.StatusOK, body)
}
