package rooms

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/loop"
)

// target is one Monolith address (its balancing port) that discovery
// names: the balancer keeps one link to it, re-dialling as the original
// does: a failed connection or handshake after ConnectRetry, an ended link
// after ReconnectDelay, for as long as discovery lists it.
type target struct {
	addr    string
	host    string // for the Monolith's HTTP address
	manual  bool   // listed by --rooms-monoliths
	dns     bool   // listed by the latest DNS answer
	link    *monolith
	retryAt time.Time // when idle: the next dial
	failing bool      // its last attempt failed: the next failure is not logged again
	fails   int       // failed attempts in a row
}

func (t *target) wanted() bool { return t.manual || t.dns }

type linkState uint8

const (
	linkDialing     linkState = iota // connection or WebSocket handshake under way
	linkHandshaking                  // waiting for the Monolith's init
	linkUp                           // handshake done: it holds rooms
	linkGone
)

// monolith is one link to a Monolith. It is the link's WSRole, and its
// endpoint is the upstream of the channels of the rooms placed there.
type monolith struct {
	k        *Kind
	t        *target
	c        *loop.WSConn
	self     loop.Member // the link as Hub.Send addresses it: the balancer's own messages
	state    linkState
	deadline time.Time // linkHandshaking: for the Monolith's init
	id       string
	region   string
	httpURL  *url.URL
	rooms    map[string]*room
	upAt     time.Time
	messages uint64
}

// syncTargets makes the targets what discovery lists: new addresses are
// dialled at once, addresses no longer listed are dropped (an open link to
// one is closed, and its rooms unmapped).
func (k *Kind) syncTargets() {
	for _, t := range k.targets {
		t.manual, t.dns = false, false
	}
	list := func(addrs []string, dns bool) {
		for _, addr := range addrs {
			t := k.targets[addr]
			if t == nil {
				if len(k.targets) >= maxMonoliths {
					k.rateLogs.monoliths.log(k, "too many Monoliths discovered: ignoring the rest", "limit", maxMonoliths, "addr", addr)
					continue
				}
				host, _, _ := net.SplitHostPort(addr)
				t = &target{addr: addr, host: host}
				k.targets[addr] = t
				k.dial(t)
			}
			if dns {
				t.dns = true
			} else {
				t.manual = true
			}
		}
	}
	list(k.cfg.Monoliths, false)
	list(k.dnsAddrs, true)
	for addr, t := range k.targets {
		if t.wanted() {
			continue
		}
		k.hub.Log().Info("Monolith no longer discovered, dropping it", "addr", addr)
		if t.link == nil {
			delete(k.targets, addr)
		} else if t.link.c != nil {
			t.link.c.EndWith(loop.EndRefused, ws.StatusNormalClosure, "no longer discovered")
		}
		// A dial under way finds the target unwanted when it completes.
	}
}

// tickTargets dials idle targets whose retry is due and ends handshakes
// past their deadline.
func (k *Kind) tickTargets() {
	now := k.hub.Now()
	for _, t := range k.targets {
		switch {
		case t.link == nil && !t.retryAt.After(now):
			k.dial(t)
		case t.link != nil && t.link.state == linkHandshaking && !t.link.deadline.After(now):
			k.c.LinkAttempts[attemptHandshakeFailed]++
			t.link.c.EndWith(loop.EndTimeout, 4000, "did not send init")
		}
	}
}

// dial starts one connection to a target.
func (k *Kind) dial(t *target) {
	if k.stopping {
		return
	}
	m := &monolith{k: k, t: t, rooms: make(map[string]*room)}
	t.link = m
	k.hub.DialWS(loop.DialOptions{
		URL:     "ws://" + t.addr + "/",
		Timeout: k.cfg.InitTimeout,
		Role:    m,
		WS: loop.WSOptions{
			Class:      k.links,
			Output:     loop.Output{Format: linkFormat, Limit: k.cfg.MaxLinkPending, OnFull: loop.PauseWhenFull},
			MaxMessage: k.cfg.MaxLinkMessageBytes,
		},
	}, m.dialled)
}

// dialled runs on the loop when the connection is made or has failed.
func (m *monolith) dialled(c *loop.WSConn, err error) {
	k, t := m.k, m.t
	if err != nil {
		m.state = linkGone
		t.link = nil
		k.c.LinkAttempts[attemptConnectFailed]++
		k.retry(t, k.cfg.ConnectRetry, "cannot connect to Monolith", err.Error())
		return
	}
	m.c = c
	if k.stopping || !t.wanted() {
		c.End(loop.EndShutdown, "")
		return
	}
	m.self.Conn = &c.Endpoint
	m.state = linkHandshaking
	m.deadline = k.hub.Now().Add(k.cfg.InitTimeout)
	k.scratch = appendInit(k.scratch[:0], k.id, k.cfg.InitToken)
	m.send(k.scratch)
	k.debug("connected to Monolith, waiting for its init", "addr", t.addr)
}

