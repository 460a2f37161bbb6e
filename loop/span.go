package loop

// Channels that span replicas. A cluster bus (package cluster) attaches to
// the hub before Start; a kind opts its channels in with SpanKind. Without
// a bus none of this runs: every hook below is behind a nil check of
// Channel.span or Hub.bus, and the core imports nothing of the bus.
//
// What a spanning channel looks like on one replica:
//   - its local members and upstreams, as ever;
//   - one Upstream with a nil Out per other replica that wants the
//     channel's events, its Filter the union of that replica's interest
//     (its upstreams' filters; everything, when it has members of a channel
//     whose payload goes to members). Admission and lifetime count it like
//     a local upstream; Publish hands an event it admits to the span once,
//     however many replicas and upstreams are behind it;
//   - one Member with Remote set for each member another replica holds, as
//     far as this replica wants them: Publish replays its events here, and
//     payloads for it (Hub.Send, an upstream's unicast) go to the span.

// NodeBits is how many high bits of a member id hold the replica's node
// number in a cluster, so that ids are unique across replicas.
const NodeBits = 10

// MaxNode is the largest node number.
const MaxNode = 1<<NodeBits - 1

// Bus connects the hub to the other replicas. Every method runs on the loop.
type Bus interface {
	// Node is this replica's number, 0..MaxNode.
	Node() int
	// Span is called when a channel of a spanning kind opens: the bus
	// attaches the other replicas' interest to it and returns its span.
	Span(ch *Channel) Span
	// Gather asks every replica for its answer to topic (Hub.Answer) and
	// calls done on the loop with them all, the local one first, once every
	// live replica answered or a deadline passed.
	Gather(topic string, local []byte, done func(parts [][]byte))
}

// Span is a channel's side of the bus. The core calls it on the loop.
type Span interface {
	// Joined and Left report a local member; Changed reports that the local
	// upstreams changed.
	Joined(m *Member)
	Left(m *Member)
	Changed()
	// Event carries an event of a local member that another replica wants.
	// ev.Data is valid only during the call.
	Event(ev *Event)
	// Unicast carries a payload to a remote member's replica.
	Unicast(m *Member, ev *Event)
	// CloseMember asks a remote member's replica to close it.
	CloseMember(m *Member)
	// Broadcast carries an upstream's payload for every member to the other
	// replicas, once.
	Broadcast(ev *Event)
	// Remote finds the record of a remote member as an upstream addresses
	// it: by id and IP text.
	Remote(id uint64, ip []byte) *Member
	// Closed reports that the channel closed here.
	Closed()
}

// AttachBus connects the server to a cluster bus; call it before Start.
func (s *Server) AttachBus(b Bus) { s.h.bus = b }

// Post runs fn on the loop from any goroutine; false if the loop stopped.
func (h *Hub) Post(fn func()) bool { return h.s.post(fn) }

// Clustered reports whether a cluster bus is attached.
func (h *Hub) Clustered() bool { return h.bus != nil }

// IDBase is what a kind ORs into the member ids it counts, so that they
// are unique across replicas: the node number in the top NodeBits bits,
// 0 without a bus.
func (h *Hub) IDBase() uint64 {
	if h.bus == nil {
		return 0
	}
	return uint64(h.bus.Node()) << (64 - NodeBits)
}

// SpanKind makes the kind's channels span replicas when a bus is attached.
// open, when not nil, opens a channel because another replica wants it
// (a dispatch port must be bound on every replica while a driver anywhere
// listens); it returns nil if the channel cannot open. A kind whose
// channels open only on local activity passes nil.
func (h *Hub) SpanKind(kind string, open func(name string) *Channel) {
	if h.spanning == nil {
		h.spanning = make(map[string]func(string) *Channel)
	}
	h.spanning[kind] = open
}

// Spanning reports whether the kind spans replicas, and its opener.
func (h *Hub) Spanning(kind string) (open func(name string) *Channel, ok bool) {
	open, ok = h.spanning[kind]
	return open, ok
}

