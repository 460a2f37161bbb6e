package relay

import (
	"container/heap"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
)

// grant is what a code stands for: the token's rights, for one topic.
type grant struct {
	code        string
	topic       string
	read, write bool
	scopes      []string
	bid         string
	exp         time.Time // the token's expiry: the connection's
	expires     time.Time // the code's
}

// conn is what every relay connection shares, whatever its role: its
// rights, its booking and its expiry.
type conn struct {
	k           *Kind
	ws          *loop.WSConn
	topic       string
	read, write bool
	scopes      []string
	bid         string
	exp         time.Time
	since       time.Time
	agent       string
	forwarded   string
	pingAt      time.Time // when the last ping went out
	idx         int       // in the expiry heap; -1 once out of it
}

// client is a member of a relay topic.
type client struct {
	conn
	loop.Member
	t *topic
}

// Message publishes what a writer sends to every other reader of the
// topic, here and on other replicas; a client without write has its
// messages discarded and counted by Publish.
func (cl *client) Message(_ *loop.WSConn, text bool, payload []byte) {
	t := cl.t
	k := cl.k
	if cl.ReadOnly {
		t.ch.Publish(loop.MemberData, &cl.Member, text, payload)
		return
	}
	dropped := k.clients.Dropped
	t.ch.Publish(loop.MemberData, &cl.Member, text, payload)
	readers := uint64(t.readers)
	if !cl.WriteOnly {
		readers-- // never to itself
	}
	t.delivered(readers, k.clients.Dropped-dropped, len(payload))
	n := uint64(len(payload))
	k.c.messagesIn++
	k.c.bytesIn += n
	t.messages++
	t.bytes += n
}

// Ended takes the client off its topic.
func (cl *client) Ended(*loop.WSConn, loop.EndReason) {
	cl.k.forget(&cl.conn)
	cl.t.leave(&cl.Member)
}

// watcher is a client on a topic that names another kind's channel: an
// upstream of it in the driver protocol that changes nothing about it
// (loop.Upstream.Watcher). With write, its WRITE and CLOSE go to the
// channel's owner as a driver's would.
type watcher struct {
	conn
	d *driver.Driver
}

func (w *watcher) Message(c *loop.WSConn, text bool, payload []byte) {
	if !w.write || w.d.Channel() == nil || w.d.Channel().Owner() == nil {
		w.k.watchers.Discarded++
		return
	}
	if _, ok := w.d.Channel().Owner().(driver.Target); !ok {
		w.k.watchers.Discarded++
		return
	}
	if !text {
		w.k.c.watcherWrites++
	}
	w.d.Message(c, text, payload)
}

func (w *watcher) Ended(c *loop.WSConn, reason loop.EndReason) {
	w.k.forget(&w.conn)
	w.d.Ended(c, reason)
}

// nobody admits no member: a watcher without read hears nothing.
type nobody struct{}

func (nobody) Admits(*loop.Member) bool { return false }

// forget drops a connection that ended from the kind's records.
func (k *Kind) forget(c *conn) {
	delete(k.conns, c)
	if c.idx >= 0 {
		heap.Remove(&k.expiry, c.idx)
	}
}

// connect serves the WebSocket at <relay base>/session/<topic>?code=…: the
// code is checked, and the topic opened or the channel found, before the
// 101; any refusal is JSON.
func (k *Kind) connect(r *loop.Request) {
	h := k.hub
	if r.Method != http.MethodGet {
		k.refuseRequest(r, http.StatusMethodNotAllowed, "use GET with a WebSocket upgrade", "")
		return
	}
	name := strings.TrimPrefix(r.URL.Path, k.relayPath+"/session/")
	tp, err := ParseTopic(name)
	if err != nil {
		k.refuseRequest(r, http.StatusBadRequest, err.Error(), "bad_topic")
		return
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		k.refuseRequest(r, http.StatusBadRequest, "invalid query string", "bad_query")
		return
	}
	code := query.Get("code")
	if node, ok := k.codeNode(code); ok && node != h.Node() {
		k.redeemElsewhere(r, tp, code, node)
		return
	}
	outcome, g := k.takeCode(code)
	k.admit(r, tp, outcome, g)
}

// takeCode redeems a code issued here: it is used up, whatever follows.
func (k *Kind) takeCode(code string) (outcome uint8, g *grant) {
	g = k.codes[code]
	switch {
	case code == "" || g == nil:
		return redeemUnknown, nil
	case !g.expires.After(k.hub.Now()):
		delete(k.codes, code)
		k.c.codesExpired++
		return redeemExpired, nil
	}
	delete(k.codes, code) // single use, whatever follows
	k.c.codesUsed++
	return redeemOK, g
}

