package loop

import (
	"fmt"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/codec"
)

// EventType is what happened to a member.
type EventType uint8

const (
	MemberOpened EventType = iota
	MemberData
	MemberClosed
)

// Event is one member event, or one payload an upstream sends to members
// (then Member is nil). Data is valid only during the call that carries it.
type Event struct {
	Type   EventType
	Member *Member
	Text   bool // a WebSocket text message, rather than binary or raw bytes
	Data   []byte
}

// Format is a wire format in which endpoints receive events. The outbox
// encodes an event once per format, however many endpoints receive it.
type Format struct {
	name string
	id   int
	// frame appends what precedes ev.Data on the wire and returns what
	// follows it (usually nothing); ok is false for an event the format
	// does not carry (a raw socket hears no opened or closed).
	frame FrameFunc
	// seal, when set, finishes each encoding in place once its payload is
	// there (dial.go: a client-side WebSocket masks its frames).
	seal func(encoded []byte)
}

// FrameFunc encodes an event's framing: see Format.
type FrameFunc func(dst []byte, ev *Event) (head, tail []byte, ok bool)

// maxFormats bounds the per-event encoding cache; formats are few (one per
// wire protocol), registered at package initialisation.
const maxFormats = 16

var formats []*Format

// NewFormat registers a wire format. Call it from a package-level variable
// initialiser.
func NewFormat(name string, frame FrameFunc) *Format {
	if len(formats) == maxFormats {
		panic(fmt.Sprintf("loop: more than %d formats", maxFormats))
	}
	f := &Format{name: name, id: len(formats), frame: frame}
	formats = append(formats, f)
	return f
}

// Raw carries a member's payload as it is, for raw sockets.
var Raw = NewFormat("raw", func(dst []byte, ev *Event) ([]byte, []byte, bool) {
	return dst, nil, ev.Type == MemberData
})

// WSMessage carries each payload as one WebSocket message of its own, text
// or binary as it was sent, for WebSocket members.
var WSMessage = NewFormat("websocket", func(dst []byte, ev *Event) ([]byte, []byte, bool) {
	if ev.Type != MemberData {
		return dst, nil, false
	}
	op := ws.OpBinary
	if ev.Text {
		op = ws.OpText
	}
	return codec.AppendFrameHeader(dst, op, len(ev.Data)), nil, true
})

// encodings caches one event's encoding per format: a span of the arena
// for queued output, or a header of its own for a payload written at once.
type encodings struct {
	gen uint64
	at  [maxFormats]encoding
}

type encoding struct {
	gen        uint64
	ok         bool
	start, end int    // span of the arena
	head       []byte // scratch for a payload written at once
	tail       []byte
	headGen    uint64
}

// next starts a new event.
func (e *encodings) next() { e.gen++ }

// span encodes ev into the arena in format f, once per event.
func (e *encodings) span(o *outbox, f *Format, ev *Event) (int, int, bool) {
	x := &e.at[f.id]
	if x.gen != e.gen {
		x.gen = e.gen
		start := len(o.arena)
		var head, tail []byte
		head, tail, x.ok = f.frame(o.arena, ev)
		if x.ok {
			o.arena = append(append(head, ev.Data...), tail...)
			if f.seal != nil {
				f.seal(o.arena[start:])
			}
		} else {
			o.arena = o.arena[:start]
		}
		x.start, x.end = start, len(o.arena)
	}
	return x.start, x.end, x.ok
}

// header encodes ev's framing in format f without its payload, once per
// event, for a payload written at once.
func (e *encodings) header(f *Format, ev *Event) (head, tail []byte, ok bool) {
	x := &e.at[f.id]
	if x.headGen != e.gen {
		x.headGen = e.gen
		x.head, x.tail, x.ok = f.frame(x.head[:0], ev)
	}
	return x.head, x.tail, x.ok
}

