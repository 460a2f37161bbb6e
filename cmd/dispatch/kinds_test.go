package main

// Channel kinds: the robustness and soak suites run against every way the
// server relays raw TCP producers to drivers. A dispatch TCP port (devices
// dial the port, drivers register with tcp_dispatch?port&accept) and a TCP
// socket group (members dial the group listener and send a join line,
// drivers attach with group_dispatch?group) differ in how a driver attaches,
// how a producer connects, what ids it gets and how its counts show; they
// share the driver's side of the wire: OPENED, RECEIVED, CLOSED by id, and
// WRITE and CLOSE by id back.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// channelKind is one way of relaying producers to drivers.
type channelKind interface {
	String() string
	// env is what a server needs for this kind.
	env() []string
	// newChannel names a fresh channel: a free port, an unused group id.
	newChannel(t *testing.T) *channel
	// open attaches a first driver admitting accept to a fresh channel;
	// opts apply to the driver's socket.
	open(t *testing.T, s testkit.Server, accept string, opts ...testkit.DialOption) (*testkit.Driver, *channel)
	// target is the upgrade target of another driver on ch.
	target(ch *channel, accept string) string
	// dial connects a producer to ch from ip and, where the kind wants one,
	// sends its join line (the server may not have taken it yet).
	dial(s testkit.Server, ch *channel, ip string, opts ...testkit.DialOption) (*net.TCPConn, error)
	// checkID says what is wrong, if anything, with id as the id of the
	// next producer announced on ch, and records it.
	checkID(ch *channel, id uint64) error
	// counts reads how many drivers and producers ch has now.
	counts(t *testing.T, s testkit.Server, ch *channel) (drivers, producers int)
	// waitCounts waits until ch has exactly these drivers and producers
	// (dispatch: and no other port is open).
	waitCounts(t *testing.T, s testkit.Server, ch *channel, drivers, producers int)
	// waitIdle waits until the server holds no channel of any kind.
	waitIdle(t *testing.T, s testkit.Server)
	// producersHear says whether a producer hears what the others send.
	producersHear() bool
	// announcesPresent says whether a driver that attaches late is told
	// OPENED for the producers already there.
	announcesPresent() bool
	// slowProducer is how the server cuts a producer that stops reading:
	// the variable bounding its pending output, the log line and the
	// forced_disconnects_total label.
	slowProducer() (pendingEnv, logLine, metricKind string)
}

// channel is one dispatch port or one socket group, with what the tests
// learnt of the ids announced on it.
type channel struct {
	port  int    // dispatch: the device port
	group string // group: the group id

	announced int    // producers announced so far
	lastID    uint64 // the last id announced
}

var kinds = []channelKind{dispatchKind{}, groupKind{}}

// forEachKind runs f as a parallel subtest per channel kind.
func forEachKind(t *testing.T, f func(t *testing.T, k channelKind)) {
	t.Parallel()
	for _, k := range kinds {
		t.Run(k.String(), func(t *testing.T) {
			t.Parallel()
			f(t, k)
		})
	}
}

// startRobustServer starts the binary for kind k with metrics on a free
// loopback port and device ports bound to 127.0.0.1; env adds or overrides
// variables (every flag has one; the last value wins).
func startRobustServer(t *testing.T, k channelKind, env ...string) *testkit.Process {
	t.Helper()
	base := append([]string{"DISPATCH_METRICS_ADDR=127.0.0.1:0", "DISPATCH_DEVICE_HOST=" + testkit.Localhost}, k.env()...)
	return testkit.Start(t, append(base, env...)...)
}

// attach dials another driver on ch, failing the test on error.
func attach(t *testing.T, s testkit.Server, k channelKind, ch *channel, accept string) *testkit.Driver {
	t.Helper()
	return testkit.MustDialDriver(t, s, k.target(ch, accept))
}

