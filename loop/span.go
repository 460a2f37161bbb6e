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
	// Peers lists the other replicas heard from and not gone, by node
	// number, in order.
	Peers() []int
	// Ask sends question on topic to replica node (AllReplicas: every other
	// live replica), whose Hub.OnAsk answers it, and calls done on the loop
	// once, with one Reply per replica asked, when every one has answered
	// or the deadline passed. question is valid only during the call.
	Ask(node int, topic string, question []byte, done func(replies []Reply))
	// Tell sends data on topic to replica node (AllReplicas: every other
	// replica), whose Hub.OnTell hears it; nothing answers. data is valid
	// only during the call.
	Tell(node int, topic string, data []byte)
}

// AllReplicas addresses every other replica in Hub.Ask and Hub.Tell.
const AllReplicas = -1

// Reply is one replica's answer to Hub.Ask.
type Reply struct {
	Node int
	// Answered is false when the replica did not answer before the
	// deadline, left, or was never heard from.
	Answered bool
	Data     []byte // its answer, when Answered (nil if it has none for the topic)
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
	// SendTransient carries a payload for a transient member (a datagram's
	// source) to the replica that last heard from it, and reports false
	// when that is this one or none.
	SendTransient(id uint64, ip []byte, data []byte) bool
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
	if h.bus != nil {
		r.Later()
	}
	h.GatherParts(topic, func(parts [][]byte) {
		r.Respond(200, contentType, merge(parts))
	})
}

// GatherParts calls done on the loop with every replica's answer to topic
// (Hub.Answer), this one's first; alone, at once. A replica that does not
// answer within the bus's deadline is left out.
func (h *Hub) GatherParts(topic string, done func(parts [][]byte)) {
	local := h.Answered(topic)
	if h.bus == nil {
		done([][]byte{local})
		return
	}
	h.bus.Gather(topic, local, done)
}

// Node is this replica's node number: 0 alone.
func (h *Hub) Node() int {
	if h.bus == nil {
		return 0
	}
	return h.bus.Node()
}

// Peers lists the other live replicas' node numbers, in order; nil alone.
func (h *Hub) Peers() []int {
	if h.bus == nil {
		return nil
	}
	return h.bus.Peers()
}

// Ask asks replica node (AllReplicas: every other live one) the question
// on topic and calls done on the loop with their replies (Reply), once.
// Alone there is nobody to ask: done runs at once, with a reply that did
// not answer for a single node, with none for AllReplicas.
func (h *Hub) Ask(node int, topic string, question []byte, done func(replies []Reply)) {
	if h.bus == nil {
		if node == AllReplicas {
			done(nil)
		} else {
			done([]Reply{{Node: node}})
		}
		return
	}
	h.bus.Ask(node, topic, question, done)
}

// Tell sends data on topic to replica node (AllReplicas: every other one),
// one way; alone it does nothing.
func (h *Hub) Tell(node int, topic string, data []byte) {
	if h.bus != nil {
		h.bus.Tell(node, topic, data)
	}
}

// OnAsk registers how this replica answers another's question on topic
// (Hub.Ask); fn runs on the loop, and what it returns is the answer.
// question is valid only during the call.
func (h *Hub) OnAsk(topic string, fn func(from int, question []byte) []byte) {
	if h.asks == nil {
		h.asks = make(map[string]func(int, []byte) []byte)
	}
	h.asks[topic] = fn
}

// OnTell registers what this replica does with another's message on topic
// (Hub.Tell); fn runs on the loop; data is valid only during the call.
func (h *Hub) OnTell(topic string, fn func(from int, data []byte)) {
	if h.tells == nil {
		h.tells = make(map[string]func(int, []byte))
	}
	h.tells[topic] = fn
}

// OnReplica registers fn to run on the loop when another replica says
// hello: it started or restarted, came back after NATS was away, or lost
// messages and asks for everything again. A kind with state of its own to
// reconcile (a deny list) exchanges it then.
func (h *Hub) OnReplica(fn func(node int)) { h.hellos = append(h.hellos, fn) }

// Asked is this replica's answer to another's question on topic, nil when
// no kind answers it. The bus calls it on the loop.
func (h *Hub) Asked(from int, topic string, question []byte) []byte {
	if fn := h.asks[topic]; fn != nil {
		return fn(from, question)
	}
	return nil
}

// Told hands another replica's message on topic to the kind that hears it.
// The bus calls it on the loop.
func (h *Hub) Told(from int, topic string, data []byte) {
	if fn := h.tells[topic]; fn != nil {
		fn(from, data)
	}
}

// ReplicaHello tells the kinds that replica node said hello (OnReplica).
// The bus calls it on the loop.
func (h *Hub) ReplicaHello(node int) {
	for _, fn := range h.hellos {
		fn(node)
	}
}

// Replayer is an Owner that replays another replica's member payloads on
// its channel itself, to count what they reach: the bus calls Replay,
// which must call ch.Publish(MemberData, m, text, data), instead of
// publishing them.
type Replayer interface {
	Replay(ch *Channel, m *Member, text bool, data []byte)
}

// TransientOwner is an Owner whose members may be transient (a UDP port's
// peers): what an upstream on another replica sends to one that this
// replica heard last is handed to SendTransient, which sends it from here,
// where the peer expects its answer from.
type TransientOwner interface {
	SendTransient(ch *Channel, id uint64, ip []byte, data []byte)
}

// SendTransient sends data to a transient member through the replica that
// last heard from it, and reports false when no other replica has since
// this one did: the caller then sends it itself.
func (ch *Channel) SendTransient(id uint64, ip []byte, data []byte) bool {
	return ch.span != nil && ch.span.SendTransient(id, ip, data)
}

// Spanned reports whether the channel spans replicas.
func (ch *Channel) Spanned() bool { return ch.span != nil }

// Span is the channel's span, or nil.
func (ch *Channel) Span() Span { return ch.span }

// LocalUpstreams counts the upstreams attached on this replica, watchers
// aside, as Upstreams does; Upstreams counts other replicas' interest too.
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
