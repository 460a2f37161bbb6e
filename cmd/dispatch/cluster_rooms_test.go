package main

// Rooms across three replicas with embedded NATS. Each replica is a
// balancer of its own to every Monolith, as several original balancers
// are, so a room's clients may sit on any replica: the Monolith hears each
// through the link of its replica and answers there. What the replicas
// agree on over the bus is where a new room goes (the placer replica
// decides), so that clients of one room on different replicas join the
// same Monolith; and /api/state answers for all of them.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"syscall"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

const roomsClusterKey = "rooms-cluster-api-key"

// roomsCluster is n replicas with the room balancer on, linked to two
// emulated Monoliths; env adds to every replica's variables.
type roomsCluster struct {
	c     *testkit.Cluster
	addrs []string // each replica's balancer listener
	m     [2]*testkit.Monolith
	links [2][]*testkit.MonolithLink // by Monolith, then by replica
}

func startRoomsCluster(t *testing.T, n int, env ...string) *roomsCluster {
	t.Helper()
	rc := &roomsCluster{}
	for i := range rc.m {
		rc.m[i] = testkit.StartMonolith(t, testkit.MonolithOptions{ID: fmt.Sprintf("cluster-monolith-%d", i)})
	}
	rc.c = testkit.StartCluster(t, testkit.ClusterOptions{Replicas: n, Env: append([]string{
		"DISPATCH_ROOMS_ADDR=127.0.0.1:0", "DISPATCH_ROOMS_MONOLITHS=" + rc.m[0].Addr() + "," + rc.m[1].Addr(),
		"DISPATCH_ROOMS_API_KEY=" + roomsClusterKey, "DISPATCH_METRICS_ADDR=127.0.0.1:0", "DISPATCH_GROUP_TCP=0",
	}, env...)})
	byBalancer := map[string]int{}
	for _, r := range rc.c.Replicas {
		rc.addrs = append(rc.addrs, testkit.RoomsAddr(t, r.Process))
		byBalancer[testkit.BalancerID(t, r.Process)] = r.Index
	}
	// Each Monolith accepts one link per replica, in any order: the init
	// names the balancer, hence the replica.
	for mi, m := range rc.m {
		rc.links[mi] = make([]*testkit.MonolithLink, n)
		for range n {
			l, init := m.Handshake(t)
			id, _ := init["id"].(string)
			i, ok := byBalancer[id]
			if !ok || rc.links[mi][i] != nil {
				t.Fatalf("Monolith %d: init %v names no replica, or one linked twice", mi, init)
			}
			rc.links[mi][i] = l
		}
		for _, r := range rc.c.Replicas {
			testkit.WaitMonolithUp(t, r.Process, m.ID(), 1)
		}
	}
	return rc
}

// byNode lists the live replicas' indexes, lowest node number first: the
// first is the placer.
func (rc *roomsCluster) byNode(t *testing.T) []int {
	t.Helper()
	var live []int
	for _, r := range rc.c.Replicas {
		if !r.HasExited() {
			live = append(live, r.Index)
		}
	}
	sort.Slice(live, func(a, b int) bool {
		return rc.c.Replicas[live[a]].Node(t) < rc.c.Replicas[live[b]].Node(t)
	})
	return live
}

// join authenticates a client of room on replica i, sends it early (before
// its join can have happened), and returns it with the Monolith that got
// its join on replica i's link, after checking that the early messages
// followed the join there, in order.
func (rc *roomsCluster) join(t *testing.T, i int, room string, early ...string) (*testkit.RoomClient, int, testkit.RoomJoin) {
	t.Helper()
	c := testkit.DialRoom(t, rc.addrs[i], room)
	c.Auth(t, "token-"+room)
	for _, msg := range early {
		c.SendText(t, msg)
	}
	m, j := testkit.ExpectJoinOnOne(t, rc.links[0][i], rc.links[1][i])
	if j.Room != room || j.Token != "token-"+room {
		t.Fatalf("replica %d: join %+v for room %q", i, j, room)
	}
	for _, msg := range early {
		expectClientMsg(t, rc.links[m][i], j.Client, msg)
	}
	return c, m, j
}

