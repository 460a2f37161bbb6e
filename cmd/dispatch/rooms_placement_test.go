package main

// Where rooms go: an already loaded room wins, otherwise the strategy
// picks (fewest rooms, hash ring, random), Monoliths of the balancer's
// region first; two copies of a room are resolved by load epoch; gossip is
// a diff; unloaded counts only from the room's own Monolith.

import (
	"fmt"
	"strings"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// twoMonoliths is a balancer with two Monoliths connected.
type twoMonoliths struct {
	p     *testkit.Process
	addr  string
	m     [2]*testkit.Monolith
	links [2]*testkit.MonolithLink
}

func startTwoMonoliths(t *testing.T, opts [2]testkit.MonolithOptions, env ...string) *twoMonoliths {
	t.Helper()
	r := &twoMonoliths{}
	for i := range r.m {
		r.m[i] = testkit.StartMonolith(t, opts[i])
	}
	r.p, r.addr = testkit.StartRooms(t, append([]string{"DISPATCH_ROOMS_MONOLITHS=" + r.m[0].Addr() + "," + r.m[1].Addr()}, env...)...)
	for i, m := range r.m {
		r.links[i], _ = m.Handshake(t)
		testkit.WaitMonolithUp(t, r.p, m.ID(), 1)
	}
	return r
}

// join authenticates a client of room and returns it with the index of the
// Monolith that got its join.
func (r *twoMonoliths) join(t *testing.T, room string) (*testkit.RoomClient, int, testkit.RoomJoin) {
	t.Helper()
	c := testkit.DialRoom(t, r.addr, room)
	c.Auth(t, "t")
	i, j := testkit.ExpectJoinOnOne(t, r.links[0], r.links[1])
	return c, i, j
}

// Fewest rooms (the default): a new room goes to the Monolith with fewer
// rooms; a room already loaded goes where it is, whatever the counts.
func TestRoomsPlacementMinRooms(t *testing.T) {
	t.Parallel()
	r := startTwoMonoliths(t, [2]testkit.MonolithOptions{{}, {}})
	_, first, _ := r.join(t, "first")
	_, second, _ := r.join(t, "second")
	if first == second {
		t.Fatalf("both rooms on Monolith %d: want the one with fewer rooms", first)
	}
	// The Monolith that got "first" loads three more; a room it holds goes
	// there, a new one to the other.
	for _, name := range []string{"p1", "p2", "p3"} {
		r.links[first].Loaded(t, name, 1)
	}
	_, got, _ := r.join(t, "P2")
	if got != first {
		t.Fatalf("a loaded room went to Monolith %d, not the one that loaded it (%d)", got, first)
	}
	_, got, _ = r.join(t, "new")
	if got != second {
		t.Fatalf("a new room went to Monolith %d with more rooms", got)
	}
}

// The hash ring: every balancer that sees the same Monoliths agrees where
// a room goes, whatever order it dialled them in, and both get rooms.
func TestRoomsPlacementHashRing(t *testing.T) {
	t.Parallel()
	m := [2]*testkit.Monolith{
		testkit.StartMonolith(t, testkit.MonolithOptions{ID: "ring-monolith-a"}),
		testkit.StartMonolith(t, testkit.MonolithOptions{ID: "ring-monolith-b"}),
	}
	type balancer struct {
		addr  string
		links [2]*testkit.MonolithLink
	}
	var bs [2]balancer
	for i, order := range [2]string{m[0].Addr() + "," + m[1].Addr(), m[1].Addr() + "," + m[0].Addr()} {
		p, addr := testkit.StartRooms(t, "DISPATCH_ROOMS_STRATEGY=hash-ring", "DISPATCH_ROOMS_MONOLITHS="+order)
		bs[i].addr = addr
		for k := range m {
			bs[i].links[k], _ = m[k].Handshake(t)
			testkit.WaitMonolithUp(t, p, m[k].ID(), 1)
		}
	}
	// Links are handed out per accept; each balancer's two links are its
	// own because each handshake above was awaited in turn.
	counts := [2]int{}
	for i := range 16 {
		room := fmt.Sprintf("ring-room-%d", i)
		var where [2]int
		for b := range bs {
			c := testkit.DialRoom(t, bs[b].addr, room)
			c.Auth(t, "t")
			where[b], _ = testkit.ExpectJoinOnOne(t, bs[b].links[0], bs[b].links[1])
		}
		if where[0] != where[1] {
			t.Fatalf("%s: balancers disagree (Monolith %d and %d)", room, where[0], where[1])
		}
		counts[where[0]]++
	}
	if counts[0] == 0 || counts[1] == 0 {
		t.Fatalf("every room on one Monolith: %v", counts)
	}
}

// Random: rooms spread over both.
func TestRoomsPlacementRandom(t *testing.T) {
	t.Parallel()
	r := startTwoMonoliths(t, [2]testkit.MonolithOptions{{}, {}}, "DISPATCH_ROOMS_STRATEGY=random")
	counts := [2]int{}
	for i := range 40 {
		_, where, _ := r.join(t, fmt.Sprintf("random-%d", i))
		counts[where]++
	}
	if counts[0] == 0 || counts[1] == 0 {
		t.Fatalf("40 random placements all on one Monolith: %v", counts)
	}
}

// Region: Monoliths of the balancer's region come first, even when they
// hold more rooms; with none left there, any Monolith will do. FLY_REGION
// names the region when the setting does not.
func TestRoomsPlacementPrefersTheRegion(t *testing.T) {
	t.Parallel()
	r := startTwoMonoliths(t, [2]testkit.MonolithOptions{{Region: "syd"}, {Region: "ams"}}, "FLY_REGION=ams")
	for i := range 3 {
		if _, where, _ := r.join(t, fmt.Sprintf("region-%d", i)); where != 1 {
			t.Fatalf("room %d went to the Monolith outside the region", i)
		}
	}
	// The region's Monolith goes away: its clients reconnect elsewhere.
	r.m[1].Close()
	testkit.WaitLogLines(t, r.p, "Monolith link ended", 1)
	c := testkit.DialRoom(t, r.addr, "after")
	c.Auth(t, "t")
	r.links[0].ExpectJoin(t)
}

// Two copies of a room: the lower load epoch wins. The other Monolith is
// told to unload; the clients attached to the losing copy are closed with
// 1000 (they reconnect), and land on the winner. A later, higher epoch
// loses; an equal one changes nothing.
func TestRoomsDuplicateRoomsResolvedByEpoch(t *testing.T) {
	t.Parallel()
	r := startTwoMonoliths(t, [2]testkit.MonolithOptions{{}, {}}, "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	c1, first, j1 := r.join(t, "dup")
	other := 1 - first
	r.links[first].Loaded(t, "dup", 10)
	r.links[other].Loaded(t, "Dup", 5) // loaded there too, earlier

	if e := r.links[first].Expect(t, "unload"); string(e.Payload) != `{"room":"dup"}` {
		t.Fatalf("unload %s", e.Raw)
	}
	c1.ExpectClose(t, 1000)
	if e := r.links[first].Expect(t, "leave"); !strings.Contains(string(e.Raw), j1.Client) {
		t.Fatalf("after losing: %s", e.Raw)
	}
	c2, where, _ := r.join(t, "dup")
	if where != other {
		t.Fatal("a client of the room went to the losing copy")
	}

	// A higher epoch reported later loses.
	r.links[first].Loaded(t, "dup", 20)
	if e := r.links[first].Expect(t, "unload"); string(e.Payload) != `{"room":"dup"}` {
		t.Fatalf("unload %s", e.Raw)
	}
	// An equal epoch is kept where it was, and counted.
	r.links[first].Loaded(t, "dup", 5)
	metrics := r.p.MetricsAddr(t)
	testkit.ExpectMetric(t, metrics, 1, "dispatch_rooms_duplicates_total", "outcome", "same_epoch")
	testkit.ExpectMetric(t, metrics, 1, "dispatch_rooms_duplicates_total", "outcome", "old_copy_unloaded")
	testkit.ExpectMetric(t, metrics, 1, "dispatch_rooms_duplicates_total", "outcome", "new_copy_unloaded")
	r.links[other].RoomMsg(t, "dup", "", `"winner"`)
	c2.Expect(t, `"winner"`)
}

// Gossip is a diff against what the balancer holds for that Monolith:
// listed rooms are mapped, rooms it stops listing are unmapped and their
// clients closed with 1000; a room placed here whose clients wait for it
// to load survives a gossip that crossed their join.
func TestRoomsGossipIsADiff(t *testing.T) {
	t.Parallel()
	r := startTwoMonoliths(t, [2]testkit.MonolithOptions{{}, {}})
	g := r.links[0]
	g.Gossip(t, testkit.GossipRoom{Meta: testkit.RoomMeta("a", true, 1), Epoch: 1}, testkit.GossipRoom{Meta: testkit.RoomMeta("b", true, 2), Epoch: 2})
	cb, where, _ := r.join(t, "b")
	if where != 0 {
		t.Fatal("a gossiped room went to the other Monolith")
	}
	// A room placed on Monolith 1 by a join, not loaded yet, and an empty
	// gossip from it: the waiting client stays.
	fresh, whereFresh, _ := r.join(t, "fresh")
	if whereFresh != 1 {
		t.Fatal("fresh room not placed on the emptier Monolith")
	}
	r.links[1].Gossip(t)

	g.Gossip(t, testkit.GossipRoom{Meta: testkit.RoomMeta("a", true, 1), Epoch: 1})
	cb.ExpectClose(t, 1000)

	r.links[1].RoomMsg(t, "fresh", "", `"still placed"`)
	fresh.Expect(t, `"still placed"`)
}

// unloaded removes a room only when it comes from the room's Monolith.
func TestRoomsUnloadedOnlyFromTheRoomsMonolith(t *testing.T) {
	t.Parallel()
	r := startTwoMonoliths(t, [2]testkit.MonolithOptions{{}, {}})
	c, where, _ := r.join(t, "x")
	r.links[where].Loaded(t, "x", 3)
	other := 1 - where
	r.links[other].Send(t, "unloaded", map[string]any{"name": "x", "reason": "Keepalive"})
	r.links[where].RoomMsg(t, "x", "", `"kept"`)
	c.Expect(t, `"kept"`)
	r.links[where].Send(t, "unloaded", map[string]any{"name": "X", "reason": "Commanded"})
	c.ExpectClose(t, 1000)
}
