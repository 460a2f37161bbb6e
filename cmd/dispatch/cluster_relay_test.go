package main

// Relay topics across three replicas with embedded NATS: members on every
// replica hear each other, in order per writer, with their rights; a code
// issued by one replica opens the WebSocket on another once; watchers stay
// with their replica's channel; a replica killed takes only its members
// away; a deny on one replica closes the booking everywhere, is written by
// every replica, and reaches a replica that was down when it was made.

import (
	"encoding/binary"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	bolt "go.etcd.io/bbolt"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop/relay"
)

// relayAudience is the access URL the replicas share, as behind one load
// balancer: tokens name it, whichever replica checks them.
const relayAudience = "http://relay.cluster.test"

// relayCluster starts n replicas with the relay on, and returns each
// replica's relay. dataDirs gives each replica a deny-list store of its own.
func relayCluster(t *testing.T, n int, dataDirs bool) (*testkit.Cluster, []*testkit.Relay, string) {
	t.Helper()
	secret := "relay-secret-" + testkit.RandomHex(t, 16)
	opts := testkit.ClusterOptions{Replicas: n, Env: append(testkit.RelayEnv(secret),
		"DISPATCH_RELAY_ACCESS_URL="+relayAudience, "DISPATCH_METRICS_ADDR=127.0.0.1:0", "DISPATCH_GROUP_TCP=0")}
	if dataDirs {
		base := t.TempDir()
		opts.ReplicaEnv = func(i int) []string {
			return []string{"DISPATCH_RELAY_DATA_DIR=" + filepath.Join(base, "replica-"+strconv.Itoa(i))}
		}
	}
	c := testkit.StartCluster(t, opts)
	relays := make([]*testkit.Relay, n)
	for i, r := range c.Replicas {
		relays[i] = testkit.ReplicaRelay(t, r.Process, secret, relayAudience)
	}
	return c, relays, secret
}

// waitTopicSpans waits until every replica has heard that every other has
// clients of topic: from then on their messages reach each other.
func waitTopicSpans(t *testing.T, c *testkit.Cluster, topic string) {
	t.Helper()
	for _, r := range c.Replicas {
		for _, from := range c.Replicas {
			if r != from && !r.HasExited() && !from.HasExited() {
				r.WaitMembersInterest(t, from, "relay:"+topic)
			}
		}
	}
}

// readUntil reads a client's messages until every one of want has arrived,
// in the order each writer sent them (want lists each writer's messages in
// order, keyed by writer); any other message fails the test.
func readUntil(t *testing.T, who string, c *testkit.RelayClient, want map[string][]string, ops map[string]ws.OpCode) {
	t.Helper()
	next := map[string]int{}
	left := 0
	for _, msgs := range want {
		left += len(msgs)
	}
	for left > 0 {
		op, msg, err := c.NextMessage()
		if err != nil {
			t.Fatalf("%s: reading: %v (still %d to come)", who, err, left)
		}
		writer, _, _ := strings.Cut(string(msg), "#")
		i := next[writer]
		if i >= len(want[writer]) || want[writer][i] != string(msg) {
			t.Fatalf("%s: got %q, want writer %q's message %d of %q", who, msg, writer, i, want[writer])
		}
		if op != ops[writer] {
			t.Fatalf("%s: %q came as %v, sent as %v", who, msg, op, ops[writer])
		}
		next[writer]++
		left--
	}
}

