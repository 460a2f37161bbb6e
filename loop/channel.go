package loop

import (
	"cmp"
	"errors"
	"net/netip"
	"slices"
)

// Key names a channel: the kind that owns it and a name unique within the
// kind ("tcp"/"6001" is a dispatch port, a group id a socket group).
type Key struct{ Kind, Name string }

func (k Key) String() string { return k.Kind + ":" + k.Name }

// Policy says where a channel's member events go.
type Policy struct {
	// ToUpstreams: a member's events (opened, data, closed) go to the
	// upstreams whose filter admits it.
	ToUpstreams bool
	// ToMembers: a member's payload goes to every other member that may read.
	ToMembers bool
	// Announce: an upstream that attaches late is sent an opened event for
	// every member already there that it admits, in id order.
	Announce bool
}

// Owner is the kind's side of a channel: what happens when the channel's
// upstreams change is the kind's business (a dispatch port closes with its
// last driver, a socket group outlives its drivers).
type Owner interface {
	Detached(ch *Channel, u *Upstream)
}

// Channel is a fan-out set: members that produce and consume payloads,
// upstreams that see the channel multiplexed, and a policy. Every member
// event enters through Publish.
type Channel struct {
	Key    Key
	Policy Policy

	hub       *Hub
	owner     Owner
	members   []*Member // in no order; each knows its slot
	upstreams []*Upstream
	// blockedMembers counts members whose connection is blocked and pauses
	// its producers (flow.go).
	blockedMembers int
	// watchers counts the upstreams that are watchers (watch.go).
	watchers int
	// version changes whenever upstreams change, so that cached per-member
	// interest can tell it is stale.
	version uint64
	closed  bool
	// span carries the channel to other replicas when a cluster bus is
	// attached and the kind spans (span.go); nil otherwise.
	span Span
}

// Member is an endpoint that produces and consumes a channel's payloads: a
// device connection, a UDP peer, a group member, a WebSocket client. A kind
// embeds it in its own record of the peer.
type Member struct {
	ID     uint64     // as upstreams address it; unique in the channel unless the kind says otherwise
	IP     netip.Addr // for upstream filters
	IPText []byte     // the IP as upstream formats carry it
	Label  []byte     // the kind's own name for it, for formats that carry one

	// Conn is the member's connection: payloads for it are queued there.
	// Nil for a peer without a connection of its own (a UDP peer).
	Conn *Endpoint
	// Recv hears payloads for a member without a Conn; nil: it hears nothing.
	Recv Receiver
	// ReadOnly members' payloads are discarded (and counted); WriteOnly
	// members are never queued anything.
	ReadOnly, WriteOnly bool
	// Transient members (the sources of datagrams) never join: their
	// identity changes with every event, so their interest is not cached.
	Transient bool
	// Remote marks the record of a member held by another replica
	// (span.go): its events arrived over the cluster bus and payloads for
	// it go back there.
	Remote bool

	ch              *Channel
	slot            int
	interest        []*Upstream
	interestVersion uint64
}

// Receiver hears the payloads of a member that has no connection of its
// own: a UDP peer the payload is sent to at once.
type Receiver interface {
	Receive(data []byte)
}

// Upstream is an endpoint that sees a channel multiplexed: every member's
// events, tagged with its identity, for the members its filter admits.
type Upstream struct {
	// Out is where its events are queued; nil for the interest of another
	// replica (span.go), which the cluster bus carries there.
	Out    *Endpoint
	Filter Filter // nil admits every member
	// Watcher marks an upstream that only looks on (watch.go): it admits
	// no member on its own, does not count in Upstreams, is not reported
	// to the owner when it leaves, and is ended when the channel closes.
	Watcher bool
	ch      *Channel
}

// Filter decides which members an upstream hears.
type Filter interface {
	Admits(m *Member) bool
}

func (u *Upstream) admits(m *Member) bool { return u.Filter == nil || u.Filter.Admits(m) }

// Channel returns the channel the upstream is attached to, or nil.
func (u *Upstream) Channel() *Channel { return u.ch }

// ErrTooManyChannels refuses a channel past its kind's cap.
var ErrTooManyChannels = errors.New("too many channels of this kind")

// OpenChannel creates a channel; max caps the open channels of its kind
// (max < 1: no cap). The caller checked that the key is free.
func (h *Hub) OpenChannel(key Key, p Policy, owner Owner, max int) (*Channel, error) {
	if max > 0 && h.kindChannels[key.Kind] >= max {
		h.refusedChannels[key.Kind]++
		return nil, ErrTooManyChannels
	}
	ch := &Channel{Key: key, Policy: p, hub: h, owner: owner, version: 1}
	h.channels[key] = ch
	h.kindChannels[key.Kind]++
	h.span(ch)
	return ch, nil
}

// Channel returns the open channel for key, or nil.
func (h *Hub) Channel(key Key) *Channel { return h.channels[key] }