// Publish is the one entry for a member's events: its arrival (opened),
// each payload it sends (data) and its departure (closed). The policy says
// where they go: to the upstreams that admit the member, to the other
// members, or both. Each is encoded once per wire format and queued; the
// outbox writes every endpoint once at the end of the loop pass. It
// returns how many endpoints the event reached.
func (ch *Channel) Publish(t EventType, m *Member, text bool, data []byte) (reached int) {
	h := ch.hub
	if t == MemberData && m.ReadOnly {
		if m.Conn != nil {
			m.Conn.class.Discarded++
		}
		return 0
	}
	h.enc.next()
	h.co.events++
	h.ev = Event{Type: t, Member: m, Text: text, Data: data}
	ev := &h.ev
	remote := false // another replica wants it (span.go)
	if ch.Policy.ToUpstreams || ch.span != nil {
		for _, u := range ch.interested(m) {
			if u.Out == nil {
				remote = true
				continue
			}
			if ch.Policy.ToUpstreams {
				h.deliver(u.Out, ev)
				reached++
			}
		}
	}
	if ch.Policy.ToMembers && t == MemberData {
		for _, other := range ch.members {
			if other != m && !other.WriteOnly && !other.Remote {
				h.deliverTo(other, ev)
				reached++
			}
		}
	}
	if remote && !m.Remote {
		ch.span.Event(ev) // once, whatever the replicas and upstreams there
		reached++
	}
	h.runDirect(data)
	if len(h.blocked) > 0 && m.Conn != nil && h.pauser != nil && ch.feedsBlocked(m) {
		h.pause(m.Conn)
	}
	h.scheduleFlush()
	return reached
}

// Broadcast sends one payload from an upstream to every member that may
// read, encoded once per format.
func (ch *Channel) Broadcast(text bool, data []byte) {
	h := ch.hub
	h.enc.next()
	h.ev = Event{Type: MemberData, Text: text, Data: data}
	for _, m := range ch.members {
		if !m.WriteOnly && !m.Remote {
			h.deliverTo(m, &h.ev)
		}
	}
	if ch.span != nil {
		ch.span.Broadcast(&h.ev) // the other replicas' members, once
	}
	h.runDirect(data)
	h.scheduleFlush()
}

// Send sends one payload to one member, in its own format.
func (h *Hub) Send(m *Member, text bool, data []byte) {
	h.enc.next()
	h.ev = Event{Type: MemberData, Text: text, Data: data}
	h.deliverTo(m, &h.ev)
	h.runDirect(data)
	h.scheduleFlush()
}

func (h *Hub) deliverTo(m *Member, ev *Event) {
	switch {
	case m.Remote:
		if m.ch != nil && m.ch.span != nil {
			m.ch.span.Unicast(m, ev)
		}
	case m.Conn != nil:
		h.deliver(m.Conn, ev)
	case m.Recv != nil:
		m.Recv.Receive(ev.Data)
	}
}

// directWriteBytes is the payload size from which an event skips the arena:
// a read that large has nothing to gain from batching, so it is written at
// once from gnet's read buffer, without a copy or a wait for the pass to end.
const directWriteBytes = 16 << 10

// deliver queues ev for one endpoint in its format, or sets a large payload
// aside to be written at once. Nothing here writes or ends an endpoint, so
// the caller's walk over members and upstreams cannot be disturbed.
func (h *Hub) deliver(e *Endpoint, ev *Event) {
	if e.closing {
		return
	}
	if e.onFull == DropWhenFull {
		if e.Unsent() >= e.limit {
			e.dropMessage()
			return
		}
		e.caughtUp()
	}
	if len(ev.Data) >= directWriteBytes && e.format.seal == nil {
		if head, tail, ok := h.enc.header(e.format, ev); ok {
			h.direct = append(h.direct, directWrite{e, head, tail})
		}
		return
	}
	if start, end, ok := h.enc.span(&h.out, e.format, ev); ok {
		h.queue(e, start, end)
	}
}

// directWrite is a large payload set aside for one endpoint.
type directWrite struct {
	e          *Endpoint
	head, tail []byte
}

// runDirect writes the large payload set aside for each endpoint. A failed
// write can close endpoints (gnet calls OnClose inside Write), whose kinds
// may publish in turn: the list is taken first.
func (h *Hub) runDirect(data []byte) {
	if len(h.direct) == 0 {
		return
	}
	list := h.direct
	h.direct = nil
	for i := range list {
		w := &list[i]
		h.writeNow(w.e, w.head, data, w.tail)
		list[i] = directWrite{}
	}
	if h.direct == nil {
		h.direct = list[:0]
	}
}