// expectClientMsg reads the link's next message, which must carry msg
// from client.
func expectClientMsg(t *testing.T, l *testkit.MonolithLink, client, msg string) {
	t.Helper()
	e := l.Expect(t, "client_msg")
	var p struct {
		ClientID string          `json:"client_id"`
		Payload  json.RawMessage `json:"payload"`
	}
	if json.Unmarshal(e.Payload, &p) != nil || p.ClientID != client || string(p.Payload) != msg {
		t.Fatalf("client_msg %s, want %s from %s", e.Raw, msg, client)
	}
}

// Clients of one room on three replicas join the same Monolith, whichever
// replica opens the room, though each new room goes to a random Monolith
// (replicas choosing alone would disagree half the time); what
// a client sends between its auth and its join follows the join; the
// Monolith's broadcast on each link and a unicast on one reach the right
// clients; /api/state on any replica lists every replica's clients.
func TestClusterRoomsSpanReplicas(t *testing.T) {
	t.Parallel()
	rc := startRoomsCluster(t, 3, "DISPATCH_ROOMS_STRATEGY=random")
	placer := rc.byNode(t)[0]
	type seat struct {
		c *testkit.RoomClient
		j testkit.RoomJoin
	}
	var first [3]seat // room-0's clients, by replica
	where := -1
	for k := range 6 {
		room := fmt.Sprintf("Movie-%d", k)
		// Each room is opened by another replica, the placer too.
		order := []int{k % 3, (k + 1) % 3, (k + 2) % 3}
		home := -1
		for n, i := range order {
			early := []string{}
			if n == 0 {
				early = []string{fmt.Sprintf(`{"early":%d}`, k), `{"action":"req","n":2}`}
			}
			c, m, j := rc.join(t, i, room, early...)
			if home == -1 {
				home = m
			}
			if m != home {
				t.Fatalf("%s: replica %d joined Monolith %d, replica %d Monolith %d", room, order[0], home, i, m)
			}
			if k == 0 {
				first[i] = seat{c, j}
			}
		}
		if k == 0 {
			where = home
		}
	}
	testkit.ExpectMetricAtLeast(t, rc.c.Replicas[(placer+1)%3].MetricsAddr(t), 1, "dispatch_rooms_placer_asks_total", "outcome", "placed_by_placer")

	// The Monolith loads the room and speaks to it through every link.
	for i := range 3 {
		rc.links[where][i].Loaded(t, "Movie-0", 1)
	}
	for i := range 3 {
		rc.links[where][i].RoomMsg(t, "Movie-0", "", `{"to":"everyone"}`)
	}
	rc.links[where][2].RoomMsg(t, "Movie-0", first[2].j.Client, `{"to":"two"}`)
	for i := range 3 {
		first[i].c.Expect(t, `{"to":"everyone"}`)
	}
	first[2].c.Expect(t, `{"to":"two"}`)
	first[0].c.SendText(t, `{"from":"zero"}`)
	expectClientMsg(t, rc.links[where][0], first[0].j.Client, `{"from":"zero"}`)

	status, _, body := testkit.RoomsGet(t, rc.addrs[1], "/api/state", "Authorization: Bearer "+roomsClusterKey)
	if status != http.StatusOK {
		t.Fatalf("/api/state: %d %s", status, body)
	}
	var state stateDocForTest
	if err := json.Unmarshal([]byte(body), &state); err != nil {
		t.Fatalf("/api/state %s: %v", body, err)
	}
	clients := map[string]bool{}
	for _, m := range state.Monoliths {
		for _, r := range m.Rooms {
			if r.Name == "Movie-0" {
				if m.ID != rc.m[where].ID() {
					t.Fatalf("/api/state puts Movie-0 on %s: %s", m.ID, body)
				}
				for _, c := range r.Clients {
					clients[c.ID] = true
				}
			}
		}
	}
	for i, s := range first {
		if !clients[s.j.Client] {
			t.Fatalf("/api/state on replica 1 misses replica %d's client %s: %s", i, s.j.Client, body)
		}
	}

	first[2].c.CloseNormally()
	if e := rc.links[where][2].Expect(t, "leave"); !json.Valid(e.Payload) {
		t.Fatalf("leave %s", e.Raw)
	}
}