// Channels returns how many channels of a kind are open.
func (h *Hub) Channels(kind string) int { return h.kindChannels[kind] }

// Close ends the channel: every member with a connection is ended (its
// kind hears of it through the member's role and makes it leave, which the
// upstreams are told), members without one just leave, and upstreams are
// detached without being ended (an upstream may serve other channels).
func (ch *Channel) Close() {
	if ch.closed {
		return
	}
	ch.closed = true
	for _, m := range slices.Clone(ch.members) {
		if m.Conn != nil {
			m.Conn.End(EndChannelClosed, "")
		}
		ch.Leave(m)
	}
	ups := ch.upstreams
	for _, u := range ups {
		u.ch = nil
	}
	ch.upstreams, ch.watchers = nil, 0
	ch.version++
	h := ch.hub
	delete(h.channels, ch.Key)
	h.kindChannels[ch.Key.Kind]--
	endWatchers(ups)
	if ch.span != nil {
		ch.span.Closed()
	}
}

// Closed reports whether the channel was closed.
func (ch *Channel) Closed() bool { return ch.closed }

// Join adds m to the channel and announces it to the upstreams that admit it.
func (ch *Channel) Join(m *Member) {
	m.ch = ch
	if m.Conn != nil {
		m.Conn.member = m
	}
	m.slot = len(ch.members)
	ch.members = append(ch.members, m)
	if ch.span != nil {
		ch.span.Joined(m)
	}
	ch.Publish(MemberOpened, m, false, nil)
}

// Leave removes m and announces that it left. A member that is not in the
// channel is ignored.
func (ch *Channel) Leave(m *Member) {
	if m.ch != ch {
		return
	}
	if e := m.Conn; e != nil && e.blocked && e.onFull == PauseWhenFull {
		ch.blockedMembers--
	}
	last := len(ch.members) - 1
	moved := ch.members[last]
	ch.members[m.slot], moved.slot = moved, m.slot
	ch.members[last] = nil
	ch.members = ch.members[:last]
	m.ch = nil
	if ch.span != nil && !m.Remote {
		ch.span.Left(m)
	}
	ch.Publish(MemberClosed, m, false, nil)
}

// Members returns how many members the channel has.
func (ch *Channel) Members() int { return len(ch.members) }

// EachMember calls fn for every member; fn must not make members join or leave.
func (ch *Channel) EachMember(fn func(*Member)) {
	for _, m := range ch.members {
		fn(m)
	}
}

// Upstreams returns how many upstreams are attached, watchers aside.
func (ch *Channel) Upstreams() int { return len(ch.upstreams) - ch.watchers }

// Attach adds an upstream; a late upstream is told of the members already
// there when the policy asks for it.
func (ch *Channel) Attach(u *Upstream) {
	u.ch = ch
	ch.upstreams = append(ch.upstreams, u)
	if u.Watcher {
		ch.watchers++
	}
	ch.version++
	if u.Out == nil {
		return // another replica's interest: it hears of members from theirs
	}
	if ch.span != nil {
		ch.span.Changed()
	}
	if !ch.Policy.Announce {
		return
	}
	present := make([]*Member, 0, len(ch.members))
	for _, m := range ch.members {
		if u.admits(m) {
			present = append(present, m)
		}
	}
	slices.SortFunc(present, func(a, b *Member) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), a.IP.Compare(b.IP))
	})
	h := ch.hub
	for _, m := range present {
		h.enc.next()
		h.ev = Event{Type: MemberOpened, Member: m}
		h.deliver(u.Out, &h.ev)
	}
	h.scheduleFlush()
}

// Detach removes an upstream and tells the channel's kind.
func (ch *Channel) Detach(u *Upstream) {
	if u.ch != ch {
		return
	}
	u.ch = nil
	i := slices.Index(ch.upstreams, u)
	ch.upstreams = slices.Delete(ch.upstreams, i, i+1)
	ch.version++
	if u.Watcher {
		ch.watchers--
		return
	}
	if ch.span != nil && u.Out != nil {
		ch.span.Changed()
	}
	if !ch.closed {
		ch.owner.Detached(ch, u)
	}
}

// Admits reports whether any upstream admits m; watchers do not count.
func (ch *Channel) Admits(m *Member) bool {
	for _, u := range ch.upstreams {
		if !u.Watcher && u.admits(m) {
			return true
		}
	}
	return false
}

// interested returns the upstreams that admit m. A member's list is cached
// until the upstreams change, and rebuilt into a new slice so that a caller
// still walking the old one is not disturbed.
func (ch *Channel) interested(m *Member) []*Upstream {
	if m.Transient {
		h := ch.hub
		h.transient = ch.appendInterested(h.transient[:0], m)
		return h.transient
	}
	if m.interestVersion != ch.version {
		m.interest, m.interestVersion = ch.appendInterested(nil, m), ch.version
	}
	return m.interest
}