// admit answers a connection once its code has been redeemed (here, or by
// the replica that issued it): the grant's checks, then the upgrade.
func (k *Kind) admit(r *loop.Request, tp Topic, outcome uint8, g *grant) {
	h := k.hub
	now := h.Now()
	switch outcome {
	case redeemUnknown:
		k.refuseConn(r, http.StatusUnauthorized, ReasonCode, "code missing, unknown or already used")
		return
	case redeemExpired:
		k.refuseConn(r, http.StatusUnauthorized, ReasonCodeExpired, "code expired")
		return
	}
	switch {
	case g.topic != tp.Name:
		k.refuseConn(r, http.StatusUnauthorized, ReasonTopic, "code is for another topic")
		return
	case !g.exp.After(now):
		k.refuseConn(r, http.StatusUnauthorized, ReasonExpired, "token expired")
		return
	case k.isDenied(g.bid, now):
		k.refuseConn(r, http.StatusUnauthorized, ReasonDenied, "booking deny-listed")
		return
	case h.Stopping():
		k.refuseRequest(r, http.StatusServiceUnavailable, "server shutting down", "")
		return
	case len(k.conns) >= k.cfg.MaxConns:
		k.refuseRequest(r, http.StatusServiceUnavailable, "too many relay connections", "conn_cap")
		return
	}
	var ch *loop.Channel
	if tp.Watches() {
		if ch = h.Channel(loop.Key{Kind: tp.Kind, Name: tp.Channel}); ch == nil || tp.Kind == KindName {
			k.refuseRequest(r, http.StatusNotFound, "no such channel open: "+tp.Name, "no_channel")
			return
		}
	}
	answer, ok := r.Accept()
	if !ok {
		return
	}
	c := conn{k: k, topic: tp.Name, read: g.read, write: g.write, scopes: g.scopes, bid: g.bid,
		exp: g.exp, since: time.Now(), agent: r.UserAgent(), forwarded: r.Header.Get("X-Forwarded-For"), idx: -1}
	var role interface {
		loop.WSRole
		base() *conn
	}
	if tp.Watches() {
		w := &watcher{conn: c, d: driver.New(ownerTarget(ch), "relay")}
		w.ws = r.Upgrade(answer, w, k.wsOptions(k.watchers, driver.Format))
		w.d.Conn = w.ws
		w.d.Upstream = loop.Upstream{Out: &w.ws.Endpoint, Watcher: true}
		if !w.read {
			w.d.Upstream.Filter = nobody{}
		}
		ch.Attach(&w.d.Upstream)
		role = w
	} else {
		t := k.topicFor(tp.Name)
		if t == nil {
			k.refuseRequest(r, http.StatusServiceUnavailable, "too many relay topics", "topic_cap")
			return
		}
		cl := &client{conn: c, t: t}
		cl.ws = r.Upgrade(answer, cl, k.wsOptions(k.clients, loop.WSMessage))
		k.nextID++
		cl.Member = loop.Member{ID: h.IDBase() | k.nextID, IP: cl.ws.IP, IPText: cl.ws.IPText, Conn: &cl.ws.Endpoint,
			ReadOnly: !cl.write, WriteOnly: !cl.read}
		t.join(&cl.Member)
		role = cl
	}
	b := role.base()
	k.conns[b] = struct{}{}
	heap.Push(&k.expiry, b)
	h.Log().Debug("relay connection", "topic", tp.Name, "peer", r.Peer, "read", b.read, "write", b.write,
		"booking", b.bid, "expires", b.exp.UTC().Format(time.RFC3339))
}

func (c *conn) base() *conn { return c }

func (k *Kind) wsOptions(class *loop.Class, f *loop.Format) loop.WSOptions {
	return loop.WSOptions{Class: class, MaxMessage: k.cfg.MaxMessageBytes,
		Output: loop.Output{Format: f, Limit: k.cfg.MaxPending, OnFull: loop.DropWhenFull}}
}

// ownerTarget is the channel's owner as a driver target, or nil.
func ownerTarget(ch *loop.Channel) driver.Target {
	t, _ := ch.Owner().(driver.Target)
	return t
}