// retry schedules the next dial of a target, logging a failure once per
// episode of failures.
func (k *Kind) retry(t *target, after time.Duration, msg, detail string) {
	if !t.wanted() {
		delete(k.targets, t.addr)
		return
	}
	t.retryAt = k.hub.Now().Add(after)
	t.fails++
	if !t.failing {
		t.failing = true
		k.hub.Log().Warn(msg+", retrying", "addr", t.addr, "detail", detail, "retry_in", after.String())
	}
}

// send queues one of the balancer's own messages on the link.
func (m *monolith) send(msg []byte) {
	if m.c != nil {
		m.k.hub.Send(&m.self, true, msg)
	}
}

// Message handles one message from the Monolith, in the order it sent
// them: init first, then the rest.
func (m *monolith) Message(c *loop.WSConn, text bool, payload []byte) {
	k := m.k
	m.messages++
	if !text {
		k.c.LinkMessagesRefused++
		k.rateLogs.badMessage.log(k, "Monolith sent a binary message: ignored", "monolith", m.id, "addr", m.t.addr)
		return
	}
	env, err := parseEnvelope(payload)
	if m.state == linkHandshaking {
		m.handshake(env, err)
		return
	}
	if err != nil {
		m.refuse("malformed message", err.Error())
		return
	}
	switch string(env.typ) {
	case "loaded":
		k.c.LinkMessages[msgLoaded]++
		ri, err := parseLoaded(env.payload)
		if err != nil {
			m.refuse("malformed loaded", err.Error())
			return
		}
		k.addOrSync(m, ri)
	case "unloaded":
		k.c.LinkMessages[msgUnloaded]++
		name, err := parseUnloaded(env.payload)
		if err != nil {
			m.refuse("malformed unloaded", err.Error())
			return
		}
		if r := k.rooms[roomKey(name)]; r != nil && r.m == m {
			k.unmap(r, unmapUnloaded)
		}
	case "gossip":
		k.c.LinkMessages[msgGossip]++
		m.gossip(env.payload)
	case "room_msg":
		k.c.LinkMessages[msgRoomMsg]++
		m.roomMsg(env.payload)
	case "kick":
		k.c.LinkMessages[msgKick]++
		m.kick(env.payload)
	case "init":
		m.refuse("second init", "")
	default:
		k.c.LinkMessages[msgOther]++
		k.rateLogs.badMessage.log(k, "Monolith sent a message of a type the balancer does not know: ignored",
			"monolith", m.id, "type", string(env.typ))
	}
}

// refuse counts and logs a Monolith message that cannot be applied; the
// link goes on (closing it would disturb every client it carries).
func (m *monolith) refuse(what, detail string) {
	k := m.k
	k.c.LinkMessagesRefused++
	k.rateLogs.badMessage.log(k, "Monolith sent a message the balancer cannot apply: ignored", "monolith", m.id,
		"addr", m.t.addr, "problem", what, "detail", detail)
}

// handshake checks the Monolith's init: the first message, within
// InitTimeout, carrying the shared token when one is configured. A failed
// handshake closes the link and is retried after ConnectRetry.
func (m *monolith) handshake(env envelope, err error) {
	k := m.k
	fail := func(reason loop.EndReason, code ws.StatusCode, text string) {
		k.c.LinkAttempts[attemptHandshakeFailed]++
		m.c.EndWith(reason, code, text)
	}
	if err != nil || string(env.typ) != "init" {
		fail(loop.EndMalformed, ws.StatusProtocolError, "first message is not init")
		return
	}
	in, err := parseInit(env.payload)
	if err != nil {
		fail(loop.EndMalformed, ws.StatusProtocolError, "bad init: "+err.Error())
		return
	}
	if tok := k.cfg.InitToken; tok != "" {
		got, _ := stringOf(in.token)
		a, b := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(tok))
		if in.token == nil || subtle.ConstantTimeCompare(a[:], b[:]) != 1 {
			fail(loop.EndDenied, ws.StatusPolicyViolation, "init token")
			return
		}
	}
	if other := k.byID[in.id]; other != nil {
		fail(loop.EndRefused, ws.StatusPolicyViolation, "a Monolith with this id is already connected")
		return
	}
	m.id, m.region = in.id, in.region
	m.httpURL = &url.URL{Scheme: "http", Host: net.JoinHostPort(m.t.host, strconv.Itoa(in.port))}
	m.state = linkUp
	m.upAt = k.hub.Now()
	k.byID[m.id] = m
	k.up = append(k.up, m)
	k.ring = nil
	k.c.LinkMessages[msgInit]++
	k.c.LinkAttempts[attemptConnected]++
	t := m.t
	if t.failing {
		k.hub.Log().Info("Monolith reachable again", "addr", t.addr, "failed_attempts", t.fails)
	}
	t.failing, t.fails = false, 0
	k.hub.Log().Info("Monolith connected", "addr", t.addr, "id", m.id, "region", m.region, "http", m.httpURL.String())
}

