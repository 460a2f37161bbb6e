package rooms

import (
	"bytes"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/loop"
)

// roomPrefix is where clients open their WebSocket: /api/room/<name>.
const roomPrefix = "/api/room/"

// statusTryAgainLater (1013, registered with IANA after RFC 6455) closes a
// client the balancer cannot place right now: the web client reconnects
// for any code below 4000.
const statusTryAgainLater ws.StatusCode = 1013

// maxEdgeRegion bounds the Fly-Region header kept per client.
const maxEdgeRegion = 32

type clientState uint8

const (
	clientAuthing clientState = iota // upgraded, waiting for its auth message
	clientPlacing                    // authenticated, being placed (or refused)
	clientJoined                     // in its room
	clientGone
)

// client is a browser's WebSocket: a member of its room's channel once it
// has authenticated. Its Label is its id as a JSON string, which the link
// format puts in client_msg and leave.
type client struct {
	loop.Member
	k        *Kind
	c        *loop.WSConn
	id       string
	name     string // the room, as the client spelled it
	key      string
	edge     string // the Fly-Region header, for /api/state
	state    clientState
	deadline time.Time
	r        *room
	ch       *loop.Channel // the channel it joined
	// early holds what the client sent while its room was being placed
	// (a question to the placer replica, in a cluster), for the Monolith
	// once it has joined: at most maxEarlyMessages.
	early [][]byte
}

// maxEarlyMessages bounds what a client may send between its auth message
// and its join, which waits for the placer replica's answer in a cluster
// (a bus round trip, or its deadline). The web client sends a handful at
// most; past the bound it is closed to retry (1013).
const maxEarlyMessages = 16

// upgrade serves GET /api/room/<name> with Upgrade: websocket, on the
// loop. Refusals are answered before the upgrade: 400 for a bad name, 503
// with no Monolith or at the client cap.
func (k *Kind) upgrade(r *loop.Request) {
	h := k.hub
	name := strings.TrimPrefix(r.URL.Path, roomPrefix)
	if problem := nameProblem(name); problem != "" {
		k.c.UpgradesRefused[refusedBadName]++
		h.Log().Info("refused room client", "peer", r.Peer, "status", http.StatusBadRequest, "reason", problem)
		r.Error(http.StatusBadRequest, problem, "room")
		return
	}
	switch {
	case k.stopping:
		r.Error(http.StatusServiceUnavailable, "the balancer is stopping", "")
		return
	case len(k.up) == 0:
		k.c.UpgradesRefused[refusedNoMonolith]++
		k.rateLogs.noMonolith.log(k, "refused room clients: no Monolith connected", "last_peer", r.Peer)
		r.Error(http.StatusServiceUnavailable, "No monoliths available to handle request", "")
		return
	case k.nClients >= k.cfg.MaxClients:
		k.c.UpgradesRefused[refusedClientCap]++
		k.rateLogs.clients.log(k, "refused room clients: client cap reached", "limit", k.cfg.MaxClients, "last_peer", r.Peer)
		r.Error(http.StatusServiceUnavailable, "too many clients", "")
		return
	}
	answer, ok := r.Accept()
	if !ok {
		return
	}
	cl := &client{k: k, id: newUUID(), name: name, key: roomKey(name)}
	if edge := r.Header.Get("Fly-Region"); len(edge) <= maxEdgeRegion && utf8.ValidString(edge) {
		cl.edge = edge
	}
	cl.c = r.Upgrade(answer, cl, loop.WSOptions{
		Class:      k.clients,
		Output:     loop.Output{Format: loop.WSMessage, Limit: k.cfg.MaxClientPending, OnFull: loop.CutWhenFull},
		MaxMessage: k.cfg.MaxMessageBytes,
	})
	cl.Conn = &cl.c.Endpoint
	cl.IP, cl.IPText = cl.c.IP, cl.c.IPText
	cl.Label = loop.AppendJSONString(nil, cl.id)
	cl.deadline = h.Now().Add(k.cfg.AuthTimeout)
	k.clientByID[cl.id] = cl
	k.nClients++
	k.nAuthing++
	k.authing.Push(cl)
	k.debug("room client connected", "client", cl.id, "room", name, "peer", r.Peer)
}

// Message handles one client message: the auth message first, then JSON
// objects for the room.
func (cl *client) Message(c *loop.WSConn, text bool, payload []byte) {
	k := cl.k
	switch cl.state {
	case clientAuthing:
		if !text {
			cl.refuseAuth(authNotText)
			return
		}
		token, problem := parseAuth(payload)
		if problem != nil {
			cl.refuseAuth(problem)
			return
		}
		cl.state = clientPlacing
		k.nAuthing--
		k.join(cl, token)
	case clientPlacing:
		if !cl.acceptable(text, payload) {
			return
		}
		if len(cl.early) == maxEarlyMessages {
			k.c.EarlyOverflows++
			k.rateLogs.early.log(k, "room client sent too much before its room was placed: closing it so that it retries", "client", cl.id, "limit", maxEarlyMessages)
			c.EndWith(loop.EndSlow, statusTryAgainLater, "too many messages before the room was placed")
			return
		}
		cl.early = append(cl.early, bytes.Clone(payload))
	case clientJoined:
		if cl.acceptable(text, payload) {
			cl.forward(payload)
		}
	}
}

// acceptable reports whether a message of a client past auth is a JSON
// object; otherwise the client is closed.
func (cl *client) acceptable(text bool, payload []byte) bool {
	if !text && !utf8.Valid(payload) || !validObject(payload) {
		cl.k.c.ClientMessagesRefused++
		cl.c.EndWith(loop.EndMalformed, ws.StatusInvalidFramePayloadData, "message is not a JSON object")
		return false
	}
	return true
}

