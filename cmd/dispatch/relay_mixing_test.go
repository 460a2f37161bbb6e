package main

// Relay clients on another kind's channel: a browser watching a dispatch
// port or a socket group in the driver protocol, and answering as a driver
// when its token allows.

import (
	"net/http"
	"strconv"
	"testing"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop/relay"
)

// A read-only client on "dispatch:tcp:<port>" hears what the port's driver
// hears, as dispatch binary messages; it admits no device of its own; its
// WRITEs are discarded. A client with write answers a device as a driver
// would. When the last driver leaves, the port closes and so do the
// watchers, with a close frame.
func TestRelayWatchesADispatchPort(t *testing.T) {
	r := testkit.StartRelay(t, "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	drv, port := testkit.OpenPort(t, r, "tcp", "127.0.0.2")
	topic := "dispatch:tcp:" + strconv.Itoa(port)
	watcher := r.JoinWith(t, testkit.TokenSpec{Topic: topic, Scopes: []string{relay.ScopeRead}})
	answerer := r.JoinWith(t, testkit.TokenSpec{Topic: topic, Scopes: []string{relay.ScopeRead, relay.ScopeWrite}})
	r.WaitRelayConns(t, topic, 2)

	device := testkit.DialDevice(t, "127.0.0.2", port)
	drv.ExpectOpened("127.0.0.2", 0)
	watcher.ExpectOpened("127.0.0.2", 0)
	answerer.ExpectOpened("127.0.0.2", 0)
	testkit.Send(t, device, []byte("temp=21"))
	drv.ExpectReceived("127.0.0.2", 0, []byte("temp=21"))
	watcher.ExpectReceived("127.0.0.2", 0, []byte("temp=21"))
	answerer.ExpectReceived("127.0.0.2", 0, []byte("temp=21"))

	// A watcher does not admit devices: one the driver does not list is
	// still refused.
	stranger := testkit.DialDevice(t, "127.0.0.3", port)
	testkit.ExpectDisconnected(t, stranger)
	testkit.WaitForStats(t, r, testkit.TCPStats(port, 1, 1))

	// The read-only watcher's WRITE is discarded; the answerer's reaches
	// the device.
	watcher.Write("127.0.0.2", 0, []byte("from the watcher"))
	answerer.Write("127.0.0.2", 0, []byte("OK\n"))
	testkit.ExpectReceives(t, device, []byte("OK\n"))
	testkit.ExpectMetric(t, r.MetricsAddr(t), 1, "dispatch_discarded_messages_total", "kind", "relay", "role", "watcher")

	// The port closes with its last driver; watchers are closed with it.
	drv.Leave()
	watcher.ExpectClose(ws.StatusNormalClosure, "channel closed")
	answerer.ExpectClose(ws.StatusNormalClosure, "channel closed")
	testkit.WaitForStats(t, r, testkit.EmptyStats)

	// A port that is not open cannot be watched: 404 before the upgrade.
	uri := r.CodeURI(t, topic, r.Token(t, testkit.TokenSpec{Topic: topic, Scopes: []string{relay.ScopeRead}}))
	testkit.ExpectRelayError(t, "watching a closed port", testkit.UpgradeAnswer(t, uri), http.StatusNotFound, "no_channel")
}

// A read-only client on "groups:tcp:<id>" hears the group's members as a
// group driver does, including the OPENED of members already there.
func TestRelayWatchesASocketGroup(t *testing.T) {
	r := testkit.StartRelay(t, "DISPATCH_GROUP_TCP=127.0.0.1:0")
	m1 := testkit.Join(t, r, "127.0.0.1", "kitchen")
	testkit.WaitGroupMembers(t, r, "tcp", "kitchen", 1)
	w := r.JoinWith(t, testkit.TokenSpec{Topic: "groups:tcp:kitchen", Scopes: []string{relay.ScopeRead}})
	first := w.NextParsed()
	if first.Type != codec.Opened || string(first.IP) != "127.0.0.1" {
		t.Fatalf("watcher's first message: %s", testkit.DescribeMessage(first))
	}
	m2 := testkit.Join(t, r, "127.0.0.1", "kitchen")
	w.ExpectOpened("127.0.0.1", first.ID+1)
	testkit.Send(t, m1, []byte("hello"))
	testkit.ExpectReceives(t, m2, []byte("hello"))
	w.ExpectReceived("127.0.0.1", first.ID, []byte("hello"))
	if c := testkit.GroupCountsOf(t, r, "tcp", "kitchen"); c.Upstreams != 0 {
		t.Errorf("the groups document counts the watcher as an upstream: %+v", c)
	}
}