// Members of one topic on three replicas hear each other: each message
// reaches every reader but its sender, as its own frame with its opcode,
// in order per writer; read-only and write-only hold across replicas.
// A code issued on replica 1 opens the WebSocket on replica 2 once, and
// is refused the second time wherever it is presented. The status answers
// for the cluster. A replica killed takes its members away and nothing else.
func TestClusterRelayTopicSpansReplicas(t *testing.T) {
	t.Parallel()
	c, relays, _ := relayCluster(t, 3, false)
	topic := "lab-" + testkit.RandomHex(t, 4)

	// A reader-writer on each replica, a read-only client on replica 1 and
	// a write-only one on replica 3.
	rw := make([]*testkit.RelayClient, 3)
	for i := range rw {
		rw[i] = relays[i].Join(t, topic)
	}
	ro := relays[0].Join(t, topic, relay.ScopeRead)
	wo := relays[2].Join(t, topic, relay.ScopeWrite)
	waitTopicSpans(t, c, topic)
	for _, r := range relays {
		r.WaitRelayConns(t, topic, 5) // every replica lists every connection
	}

	// The read-only client's message is discarded where it was sent.
	ro.SendText("ro#never")
	const perWriter = 40
	writers := map[string]*testkit.RelayClient{"w0": rw[0], "w1": rw[1], "w2": rw[2], "wo": wo}
	ops := map[string]ws.OpCode{"w0": ws.OpText, "w1": ws.OpBinary, "w2": ws.OpText, "wo": ws.OpText}
	sent := map[string][]string{}
	for seq := range perWriter {
		for name, w := range writers {
			msg := fmt.Sprintf("%s#%d", name, seq)
			sent[name] = append(sent[name], msg)
			if ops[name] == ws.OpBinary {
				_ = w.Conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
				if err := wsWriteBinary(w, []byte(msg)); err != nil {
					t.Fatal(err)
				}
			} else {
				w.SendText(msg)
			}
		}
	}
	others := func(self string) map[string][]string {
		m := map[string][]string{}
		for name, msgs := range sent {
			if name != self {
				m[name] = msgs
			}
		}
		return m
	}
	for i, c := range rw {
		readUntil(t, fmt.Sprintf("reader-writer on replica %d", i+1), c, others(fmt.Sprintf("w%d", i)), ops)
	}
	readUntil(t, "read-only client on replica 1", ro, others(""), ops)
	// Whatever was queued for them came before the pong: nothing more, not
	// their own messages, and nothing at all for the write-only client.
	for _, c := range append(rw, ro, wo) {
		c.ExpectNoMessage()
	}
	testkit.ExpectMetric(t, relays[0].MetricsAddr(t), 1, "dispatch_discarded_messages_total", "kind", "relay", "role", "client")
	// Replica 2 counts as delivered the messages replicas 1 and 3 published
	// to its one reader.
	testkit.ExpectMetric(t, relays[1].MetricsAddr(t), 3*perWriter, "dispatch_relay_messages_total", "direction", "out")

	// A code issued by replica 1, presented to replica 2.
	uri := relays[0].CodeURI(t, topic, relays[0].Token(t, testkit.TokenSpec{Topic: topic}))
	late, err := testkit.DialRelay(t, relays[1].At(uri))
	if err != nil {
		t.Fatalf("a code of replica 1 presented to replica 2: %v", err)
	}
	for _, at := range []*testkit.Relay{relays[2], relays[0], relays[1]} {
		testkit.ExpectRelayError(t, "the code again at "+at.Addr, testkit.UpgradeAnswer(t, at.At(uri)), http.StatusUnauthorized, string(relay.ReasonCode))
	}
	testkit.ExpectMetric(t, relays[1].MetricsAddr(t), 1, "dispatch_relay_remote_codes_total", "outcome", "redeemed")
	relays[2].WaitRelayConns(t, topic, 6)
	rw[2].SendText("w2#late")
	late.ExpectMessage(ws.OpText, []byte("w2#late"))
	for _, c := range []*testkit.RelayClient{rw[0], rw[1], ro} {
		c.ExpectMessage(ws.OpText, []byte("w2#late"))
	}

	// Replica 3 dies: the others carry on without its members.
	c.Replicas[2].Kill(t)
	relays[0].WaitRelayConns(t, topic, 4)
	rw[0].SendText("w0#after")
	for _, c := range []*testkit.RelayClient{rw[1], late} {
		c.ExpectMessage(ws.OpText, []byte("w0#after"))
	}
	ro.ExpectMessage(ws.OpText, []byte("w0#after"))
	rw[1].SendText("w1#after")
	rw[0].ExpectMessage(ws.OpText, []byte("w1#after"))
	ro.ExpectMessage(ws.OpText, []byte("w1#after"))
}

