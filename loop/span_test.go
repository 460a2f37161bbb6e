package loop_test

import (
	"net/netip"
	"testing"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
)

// fakeBus records what the core hands a bus.
type fakeBus struct {
	spans []*fakeSpan
	told  int
}

func (b *fakeBus) Node() int { return 5 }
func (b *fakeBus) Span(ch *loop.Channel) loop.Span {
	s := &fakeSpan{remote: map[uint64]*loop.Member{}}
	b.spans = append(b.spans, s)
	return s
}
func (b *fakeBus) Gather(_ string, local []byte, done func([][]byte)) { done([][]byte{local}) }
func (b *fakeBus) Peers() []int                                       { return []int{2, 9} }
func (b *fakeBus) Ask(node int, _ string, q []byte, done func([]loop.Reply)) {
	done([]loop.Reply{{Node: node, Answered: true, Data: append([]byte("re:"), q...)}})
}
func (b *fakeBus) Tell(int, string, []byte) { b.told++ }

type fakeSpan struct {
	events, unicasts, closes, broadcasts, changed int
	joined, left                                  int
	remote                                        map[uint64]*loop.Member
}

func (s *fakeSpan) Joined(*loop.Member)                     { s.joined++ }
func (s *fakeSpan) Left(*loop.Member)                       { s.left++ }
func (s *fakeSpan) Changed()                                { s.changed++ }
func (s *fakeSpan) Event(*loop.Event)                       { s.events++ }
func (s *fakeSpan) Unicast(*loop.Member, *loop.Event)       { s.unicasts++ }
func (s *fakeSpan) CloseMember(*loop.Member)                { s.closes++ }
func (s *fakeSpan) Broadcast(*loop.Event)                   { s.broadcasts++ }
func (s *fakeSpan) Remote(id uint64, _ []byte) *loop.Member { return s.remote[id] }
func (s *fakeSpan) Closed()                                 {}
func (s *fakeSpan) SendTransient(uint64, []byte, []byte) bool {
	s.unicasts++
	return true
}

func acceptOnly(t *testing.T, ips string) *driver.AcceptList {
	a, err := driver.ParseAcceptList(ips)
	if err != nil {
		t.Fatal(err)
	}
	return &a
}

func member(ip string, id uint64) *loop.Member {
	a := netip.MustParseAddr(ip)
	return &loop.Member{ID: id, IP: a, IPText: []byte(ip)}
}

func TestSpanSeam(t *testing.T) {
	h := loop.NewTestHub(memLoop{})
	bus := &fakeBus{}
	h.AttachTestBus(bus)
	if got := h.IDBase(); got != 5<<(64-loop.NodeBits) {
		t.Fatalf("IDBase %#x, want node 5 in the top bits", got)
	}
	// A kind that does not span gets no span.
	plain, _ := h.OpenChannel(loop.Key{Kind: "alone", Name: "x"}, loop.Policy{ToUpstreams: true}, noOwner{}, 0)
	if plain.Spanned() || len(bus.spans) != 0 {
		t.Fatal("a channel of a kind that does not span has a span")
	}
	h.SpanKind("test", nil)
	ch, _ := h.OpenChannel(loop.Key{Kind: "test", Name: "tcp:1"}, loop.Policy{ToUpstreams: true}, noOwner{}, 0)
	sp := bus.spans[0]
	if !ch.Spanned() {
		t.Fatal("no span")
	}

	// A local driver admitting 10.0.0.1 only.
	drvConn := &memConn{}
	drv := h.TestEndpoint(drvConn, h.NewClass("test", "driver"), loop.Output{Format: driver.Format, Limit: 1 << 20})
	local := &loop.Upstream{Out: drv, Filter: acceptOnly(t, "10.0.0.1")}
	ch.Attach(local)
	if sp.changed != 1 {
		t.Fatalf("attaching a local upstream told the span %d times", sp.changed)
	}
	dev2 := member("10.0.0.2", 1)
	if ch.Admits(dev2) {
		t.Fatal("10.0.0.2 admitted before any replica wants it")
	}
	ch.Join(dev2)
	ch.Publish(loop.MemberData, dev2, false, []byte("x"))
	if sp.events != 0 {
		t.Fatalf("%d events to the bus with no remote interest", sp.events)
	}

	// Two other replicas want 10.0.0.2: admission counts them, and an event
	// crosses the bus once.
	for range 2 {
		ch.Attach(&loop.Upstream{Filter: acceptOnly(t, "10.0.0.2")})
	}
	if sp.changed != 1 {
		t.Fatal("remote interest was reported back to the span")
	}
	if !ch.Admits(dev2) || ch.Upstreams() != 3 || ch.LocalUpstreams() != 1 {
		t.Fatalf("admits %v, upstreams %d, local %d", ch.Admits(dev2), ch.Upstreams(), ch.LocalUpstreams())
	}
	if n := ch.Publish(loop.MemberData, dev2, false, []byte("y")); n != 1 || sp.events != 1 {
		t.Fatalf("reached %d, bus events %d: want the bus once", n, sp.events)
	}
	h.Flush()
	if drvConn.written != 0 {
		t.Fatal("the local driver that does not admit 10.0.0.2 heard it")
	}

	// A member held elsewhere: its events reach the local driver and never
	// go back to the bus; a payload for it goes to the span.
	rec := member("10.0.0.1", 7)
	sp.remote[7] = rec
	ch.JoinRemote(rec, true)
	ch.Publish(loop.MemberData, rec, false, []byte("remote"))
	h.Flush()
	if sp.events != 1 || drvConn.writes == 0 {
		t.Fatalf("bus events %d, driver writes %d", sp.events, drvConn.writes)
	}
	if ch.Remote(7, []byte("10.0.0.1")) != rec {
		t.Fatal("Remote did not find the record")
	}
	h.Send(rec, false, []byte("write"))
	ch.CloseRemote(rec)
	if sp.unicasts != 1 || sp.closes != 1 {
		t.Fatalf("unicasts %d, closes %d", sp.unicasts, sp.closes)
	}
	joined := sp.joined
	ch.Leave(rec)
	if sp.left != 0 || sp.joined != joined {
		t.Fatal("a record's leaving was reported to the span as a local member's")
	}
	ch.Leave(dev2)
	if sp.left != 1 {
		t.Fatalf("left %d", sp.left)
	}
}

