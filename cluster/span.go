package cluster

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/placeos-gnet/dispatch/loop"
)

// mkey finds a member as upstreams address it.
type mkey struct {
	id uint64
	ip netip.Addr
}

// span is one spanning channel on this replica (loop.Span).
type span struct {
	b       *Bus
	ch      *loop.Channel
	subject string // the channel's events
	channel string // its Channel frame

	local   map[mkey]*loop.Member // members held here
	records map[mkey]*record      // members held elsewhere, while this replica wants them
	heard   map[mkey]uint16       // transient members (datagram sources) last heard by another replica
	ups     map[uint16]*loop.Upstream
	snapGen map[uint16]uint64

	told       uint8  // the interest flags last announced
	toldFilter string // and filter
	subscribed bool
	dirty      bool
	replaying  bool // delivering another replica's broadcast here
	transient  loop.Member
	lastIPText []byte // addr's cache
	lastIP     netip.Addr
}

// record is a member another replica holds.
type record struct {
	loop.Member
	node uint16
	gen  uint64 // the snapshot that last listed it
}

// Span implements loop.Bus: the other replicas' interest is attached to a
// channel that just opened.
func (b *Bus) Span(ch *loop.Channel) loop.Span {
	sp := &span{
		b:       b,
		ch:      ch,
		subject: b.prefix + ".ev." + ch.Key.Kind + "." + subjectToken(ch.Key.Name),
		channel: string(AppendChannel(nil, ch.Key.Kind, ch.Key.Name)),
		local:   make(map[mkey]*loop.Member),
		records: make(map[mkey]*record),
		heard:   make(map[mkey]uint16),
		ups:     make(map[uint16]*loop.Upstream),
		snapGen: make(map[uint16]uint64),
	}
	sp.transient.Transient, sp.transient.Remote = true, true
	b.spans[ch.Key] = sp
	for node, in := range b.interest[ch.Key] {
		sp.setInterest(node, in)
	}
	return sp
}

// subjectToken makes a channel name one subject token: as it is when it
// is plain, else hex after '~'.
func subjectToken(name string) string {
	if name != "" && strings.IndexFunc(name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == ':')
	}) < 0 {
		return name
	}
	const hexdigits = "0123456789abcdef"
	out := make([]byte, 1, 1+2*len(name))
	out[0] = '~'
	for i := 0; i < len(name); i++ {
		out = append(out, hexdigits[name[i]>>4], hexdigits[name[i]&15])
	}
	return string(out)
}

func keyOf(m *loop.Member) mkey { return mkey{m.ID, m.IP} }

// Joined implements loop.Span.
func (sp *span) Joined(m *loop.Member) {
	sp.local[keyOf(m)] = m
	if len(sp.local) == 1 && sp.ch.Policy.ToMembers {
		sp.markDirty()
	}
}

// Left implements loop.Span.
func (sp *span) Left(m *loop.Member) {
	delete(sp.local, keyOf(m))
	if len(sp.local) == 0 && sp.ch.Policy.ToMembers {
		sp.markDirty()
	}
}

// Changed implements loop.Span.
func (sp *span) Changed() { sp.markDirty() }

func (sp *span) markDirty() {
	if !sp.dirty {
		sp.dirty = true
		sp.b.dirty = append(sp.b.dirty, sp)
		sp.b.scheduleFlush()
	}
}

// Event implements loop.Span: one frame on the channel's subject, batched
// with the channel's other events of this pass.
func (sp *span) Event(ev *loop.Event) {
	b := sp.b
	m := ev.Member
	var flags uint8
	if ev.Text {
		flags |= FlagText
	}
	if m.Transient {
		flags |= FlagTransient
		if len(sp.heard) > 0 {
			delete(sp.heard, keyOf(m)) // heard here last: answers leave from here
		}
	}
	if msg, ok := b.batch(sp.subject, sp.channel, 64+len(ev.Data)); ok {
		b.c.EventsOut++
		b.pending[len(b.pending)-1].data = AppendEvent(msg, uint8(ev.Type), flags, m.ID, m.IPText, m.Label, ev.Data)
	}
}