func wsWriteBinary(c *testkit.RelayClient, payload []byte) error {
	return wsutil.WriteClientMessage(c.Conn, ws.OpBinary, payload)
}

// expectParsedReceived reads a driver-protocol client until RECEIVED data.
func expectParsedReceived(t *testing.T, who string, d *testkit.Driver, data []byte) {
	t.Helper()
	for {
		m := d.NextParsed()
		switch {
		case m.Type == codec.Received && string(m.Data) == string(data):
			return
		case m.Type != codec.Opened:
			t.Fatalf("%s: got %s, want RECEIVED %q", who, testkit.DescribeMessage(m), data)
		}
	}
}

// A watcher looks on at its replica's channel and changes nothing about
// it elsewhere: a device no driver admits stays refused on the other
// replicas.
func TestClusterRelayWatcherStaysWithItsReplica(t *testing.T) {
	t.Parallel()
	c, relays, _ := relayCluster(t, 2, false)
	r1, r2 := c.Replicas[0], c.Replicas[1]
	port := testkit.ClusterPort(t)
	d1 := testkit.TCPDriver(t, r1, port, testkit.Localhost)
	testkit.Eventually(t, testkit.EventTimeout, "port open on replica 2", func() bool { return r2.PortOpen(port) })
	w := relays[1].Join(t, fmt.Sprintf("dispatch:tcp:%d", port), relay.ScopeRead)
	// A driver on replica 2 too, so that replica 1 hears replica 2's
	// interest: it must name the driver's accept list only.
	testkit.TCPDriver(t, r2, port, testkit.Localhost)
	r1.WaitInterest(t, r2, fmt.Sprintf("dispatch:tcp:%d", port))
	probe, err := testkit.Dial(testkit.ProbeIP, fmt.Sprintf("%s:%d", r1.DeviceHost, port))
	if err == nil {
		defer probe.Close()
		testkit.ExpectDisconnected(t, probe)
	}
	// The admitted device is heard by the driver, and by the watcher on
	// replica 2 through that replica's driver's interest.
	device := r1.DialDevice(t, port)
	testkit.Send(t, device, []byte("hello"))
	expectParsedReceived(t, "the driver on replica 1", d1, []byte("hello"))
	expectParsedReceived(t, "the watcher on replica 2", w.Driver, []byte("hello"))
}