// gossip applies a Monolith's full list of loaded rooms as a diff against
// what the balancer holds for it: listed rooms are added or synced, rooms
// it no longer lists are unmapped, except a placeholder whose clients wait
// for it to load (their join may have crossed the gossip on the wire).
func (m *monolith) gossip(payload []byte) {
	k := m.k
	listed := make(map[string]bool, len(m.rooms))
	err := parseGossip(payload, func(ri roomInfo) error {
		listed[roomKey(ri.name)] = true
		k.addOrSync(m, ri)
		return nil
	})
	if err != nil {
		m.refuse("malformed gossip", err.Error())
		return
	}
	for key, r := range m.rooms {
		if listed[key] || r.epoch == placeholderEpoch && r.ch != nil {
			continue
		}
		k.unmap(r, unmapGossip)
	}
}

// roomMsg carries a Monolith's message to one client of the room or to all
// of them. The payload goes out as it arrived; a broadcast is encoded once
// for every client of the room.
func (m *monolith) roomMsg(payload []byte) {
	k := m.k
	msg, err := parseRoomMsg(payload)
	if err != nil {
		m.refuse("malformed room_msg", err.Error())
		return
	}
	if msg.client != nil {
		cl := k.clientByID[string(msg.client)]
		if cl == nil || cl.state != clientJoined || cl.r.m != m {
			m.unrouted("room_msg for a client that is not on this link", string(msg.client))
			return
		}
		k.c.Unicasts++
		k.hub.Send(&cl.Member, true, msg.payload)
		return
	}
	k.keyScratch = appendRoomKey(k.keyScratch[:0], msg.room)
	r := m.rooms[string(k.keyScratch)]
	if r == nil || r.ch == nil {
		m.unrouted("room_msg for a room with no client here", string(msg.room))
		return
	}
	k.c.Broadcasts++
	r.ch.Broadcast(true, msg.payload)
}

// unrouted counts a message for a client or room that is not there (it
// left while the message was on its way, usually) and logs it once per
// episode.
func (m *monolith) unrouted(what, target string) {
	k := m.k
	k.c.Unrouted++
	k.rateLogs.unrouted.logAt(k, slog.LevelInfo, "Monolith message dropped: "+what, "monolith", m.id, "target", target)
}

// kick closes one client with the code the Monolith gives.
func (m *monolith) kick(payload []byte) {
	k := m.k
	id, code, err := parseKick(payload)
	if err != nil {
		m.refuse("malformed kick", err.Error())
		return
	}
	cl := k.clientByID[string(id)]
	if cl == nil || cl.state != clientJoined || cl.r.m != m {
		m.unrouted("kick for a client that is not on this link", string(id))
		return
	}
	k.c.Kicks++
	status := ws.StatusCode(code)
	if code >= 5000 || ws.CheckCloseFrameData(status, "") != nil && (code < 1012 || code > 1014) {
		k.rateLogs.badKick.log(k, "Monolith kicked a client with a close code that may not be sent: using 4000", "monolith", m.id, "code", code)
		status = 4000
	}
	cl.c.EndWith(loop.EndClosedByUpstream, status, "kicked")
}

// Ended runs once when the link ends. Its rooms are unmapped and their
// clients here closed with 1000, so that they reconnect and land on
// another Monolith; the target is dialled again after ReconnectDelay (an
// established link) or ConnectRetry (a failed handshake).
func (m *monolith) Ended(_ *loop.WSConn, reason loop.EndReason) {
	k, t := m.k, m.t
	was := m.state
	m.state = linkGone
	t.link = nil
	if was == linkUp {
		delete(k.byID, m.id)
		for i, x := range k.up {
			if x == m {
				k.up = append(k.up[:i], k.up[i+1:]...)
				k.ring = nil
				break
			}
		}
		for _, r := range m.rooms {
			k.unmap(r, unmapFailover)
		}
		if !k.stopping {
			k.hub.Log().Warn("Monolith link ended: its rooms are unmapped and their clients closed so that they reconnect",
				"addr", t.addr, "id", m.id, "reason", reason.String(), "up_for", k.hub.Now().Sub(m.upAt).Round(time.Millisecond).String())
		}
	}
	if k.stopping {
		return
	}
	if was == linkUp {
		t.failing, t.fails = false, 0
		if !t.wanted() {
			delete(k.targets, t.addr)
			return
		}
		t.retryAt = k.hub.Now().Add(k.cfg.ReconnectDelay)
		return
	}
	k.retry(t, k.cfg.ConnectRetry, "Monolith handshake failed", reason.String())
}