// refuseConn answers a connection refused for its code or token.
func (k *Kind) refuseConn(r *loop.Request, status int, reason Reason, msg string) {
	k.authFailures[reason].Add(1)
	if n := k.refusedLog.due(k.hub.Now()); n > 0 {
		k.hub.Log().Info("refused relay connection", "peer", r.Peer, "reason", string(reason), "count", n)
	}
	r.Respond(status, "application/json", errorBody(status, msg, string(reason)))
}

// refuseRequest answers a request refused for something other than its
// credentials.
func (k *Kind) refuseRequest(r *loop.Request, status int, msg, reason string) {
	k.badRequests.Add(1)
	k.hub.Log().Debug("refused relay request", "peer", r.Peer, "status", status, "message", msg)
	r.Respond(status, "application/json", errorBody(status, msg, reason))
}

func (k *Kind) isDenied(bid string, now time.Time) bool {
	exp, ok := k.denied[bid]
	return ok && exp.After(now)
}

// issue stores a code on the loop; it reports why not (0: issued).
func (k *Kind) issue(g *grant) (int, Reason, string) {
	now := k.hub.Now()
	if k.isDenied(g.bid, now) {
		k.authFailures[ReasonDenied].Add(1)
		return http.StatusBadRequest, ReasonDenied, "booking deny-listed, probably because the session was cancelled"
	}
	if len(k.codes) >= k.cfg.MaxCodes {
		k.c.codesRefused++
		return http.StatusServiceUnavailable, "", "too many codes outstanding"
	}
	g.expires = now.Add(k.cfg.CodeTTL)
	k.codes[g.code] = g
	if len(k.codeQueue) >= 2*k.cfg.MaxCodes {
		// Codes used since they were queued are still in the queue: keep
		// only the outstanding ones, so that it stays within its bound.
		live := k.codeQueue[:0]
		for _, q := range k.codeQueue {
			if k.codes[q.code] == q {
				live = append(live, q)
			}
		}
		clear(k.codeQueue[len(live):])
		k.codeQueue = live
	}
	k.codeQueue = append(k.codeQueue, g)
	k.c.codesIssued++
	if g.bid != "" {
		if exp := k.allowed[g.bid]; g.exp.After(exp) {
			k.allowed[g.bid] = g.exp
		}
	}
	return 0, "", ""
}

// expireCodes drops the codes whose lifetime is over.
func (k *Kind) expireCodes(now time.Time) {
	n := 0
	for _, g := range k.codeQueue {
		if g.expires.After(now) {
			break
		}
		if k.codes[g.code] == g {
			delete(k.codes, g.code)
			k.c.codesExpired++
		}
		n++
	}
	if n > 0 {
		clear(k.codeQueue[:n])
		k.codeQueue = k.codeQueue[n:]
		if len(k.codeQueue) == 0 {
			k.codeQueue = nil
		}
	}
}

// deny deny-lists a booking on the loop: its unused codes are voided and
// its live connections closed at once, with a close frame saying why.
func (k *Kind) deny(bid string, exp time.Time) {
	k.denied[bid] = exp
	delete(k.allowed, bid)
	k.c.bookingsDenied++
	for code, g := range k.codes {
		if g.bid == bid {
			delete(k.codes, code)
			k.c.codesVoided++
		}
	}
	for c := range k.conns {
		if c.bid == bid {
			k.c.connsDenied++
			c.ws.End(loop.EndDenied, "booking cancelled (deny-listed)")
		}
	}
	k.hub.Log().Info("relay booking deny-listed", "booking", bid, "until", exp.UTC().Format(time.RFC3339))
}

// allow undoes a deny and records the booking as allowed until exp.
func (k *Kind) allow(bid string, exp time.Time) {
	delete(k.denied, bid)
	if exp.After(k.allowed[bid]) {
		k.allowed[bid] = exp
	}
	k.hub.Log().Info("relay booking allowed", "booking", bid)
}

// expiryHeap orders connections by token expiry.
type expiryHeap []*conn

func (x expiryHeap) Len() int           { return len(x) }
func (x expiryHeap) Less(i, j int) bool { return x[i].exp.Before(x[j].exp) }
func (x expiryHeap) Swap(i, j int) {
	x[i], x[j] = x[j], x[i]
	x[i].idx, x[j].idx = i, j
}
func (x *expiryHeap) Push(v any) {
	c := v.(*conn)
	c.idx = len(*x)
	*x = append(*x, c)
}
func (x *expiryHeap) Pop() any {
	old := *x
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*x = old[:len(old)-1]
	c.idx = -1
	return c
}