// forward sends a joined client's message to its room's Monolith.
func (cl *client) forward(payload []byte) {
	cl.k.c.ClientMessages++
	cl.ch.Publish(loop.MemberData, &cl.Member, true, payload)
}

func (cl *client) refuseAuth(p *authProblem) {
	k := cl.k
	k.c.AuthRefused[authReasonOf(p)]++
	reason := loop.EndMalformed
	switch p {
	case authNotAuth:
		reason = loop.EndRefused
	case authTooLarge:
		reason = loop.EndOversized
	}
	cl.c.EndWith(reason, ws.StatusCode(p.code), p.reason)
}

// join puts an authenticated client in its room: where the room is loaded,
// or on the Monolith the strategy picks (the room is mapped there at once,
// as a placeholder that any real load elsewhere beats); in a cluster the
// placer replica picks (cluster.go) and the client waits for its answer.
// The Monolith is sent join, then the client joins the room's channel.
func (k *Kind) join(cl *client, token []byte) {
	if k.rooms[cl.key] != nil {
		k.placeAndJoin(cl, token, nil)
		return
	}
	token = bytes.Clone(token) // the client's read buffer is gone by the answer
	k.whereNew(cl.name, true, func(m *monolith) {
		if cl.state == clientPlacing { // not gone meanwhile
			k.placeAndJoin(cl, token, m)
		}
	})
}

// placeAndJoin maps the client's room on m, unless it is mapped already,
// and joins the client to it.
func (k *Kind) placeAndJoin(cl *client, token []byte, m *monolith) {
	r := k.rooms[cl.key]
	if r == nil {
		if m == nil || m.state != linkUp {
			m = k.pick(cl.key)
		}
		if m == nil {
			k.c.AuthRefused[authNoMonolith]++
			k.rateLogs.noMonolith.log(k, "room client authenticated with no Monolith connected: closing it so that it retries", "client", cl.id)
			cl.c.EndWith(loop.EndRefused, statusTryAgainLater, "no Monolith available")
			return
		}
		if len(k.rooms) >= k.cfg.MaxRooms {
			k.c.RoomsRefused++
			k.rateLogs.rooms.log(k, "rooms cap reached: refusing a client of a new room", "limit", k.cfg.MaxRooms, "room", cl.name)
			cl.c.EndWith(loop.EndRefused, statusTryAgainLater, "too many rooms")
			return
		}
		r = k.mapRoom(cl.name, m, placeholderEpoch)
		k.c.Placements++
	}
	if r.ch == nil {
		ch, err := k.hub.OpenChannel(loop.Key{Kind: KindName, Name: r.key}, policy, r, k.cfg.MaxRooms)
		if err != nil {
			k.c.RoomsRefused++
			cl.c.EndWith(loop.EndRefused, statusTryAgainLater, "too many rooms")
			k.dropIfAbandoned(r)
			return
		}
		r.ch = ch
		ch.Attach(&r.up)
	}
	if r.ch.Members() >= k.cfg.MaxRoomClients {
		k.c.AuthRefused[authRoomFull]++
		k.rateLogs.roomFull.log(k, "room full: refusing a client", "room", r.name, "limit", k.cfg.MaxRoomClients)
		cl.c.EndWith(loop.EndRefused, statusTryAgainLater, "room full")
		return
	}
	k.c.Joins++
	cl.state, cl.r, cl.ch = clientJoined, r, r.ch
	k.scratch = appendJoin(k.scratch[:0], cl.name, cl.Label, token)
	r.m.send(k.scratch)
	r.ch.Join(&cl.Member)
	for _, msg := range cl.early {
		cl.forward(msg)
	}
	cl.early = nil
	k.debug("room client joined", "client", cl.id, "room", r.name, "monolith", r.m.id)
}

// Ended runs once when a client's connection ends, whichever side ended
// it: a client in a room leaves it (the Monolith is sent leave).
func (cl *client) Ended(_ *loop.WSConn, _ loop.EndReason) {
	k := cl.k
	was := cl.state
	cl.state = clientGone
	delete(k.clientByID, cl.id)
	k.nClients--
	if was == clientAuthing {
		k.nAuthing--
	}
	if was != clientJoined {
		return
	}
	k.c.Leaves++
	cl.ch.Leave(&cl.Member)
	if r := cl.r; r.ch == cl.ch && r.ch.Members() == 0 {
		r.ch = nil
		cl.ch.Close()
		k.dropIfAbandoned(r)
	}
	cl.r, cl.ch = nil, nil
}

// dropIfAbandoned forgets a room this balancer placed that no Monolith has
// reported loaded yet and that no client here waits for.
func (k *Kind) dropIfAbandoned(r *room) {
	if r.epoch == placeholderEpoch && r.ch == nil && k.rooms[r.key] == r {
		k.unmap(r, unmapAbandoned)
	}
}

// expireAuth closes clients whose auth message did not arrive in time,
// with 4004 as the original does.
func (k *Kind) expireAuth() {
	now := k.hub.Now()
	q := &k.authing
	for cl, ok := q.Front(); ok && !cl.deadline.After(now); cl, ok = q.Front() {
		q.Pop()
		if cl.state != clientAuthing {
			continue
		}
		k.c.AuthRefused[authTimeout]++
		cl.c.EndWith(loop.EndTimeout, 4004, "did not send auth token")
	}
}