// batch returns the message to append frames of channel to for subject:
// this pass's last message when it goes there, has room and names the
// channel; otherwise a new one. Messages keep the loop's order.
func (b *Bus) batch(subject, channel string, need int) ([]byte, bool) {
	if !b.connected {
		b.c.DroppedOut++
		return nil, false
	}
	if n := len(b.pending); n > 0 {
		last := &b.pending[n-1]
		if last.op == opPub && last.subject == subject && last.channel == channel && len(last.data)+need <= maxMessage {
			return last.data, true
		}
	}
	msg := append(b.header(), channel...)
	b.pending = append(b.pending, outMsg{op: opPub, subject: subject, data: msg, channel: channel})
	b.scheduleFlush()
	return msg, true
}

// Unicast implements loop.Span: a payload for a member another replica holds.
func (sp *span) Unicast(m *loop.Member, ev *loop.Event) {
	r := sp.records[keyOf(m)]
	if r == nil {
		return
	}
	var flags uint8
	if ev.Text {
		flags |= FlagText
	}
	b := sp.b
	if msg, ok := b.batch(b.nodeSubject(r.node), sp.channel, 32+len(ev.Data)); ok {
		b.pending[len(b.pending)-1].data = AppendWrite(msg, flags, m.ID, m.IPText, ev.Data)
	}
}

// CloseMember implements loop.Span.
func (sp *span) CloseMember(m *loop.Member) {
	r := sp.records[keyOf(m)]
	if r == nil {
		return
	}
	b := sp.b
	if msg, ok := b.batch(b.nodeSubject(r.node), sp.channel, 32); ok {
		b.pending[len(b.pending)-1].data = AppendClose(msg, m.ID, m.IPText)
	}
}

// Broadcast implements loop.Span: once on the channel's subject; every
// replica with members hears it.
func (sp *span) Broadcast(ev *loop.Event) {
	if sp.replaying || len(sp.ups) == 0 {
		return
	}
	var flags uint8
	if ev.Text {
		flags |= FlagText
	}
	b := sp.b
	if msg, ok := b.batch(sp.subject, sp.channel, 16+len(ev.Data)); ok {
		b.pending[len(b.pending)-1].data = AppendBroadcast(msg, flags, ev.Data)
	}
}

// Remote implements loop.Span.
func (sp *span) Remote(id uint64, ip []byte) *loop.Member {
	if r := sp.records[mkey{id, parseIP(ip)}]; r != nil {
		return &r.Member
	}
	return nil
}

// maxHeard bounds the transient members a channel remembers the replica
// of. Past it one is forgotten per new one: an answer to a forgotten peer
// leaves from the replica of the upstream that sent it, as alone.
const maxHeard = 4096

// hear notes that replica node heard from a transient member.
func (sp *span) hear(k mkey, node uint16) {
	if _, ok := sp.heard[k]; !ok && len(sp.heard) >= maxHeard {
		for old := range sp.heard {
			delete(sp.heard, old)
			sp.b.c.HeardForgotten++
			break
		}
	}
	sp.heard[k] = node
}

// SendTransient implements loop.Span.
func (sp *span) SendTransient(id uint64, ip []byte, data []byte) bool {
	node, ok := sp.heard[mkey{id, parseIP(ip)}]
	if !ok {
		return false
	}
	b := sp.b
	if msg, ok := b.batch(b.nodeSubject(node), sp.channel, 32+len(data)); ok {
		b.pending[len(b.pending)-1].data = AppendWrite(msg, FlagTransient, id, ip, data)
	}
	return true
}

// Closed implements loop.Span: the channel is gone here; so is our
// interest in it.
func (sp *span) Closed() {
	b := sp.b
	delete(b.spans, sp.ch.Key)
	clear(sp.records)
	clear(sp.ups)
	if sp.told != 0 {
		sp.told, sp.toldFilter = 0, ""
		b.announce(sp.ch.Key, sp.channel, 0, "")
	}
	if sp.subscribed {
		sp.subscribed = false
		b.pending = append(b.pending, outMsg{op: opUnsub, subject: sp.subject})
		b.scheduleFlush()
	}
}

func (b *Bus) nodeSubject(node uint16) string {
	if s, ok := b.nodeSubjects[node]; ok {
		return s
	}
	s := b.prefix + ".node." + strconv.Itoa(int(node))
	b.nodeSubjects[node] = s
	return s
}