func TestSpanMembersHearEachOtherOnce(t *testing.T) {
	h := loop.NewTestHub(memLoop{})
	bus := &fakeBus{}
	h.AttachTestBus(bus)
	h.SpanKind("g", nil)
	ch, _ := h.OpenChannel(loop.Key{Kind: "g", Name: "tcp:a"}, loop.Policy{ToMembers: true, ToUpstreams: true}, noOwner{}, 0)
	sp := bus.spans[0]
	class := h.NewClass("g", "member")
	conn := &memConn{}
	m := member("10.0.0.1", 1)
	m.Conn = h.TestEndpoint(conn, class, loop.Output{Format: loop.Raw, Limit: 1 << 20})
	ch.Join(m)
	recs := []*loop.Member{member("10.0.0.2", 2), member("10.0.0.3", 3)}
	for _, r := range recs {
		ch.JoinRemote(r, false)
	}
	ch.Attach(&loop.Upstream{}) // another replica with members: wants everything
	ch.Publish(loop.MemberData, m, false, []byte("hi"))
	if sp.events != 1 || sp.unicasts != 0 {
		t.Fatalf("events %d, unicasts %d: want one event and no copy per remote member", sp.events, sp.unicasts)
	}
	ch.Publish(loop.MemberData, recs[0], false, []byte("from afar"))
	h.Flush()
	if sp.events != 1 || conn.written != len("from afar") {
		t.Fatalf("events %d, local member got %d bytes", sp.events, conn.written)
	}
	ch.Broadcast(false, []byte("all"))
	if sp.broadcasts != 1 || sp.unicasts != 0 {
		t.Fatalf("broadcasts %d, unicasts %d", sp.broadcasts, sp.unicasts)
	}
}

// Alone, a kind's questions and messages to other replicas go nowhere and
// answer at once; documents are this replica's.
func TestSeamAlone(t *testing.T) {
	h := loop.NewTestHub(memLoop{})
	if h.Node() != 0 || h.Peers() != nil || h.Clustered() {
		t.Fatalf("alone: node %d, peers %v", h.Node(), h.Peers())
	}
	var got []loop.Reply
	h.Ask(3, "t", []byte("q"), func(r []loop.Reply) { got = r })
	if len(got) != 1 || got[0].Node != 3 || got[0].Answered {
		t.Fatalf("asking node 3 alone: %+v", got)
	}
	called := false
	h.Ask(loop.AllReplicas, "t", nil, func(r []loop.Reply) { called = len(r) == 0 })
	if !called {
		t.Fatal("asking every replica alone did not answer at once with no reply")
	}
	h.Tell(loop.AllReplicas, "t", []byte("x"))
	h.Answer("doc", func() []byte { return []byte("mine") })
	var parts [][]byte
	h.GatherParts("doc", func(p [][]byte) { parts = p })
	if len(parts) != 1 || string(parts[0]) != "mine" {
		t.Fatalf("parts %q", parts)
	}
}

// The hub hands the bus's questions, messages and hellos to the kinds that
// registered for them, and a kind's own through the bus.
func TestSeamQuestionsAndMessages(t *testing.T) {
	h := loop.NewTestHub(memLoop{})
	bus := &fakeBus{}
	h.AttachTestBus(bus)
	if h.Node() != 5 || len(h.Peers()) != 2 {
		t.Fatalf("node %d, peers %v", h.Node(), h.Peers())
	}
	h.OnAsk("where", func(from int, q []byte) []byte { return append([]byte{byte(from)}, q...) })
	if a := h.Asked(4, "where", []byte("x")); string(a) != "\x04x" {
		t.Fatalf("answer %q", a)
	}
	if a := h.Asked(4, "nobody", nil); a != nil {
		t.Fatalf("an unregistered topic answered %q", a)
	}
	var heard []string
	h.OnTell("news", func(from int, d []byte) { heard = append(heard, string(d)) })
	h.Told(1, "news", []byte("n1"))
	h.Told(1, "other", []byte("n2"))
	var hellos []int
	h.OnReplica(func(n int) { hellos = append(hellos, n) })
	h.ReplicaHello(7)
	if len(heard) != 1 || heard[0] != "n1" || len(hellos) != 1 || hellos[0] != 7 {
		t.Fatalf("heard %q, hellos %v", heard, hellos)
	}
	var got []loop.Reply
	h.Ask(2, "where", []byte("q"), func(r []loop.Reply) { got = r })
	h.Tell(2, "news", nil)
	if len(got) != 1 || string(got[0].Data) != "re:q" || bus.told != 1 {
		t.Fatalf("replies %+v, told %d", got, bus.told)
	}
}