// connect dials a producer with k.dial, failing the test on error; the
// connection is closed when the test ends.
func connect(t *testing.T, s testkit.Server, k channelKind, ch *channel, ip string, opts ...testkit.DialOption) *net.TCPConn {
	t.Helper()
	conn, err := k.dial(s, ch, ip, opts...)
	if err != nil {
		t.Fatalf("%s producer from %s: %v", k, ip, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// expectOpened reads d's next message, which must be exactly OPENED for
// the next producer from ip on ch, and returns the producer's id.
func expectOpened(t *testing.T, k channelKind, d *testkit.Driver, ch *channel, ip string) uint64 {
	t.Helper()
	raw := d.Next()
	m, err := codec.ParseMessage(raw)
	if err != nil || m.Type != codec.Opened || !bytes.Equal(raw, codec.AppendMessage(nil, codec.Opened, []byte(ip), m.ID, nil)) {
		t.Fatalf("driver got %s, want OPENED for a producer from %s", testkit.Describe(raw), ip)
	}
	if err := k.checkID(ch, m.ID); err != nil {
		t.Fatalf("OPENED from %s: %v", ip, err)
	}
	return m.ID
}

// ---------------------------------------------------------------------------

// dispatchKind is a dispatch TCP port: devices dial it, ids count from 0
// per port.
type dispatchKind struct{}

func (dispatchKind) String() string { return "dispatch" }
func (dispatchKind) env() []string  { return nil }

func (dispatchKind) newChannel(t *testing.T) *channel {
	return &channel{port: testkit.FreeTCPPort(t)}
}

func (dispatchKind) open(t *testing.T, s testkit.Server, accept string, opts ...testkit.DialOption) (*testkit.Driver, *channel) {
	t.Helper()
	var d *testkit.Driver
	port := testkit.OnFreePort(t, testkit.FreeTCPPort, func(port int) (err error) {
		d, err = testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.BasePath, "tcp", port, accept), testkit.DriverHeader(s), opts...)
		return err
	})
	return d, &channel{port: port}
}

func (dispatchKind) target(ch *channel, accept string) string {
	return testkit.DispatchTarget(testkit.BasePath, "tcp", ch.port, accept)
}

func (dispatchKind) dial(_ testkit.Server, ch *channel, ip string, opts ...testkit.DialOption) (*net.TCPConn, error) {
	return testkit.TryDialDevice(ip, ch.port, opts...)
}

func (dispatchKind) checkID(ch *channel, id uint64) error {
	want := uint64(ch.announced)
	ch.announced++
	ch.lastID = id
	if id != want {
		return fmt.Errorf("id %d, want %d (ids count from 0 per port, refused devices take none)", id, want)
	}
	return nil
}

func (dispatchKind) counts(t *testing.T, s testkit.Server, ch *channel) (int, int) {
	t.Helper()
	body := testkit.StatsBody(t, s, testkit.BasePath)
	var doc struct {
		Listeners map[string]int `json:"tcp_listeners"`
		Clients   map[string]int `json:"tcp_clients"`
	}
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("stats document %q: %v", body, err)
	}
	port := strconv.Itoa(ch.port)
	return doc.Listeners[port], doc.Clients[port]
}

func (dispatchKind) waitCounts(t *testing.T, s testkit.Server, ch *channel, drivers, producers int) {
	t.Helper()
	testkit.WaitForStats(t, s, testkit.TCPStats(ch.port, drivers, producers))
}

func (dispatchKind) waitIdle(t *testing.T, s testkit.Server) {
	t.Helper()
	testkit.WaitForStats(t, s, testkit.EmptyStats)
}

func (dispatchKind) producersHear() bool    { return false }
func (dispatchKind) announcesPresent() bool { return false }

func (dispatchKind) slowProducer() (string, string, string) {
	return "DISPATCH_MAX_DEVICE_PENDING", "device not reading", "slow_device"
}

// ---------------------------------------------------------------------------

// groupKind is a TCP socket group: members dial the group listener and join
// with a line, hear each other, and drivers attach to the group. Member ids
// are unique per server and grow.
type groupKind struct{}

func (groupKind) String() string { return "group" }
func (groupKind) env() []string  { return []string{"DISPATCH_GROUP_TCP=127.0.0.1:0"} }

func (groupKind) newChannel(t *testing.T) *channel {
	return &channel{group: "g-" + testkit.RandomHex(t, 6)}
}