// interestOf is what this replica wants of the channel now: the union of
// its upstreams' filters (watchers are none: EachLocalUpstream leaves
// them out), and whether it has members that hear the others.
func (sp *span) interestOf() (uint8, string) {
	var flags uint8
	var parts []string
	all := false
	sp.ch.EachLocalUpstream(func(u *loop.Upstream) {
		flags |= InterestUpstreams
		s, ok := u.Filter.(interface{ String() string })
		switch {
		case u.Filter == nil || !ok:
			all = true
		default:
			if text := s.String(); text != "" {
				parts = append(parts, text)
			}
		}
	})
	if sp.ch.Policy.ToMembers && len(sp.local) > 0 {
		flags |= InterestMembers
	}
	if all {
		return flags, "*"
	}
	return flags, strings.Join(parts, ",")
}

// reannounce tells the others when this replica's interest changed, and
// follows it with the subscription: subscribed before anyone sends for it,
// unsubscribed after.
func (sp *span) reannounce() {
	if sp.ch.Closed() {
		return
	}
	b := sp.b
	flags, filter := sp.interestOf()
	if flags != 0 && !sp.subscribed {
		sp.subscribed = true
		b.pending = append(b.pending, outMsg{op: opSub, subject: sp.subject})
	}
	if flags != sp.told || filter != sp.toldFilter {
		sp.told, sp.toldFilter = flags, filter
		b.announce(sp.ch.Key, sp.channel, flags, filter)
	}
	if flags == 0 && sp.subscribed {
		sp.subscribed = false
		b.pending = append(b.pending, outMsg{op: opUnsub, subject: sp.subject})
		sp.dropRecords(func(*record) bool { return true })
	}
}

func (b *Bus) announce(_ loop.Key, channel string, flags uint8, filter string) {
	msg := append(b.header(), channel...)
	b.queueAll(AppendInterest(msg, flags, []byte(filter)))
}

// announceAll sends this replica's whole interest, framed so that the
// others forget what it no longer names.
func (b *Bus) announceAll() {
	msg := AppendSimple(b.header(), FrameResetBegin)
	for _, sp := range b.spans {
		flags, filter := sp.interestOf()
		sp.told, sp.toldFilter = flags, filter
		if flags == 0 {
			continue
		}
		if !sp.subscribed {
			sp.subscribed = true
			b.pending = append(b.pending, outMsg{op: opSub, subject: sp.subject})
		}
		if len(msg)+len(sp.channel)+len(filter)+8 > maxMessage {
			b.queueAll(msg)
			msg = b.header()
		}
		msg = append(msg, sp.channel...)
		msg = AppendInterest(msg, flags, []byte(filter))
	}
	b.queueAll(AppendSimple(msg, FrameResetEnd))
}

// setInterest attaches, refilters or detaches a replica's interest record
// on the span.
func (sp *span) setInterest(node uint16, in *interest) {
	u := sp.ups[node]
	switch {
	case in == nil || in.flags == 0:
		if u != nil {
			delete(sp.ups, node)
			sp.ch.Detach(u)
		}
	case u == nil:
		u = &loop.Upstream{Filter: sp.filterFor(in)}
		sp.ups[node] = u
		sp.ch.Attach(u)
	default:
		sp.ch.Refilter(u, sp.filterFor(in))
	}
}

// filterFor is the filter an interest record admits by: everyone when that
// replica has members that hear the others, else its upstreams' union.
func (sp *span) filterFor(in *interest) loop.Filter {
	if in.flags&InterestMembers != 0 && sp.ch.Policy.ToMembers {
		return nil
	}
	return in.parsed
}

// dropRecords makes the records that match leave, telling local upstreams.
func (sp *span) dropRecords(match func(*record) bool) {
	for k, r := range sp.records {
		if match(r) {
			delete(sp.records, k)
			sp.ch.Leave(&r.Member)
		}
	}
}

// sendSnapshot sends a replica that just took interest the members held
// here, in one pass, so that it can make its records match.
func (b *Bus) sendSnapshot(node uint16, key loop.Key) {
	subject := b.nodeSubject(node)
	channel := AppendChannel(nil, key.Kind, key.Name)
	msg := AppendSimple(append(b.header(), channel...), FrameSnapBegin)
	if sp := b.spans[key]; sp != nil {
		for _, m := range sp.local {
			if len(msg)+300 > maxMessage {
				b.publish(subject, msg)
				msg = append(b.header(), channel...)
			}
			msg = AppendSnapMember(msg, 0, m.ID, m.IPText, m.Label)
		}
	}
	b.publish(subject, AppendSimple(msg, FrameSnapEnd))
}