// A deny on replica 2 closes the booking's connections on every replica
// at once with a close frame, voids its codes wherever they were issued,
// and is written to every replica's store; a replica down when an allow
// is made learns it when it comes back.
func TestClusterRelayDenySpansReplicas(t *testing.T) {
	t.Parallel()
	c, relays, secret := relayCluster(t, 3, true)
	topic := "booked-" + testkit.RandomHex(t, 4)
	cancelled := testkit.TokenSpec{Topic: topic, BookingID: "bk-cancelled"}
	kept := testkit.TokenSpec{Topic: topic, BookingID: "bk-kept"}
	var doomed []*testkit.RelayClient
	for _, r := range relays {
		doomed = append(doomed, r.JoinWith(t, cancelled))
	}
	keep1, keep3 := relays[0].JoinWith(t, kept), relays[2].JoinWith(t, kept)
	unused := []string{relays[0].CodeURI(t, topic, relays[0].Token(t, cancelled)), relays[2].CodeURI(t, topic, relays[2].Token(t, cancelled))}
	waitTopicSpans(t, c, topic)

	exp := strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)
	if resp := relays[1].Admin(t, http.MethodPost, "/bids/deny?bid=bk-cancelled&exp="+exp, relay.ScopeAdmin); resp.Status != http.StatusNoContent {
		t.Fatalf("deny on replica 2: %d %q", resp.Status, resp.Body)
	}
	for i, d := range doomed {
		t.Logf("replica %d's client of the booking", i+1)
		d.ExpectClose(ws.StatusPolicyViolation, "deny-listed")
	}
	// Its unused codes are void wherever they are presented.
	testkit.ExpectRelayError(t, "replica 1's code at replica 1", testkit.UpgradeAnswer(t, unused[0]), http.StatusUnauthorized, string(relay.ReasonCode))
	testkit.ExpectRelayError(t, "replica 3's code at replica 2", testkit.UpgradeAnswer(t, relays[1].At(unused[1])), http.StatusUnauthorized, string(relay.ReasonCode))
	for _, r := range relays {
		testkit.ExpectRelayError(t, "access for the denied booking at "+r.Addr, r.Access(t, topic, r.Token(t, cancelled)), http.StatusBadRequest, string(relay.ReasonDenied))
	}
	expectBids(t, relays[2], "/bids/deny", "bk-cancelled")
	// The other booking goes on, across replicas.
	keep1.SendText("still booked")
	keep3.ExpectMessage(ws.OpText, []byte("still booked"))

	// Every replica wrote it: replica 1's store, read while it is stopped,
	// holds it, and so does the replica when it runs again.
	c.Stop(0)
	if exp, ok := storedDeny(t, c.Replicas[0], "bk-cancelled"); !ok || exp.Before(time.Now()) {
		t.Fatalf("replica 1's store: deny of bk-cancelled %v, %v", exp, ok)
	}
	c.Restart(t, 0)
	relays[0] = testkit.ReplicaRelay(t, c.Replicas[0].Process, secret, relayAudience)
	testkit.ExpectRelayError(t, "access at replica 1 after its restart", relays[0].Access(t, topic, relays[0].Token(t, cancelled)), http.StatusBadRequest, string(relay.ReasonDenied))

	// Replica 3 is down when the booking is allowed again on replica 1; it
	// learns it when it comes back, although its own store says denied.
	c.Stop(2)
	if resp := relays[0].Admin(t, http.MethodPost, "/bids/allow?bid=bk-cancelled&exp="+exp, relay.ScopeAdmin); resp.Status != http.StatusNoContent {
		t.Fatalf("allow on replica 1: %d %q", resp.Status, resp.Body)
	}
	relays[1].JoinWith(t, cancelled)
	c.Restart(t, 2)
	relays[2] = testkit.ReplicaRelay(t, c.Replicas[2].Process, secret, relayAudience)
	testkit.Eventually(t, testkit.EventTimeout, "replica 3 learns the allow", func() bool {
		return relays[2].Access(t, topic, relays[2].Token(t, cancelled)).Status == http.StatusOK
	})
	expectBids(t, relays[1], "/bids/deny")
	c.Stop(2)
	if _, ok := storedDeny(t, c.Replicas[2], "bk-cancelled"); ok {
		t.Fatal("replica 3's store still denies bk-cancelled after it learnt the allow")
	}
}

// storedDeny reads a stopped replica's deny-list store.
func storedDeny(t *testing.T, r *testkit.Replica, bid string) (time.Time, bool) {
	t.Helper()
	var dir string
	for _, line := range strings.Split(r.Logs(), "\n") {
		if strings.Contains(line, "relay listening") {
			dir = testkit.LogField(line, "deny_list")
		}
	}
	if dir == "" {
		t.Fatalf("replica %d logged no deny-list directory", r.Index)
	}
	db, err := bolt.Open(filepath.Join(dir, "relay.db"), 0o600, &bolt.Options{Timeout: testkit.EventTimeout, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var exp time.Time
	var ok bool
	_ = db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte("deny")); b != nil {
			if v := b.Get([]byte(bid)); len(v) >= 8 {
				exp, ok = time.Unix(int64(binary.BigEndian.Uint64(v)), 0), true
			}
		}
		return nil
	})
	return exp, ok
}