func (k groupKind) open(t *testing.T, s testkit.Server, accept string, opts ...testkit.DialOption) (*testkit.Driver, *channel) {
	t.Helper()
	ch := k.newChannel(t)
	d, err := testkit.DialDriver(t, s, k.target(ch, accept), testkit.DriverHeader(s), opts...)
	if err != nil {
		t.Fatalf("driver on group %s: %v", ch.group, err)
	}
	return d, ch
}

func (groupKind) target(ch *channel, accept string) string {
	return testkit.GroupTarget(testkit.BasePath, ch.group, accept)
}

func (groupKind) dial(s testkit.Server, ch *channel, ip string, opts ...testkit.DialOption) (*net.TCPConn, error) {
	conn, err := testkit.TryDialMember(s, ip, opts...)
	if err != nil {
		return nil, err
	}
	_ = conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
	if _, err := conn.Write(testkit.JoinLine(ch.group)); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (groupKind) checkID(ch *channel, id uint64) error {
	first := ch.announced == 0
	ch.announced++
	last := ch.lastID
	ch.lastID = id
	if !first && id <= last {
		return fmt.Errorf("id %d after %d (member ids are never reused and grow)", id, last)
	}
	return nil
}

func (groupKind) counts(t *testing.T, s testkit.Server, ch *channel) (int, int) {
	t.Helper()
	c := testkit.GroupCountsOf(t, s, "tcp", ch.group)
	return c.Upstreams, c.Members
}

func (groupKind) waitCounts(t *testing.T, s testkit.Server, ch *channel, drivers, producers int) {
	t.Helper()
	testkit.WaitGroupCounts(t, s, "tcp", ch.group, testkit.GroupCounts{Members: producers, Upstreams: drivers})
}

// waitIdle waits for the groups document to list no group (a group with
// neither members nor drivers is forgotten) and the dispatch stats to stay
// empty.
func (groupKind) waitIdle(t *testing.T, s testkit.Server) {
	t.Helper()
	const none = `{"tcp":{},"udp":{}}`
	var doc string
	if !testkit.Poll(testkit.EventTimeout, func() bool { doc = testkit.GroupsDocument(t, s); return doc == none }) {
		t.Fatalf("groups document %s, want %s", doc, none)
	}
	testkit.WaitForStats(t, s, testkit.EmptyStats)
}

func (groupKind) producersHear() bool    { return true }
func (groupKind) announcesPresent() bool { return true }

func (groupKind) slowProducer() (string, string, string) {
	return "DISPATCH_MAX_MEMBER_PENDING", "socket group member not keeping up", "slow_member"
}

// ---------------------------------------------------------------------------

// witness is a driver and a producer on their own channel that prove,
// between hostile acts, that the server still serves everyone else.
type witness struct {
	d   *testkit.Driver
	dev *net.TCPConn
	ch  *channel
	id  uint64
	n   int
}

func newWitness(t *testing.T, s testkit.Server, k channelKind) *witness {
	t.Helper()
	d, ch := k.open(t, s, testkit.Localhost)
	dev := connect(t, s, k, ch, testkit.Localhost)
	id := expectOpened(t, k, d, ch, testkit.Localhost)
	return &witness{d: d, dev: dev, ch: ch, id: id}
}

// attach dials another driver on the witness's channel and reads the
// OPENED the kind announces to a late driver for the witness's producer.
func (w *witness) attach(t *testing.T, s testkit.Server, k channelKind) *testkit.Driver {
	t.Helper()
	d := attach(t, s, k, w.ch, testkit.Localhost)
	if k.announcesPresent() {
		d.ExpectOpened(testkit.Localhost, w.id)
	}
	return d
}

// check round-trips one message each way.
func (w *witness) check(t *testing.T) {
	t.Helper()
	w.n++
	up := fmt.Appendf(nil, "witness up %d", w.n)
	testkit.Send(t, w.dev, up)
	if got := w.d.ExpectStream(testkit.Localhost, w.id, len(up)); !bytes.Equal(got, up) {
		t.Fatalf("witness driver got %q, want %q", got, up)
	}
	down := fmt.Appendf(nil, "witness down %d", w.n)
	w.d.Write(testkit.Localhost, w.id, down)
	testkit.ExpectReceives(t, w.dev, down)
}