// span gives a newly opened channel its span, when it has one.
func (h *Hub) span(ch *Channel) {
	if h.bus == nil {
		return
	}
	if _, ok := h.spanning[ch.Key.Kind]; ok {
		ch.span = h.bus.Span(ch)
	}
}

// Answer registers what this replica answers to topic when a replica
// gathers it (Gather): a kind's share of a cluster-wide document.
func (h *Hub) Answer(topic string, fn func() []byte) {
	if h.answers == nil {
		h.answers = make(map[string]func() []byte)
	}
	h.answers[topic] = fn
}

// Answered is this replica's answer to topic, or nil.
func (h *Hub) Answered(topic string) []byte {
	if fn := h.answers[topic]; fn != nil {
		return fn()
	}
	return nil
}

// Gather answers r with merge of every replica's answer to topic (this
// one's first). Alone, it answers at once; in a cluster it answers once the
// others have, without holding the loop (Request.Later).
func (h *Hub) Gather(r *Request, topic, contentType string, merge func(parts [][]byte) []byte) {
	local := h.Answered(topic)
	if h.bus == nil {
		r.Respond(200, contentType, merge([][]byte{local}))
		return
	}
	r.Later()
	h.bus.Gather(topic, local, func(parts [][]byte) {
		r.Respond(200, contentType, merge(parts))
	})
}

// Spanned reports whether the channel spans replicas.
func (ch *Channel) Spanned() bool { return ch.span != nil }

// Span is the channel's span, or nil.
func (ch *Channel) Span() Span { return ch.span }

// LocalUpstreams counts the upstreams attached on this replica, watchers
// apart; Upstreams counts other replicas' interest too.
func (ch *Channel) LocalUpstreams() int {
	n := 0
	for _, u := range ch.upstreams {
		if u.Out != nil && !u.Watcher {
			n++
		}
	}
	return n
}

// EachLocalUpstream calls fn for every upstream attached on this replica.
// Watchers are left out: they admit nothing, so they are no interest that
// other replicas should admit members for.
func (ch *Channel) EachLocalUpstream(fn func(*Upstream)) {
	for _, u := range ch.upstreams {
		if u.Out != nil && !u.Watcher {
			fn(u)
		}
	}
}

// HasLocalMembers reports whether any member is held here.
func (ch *Channel) HasLocalMembers() bool {
	for _, m := range ch.members {
		if !m.Remote {
			return true
		}
	}
	return false
}

// JoinRemote adds the record of a member another replica holds; announce
// tells the upstreams that admit it (MemberOpened), as Join does.
func (ch *Channel) JoinRemote(m *Member, announce bool) {
	m.Remote = true
	m.Conn = nil
	m.ch = ch
	m.slot = len(ch.members)
	ch.members = append(ch.members, m)
	if announce {
		ch.Publish(MemberOpened, m, false, nil)
	}
}

// Refilter changes an upstream's filter (another replica's interest
// changed). The kind is told through Owner.Detached, as when an upstream
// leaves, so that members nobody admits any more can be closed.
func (ch *Channel) Refilter(u *Upstream, f Filter) {
	u.Filter = f
	ch.version++
	if !ch.closed {
		ch.owner.Detached(ch, u)
	}
}

// Remote returns the record of a member held by another replica, as an
// upstream addresses it (id and IP text), or nil.
func (ch *Channel) Remote(id uint64, ip []byte) *Member {
	if ch.span == nil {
		return nil
	}
	return ch.span.Remote(id, ip)
}

// CloseRemote asks the replica that holds m to close it, as an upstream
// that closes a member.
func (ch *Channel) CloseRemote(m *Member) {
	if ch.span != nil && m.Remote {
		ch.span.CloseMember(m)
	}
}

// Hub is the hub the channel belongs to.
func (ch *Channel) Hub() *Hub { return ch.hub }

// NodeOf is the node number an id carries (IDBase).
func NodeOf(id uint64) int { return int(id >> (64 - NodeBits)) }