type stateDocForTest struct {
	Monoliths []struct {
		ID    string
		Rooms []struct {
			Name    string
			Clients []struct{ ID string }
		}
	}
}

// The placer killed: the survivors notice, the next lowest node decides,
// and new rooms opened on both survivors still meet on one Monolith; a
// room's clients on the survivors keep hearing its Monolith.
func TestClusterRoomsPlacerGone(t *testing.T) {
	t.Parallel()
	rc := startRoomsCluster(t, 3)
	order := rc.byNode(t)
	placer, a, b := order[0], order[1], order[2]
	ca, m, _ := rc.join(t, a, "before")
	cb, mb, _ := rc.join(t, b, "before")
	if mb != m {
		t.Fatalf("room before: Monolith %d on replica %d, %d on replica %d", m, a, mb, b)
	}

	rc.c.Replicas[placer].Kill(t)
	for _, i := range []int{a, b} {
		r := rc.c.Replicas[i]
		testkit.Eventually(t, testkit.EventTimeout, fmt.Sprintf("replica %d notices the placer gone", i), func() bool { return r.Peers() == 1 })
	}
	for k := range 4 {
		room := fmt.Sprintf("after-%d", k)
		_, first, _ := rc.join(t, b, room) // asks the new placer, a
		_, second, _ := rc.join(t, a, room)
		if first != second {
			t.Fatalf("%s: Monolith %d on replica %d, %d on replica %d", room, first, b, second, a)
		}
	}
	testkit.ExpectMetricAtLeast(t, rc.c.Replicas[b].MetricsAddr(t), 1, "dispatch_rooms_placer_asks_total", "outcome", "placed_by_placer")
	for _, i := range []int{a, b} {
		rc.links[m][i].RoomMsg(t, "before", "", `{"still":"here"}`)
	}
	ca.Expect(t, `{"still":"here"}`)
	cb.Expect(t, `{"still":"here"}`)
}

// The placer stopped (SIGSTOP: alive to the network, silent): a client of
// a new room waits for the placer's answer until the bus gives up, and its
// replica then places the room itself; what the client sent meanwhile
// follows its join. A client that sends more than the balancer holds
// before the join is closed with 1013 to retry.
func TestClusterRoomsPlacerSilent(t *testing.T) {
	t.Parallel()
	rc := startRoomsCluster(t, 2)
	order := rc.byNode(t)
	placer, other := order[0], order[1]
	if err := rc.c.Replicas[placer].Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rc.c.Replicas[placer].Signal(syscall.SIGCONT) })

	eager := testkit.DialRoom(t, rc.addrs[other], "eager")
	eager.Auth(t, "t")
	for i := range 17 {
		eager.SendText(t, fmt.Sprintf(`{"n":%d}`, i))
	}
	early := []string{`{"early":1}`, `{"early":2}`, `{"early":3}`}
	rc.join(t, other, "patient", early...) // joins once the question has gone unanswered
	eager.ExpectClose(t, 1013)

	metrics := rc.c.Replicas[other].MetricsAddr(t)
	testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_rooms_placer_asks_total", "outcome", "unanswered")
	testkit.ExpectMetric(t, metrics, 1, "dispatch_rooms_client_messages_total", "outcome", "refused_before_join")
}
