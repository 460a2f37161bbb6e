package main

// Replicas acting as one over NATS (docs/architecture.md, "Spanning
// replicas"): three real binaries on loopback with their embedded NATS.

import (
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop"
)

func TestClusterDispatch(t *testing.T) {
	t.Parallel()
	c := testkit.StartCluster(t, testkit.ClusterOptions{Replicas: 3})
	t.Run("device on one replica, drivers on two others", func(t *testing.T) { deviceAndDriversApart(t, c) })
	t.Run("ports follow cluster-wide interest", func(t *testing.T) { portsFollowInterest(t, c) })
	t.Run("datagrams to one replica, driver on another", func(t *testing.T) { datagramsAcross(t, c) })
}

// datagramsAcross: a UDP port opened by a driver on replica 2 is bound on
// replica 1 too, what reaches it there is heard on replica 2, and the
// driver's answer leaves from replica 1.
func datagramsAcross(t *testing.T, c *testkit.Cluster) {
	r2 := c.Replicas[1]
	port := testkit.FreeUDPPort(t)
	d := testkit.UDPDriver(t, r2, port, testkit.Localhost)
	for _, r := range c.Replicas {
		testkit.WaitForStats(t, r, testkit.UDPStats(port, 1))
	}
	peer := testkit.UDPPeer(t, testkit.Localhost)
	// Replica 1 binds 127.0.0.1, where the peer sends: resend until it is
	// bound and the driver hears it (a datagram to a port not yet bound is lost).
	deadline := time.Now().Add(testkit.EventTimeout)
	pump := d.Pump()
	for {
		testkit.SendDatagram(t, peer, port, []byte("trap"))
		select {
		case it := <-pump:
			if it.Msg.Type != codec.Received || string(it.Msg.Data) != "trap" || it.Msg.ID != testkit.UDPPort(peer) {
				t.Fatalf("driver heard %+v", it)
			}
			// The answer leaves from replica 1's socket, the address the
			// peer sent to, not from replica 2's.
			d.Write(testkit.Localhost, testkit.UDPPort(peer), []byte("answer"))
			from := testkit.ExpectDatagram(t, peer, []byte("answer"))
			if from.IP.String() != c.Replicas[0].DeviceHost || from.Port != port {
				t.Fatalf("the answer came from %v, want %s:%d (replica 1, which the peer sent to)", from, c.Replicas[0].DeviceHost, port)
			}
			return
		case <-time.After(50 * time.Millisecond): // the pause between sends, not a synchronisation
		}
		if time.Now().After(deadline) {
			t.Fatal("the datagram sent to replica 1 never reached the driver on replica 2")
		}
	}
}

func deviceAndDriversApart(t *testing.T, c *testkit.Cluster) {
	r1, r2, r3 := c.Replicas[0], c.Replicas[1], c.Replicas[2]
	port := testkit.ClusterPort(t)

	// A driver on replica 2 opens the port on every replica.
	d2 := testkit.TCPDriver(t, r2, port, testkit.Localhost)
	testkit.Eventually(t, testkit.EventTimeout, "port open on replica 1", func() bool { return r1.PortOpen(port) })
	d3 := testkit.TCPDriver(t, r3, port, testkit.Localhost)
	r1.WaitInterest(t, r3, fmt.Sprintf("dispatch:tcp:%d", port))

	device := r1.DialDevice(t, port)
	first := d2.NextParsed()
	if first.Type != codec.Opened {
		t.Fatalf("driver 2 heard %s first, want OPENED", testkit.DescribeMessage(first))
	}
	id := first.ID
	if node := loop.NodeOf(id); uint64(node) != r1.Node(t) {
		t.Fatalf("device id %#x carries node %d, want replica 1's node %d", id, node, r1.Node(t))
	}
	// Driver 3 may have attached after the device was announced: it hears
	// OPENED only if it was there, as on one server; the stream is the test.
	const n = 200
	for i := range n {
		testkit.Send(t, device, []byte(fmt.Sprintf("m%04d;", i)))
	}
	for _, d := range []*testkit.Driver{d2, d3} {
		got := expectStreamFrom(t, d, id, n*6)
		for i := range n {
			if want := fmt.Sprintf("m%04d;", i); string(got[i*6:i*6+6]) != want {
				t.Fatalf("message %d: got %q, want %q", i, got[i*6:i*6+6], want)
			}
		}
	}

	// WRITE from replica 3's driver reaches the device on replica 1.
	d3.Write(testkit.Localhost, id, []byte("hello device"))
	testkit.ExpectReceives(t, device, []byte("hello device"))
	d2.Write(testkit.Localhost, id, []byte("and again"))
	testkit.ExpectReceives(t, device, []byte("and again"))

	// Stats answer for the cluster: 2 drivers, 1 device, asked of any replica.
	for _, r := range c.Replicas {
		testkit.WaitForStats(t, r, testkit.TCPStats(port, 2, 1))
	}

	// A second device on replica 3 gets an id of replica 3's node.
	pump2, pump3 := d2.Pump(), d3.Pump()
	other := r3.DialDevice(t, port)
	testkit.Send(t, other, []byte("from three"))
	m := testkit.ExpectPumped(t, pump2, "the device on replica 3", func(m codec.Message) bool {
		return m.Type == codec.Received && string(m.Data) == "from three"
	})
	if m.ID == id || uint64(loop.NodeOf(m.ID)) != r3.Node(t) {
		t.Fatalf("second device id %#x: want an id of node %d, unlike %#x", m.ID, r3.Node(t), id)
	}

	// CLOSE from replica 2's driver closes the device on replica 1, and
	// both drivers hear CLOSED.
	d2.CloseClient(testkit.Localhost, id)
	testkit.ExpectDisconnected(t, device)
	for _, pump := range []<-chan testkit.Pumped{pump2, pump3} {
		testkit.ExpectPumped(t, pump, "CLOSED of the closed device", func(m codec.Message) bool {
			return m.Type == codec.Closed && m.ID == id
		})
	}
}

// portsFollowInterest: a port is open on every replica while a driver
// anywhere listens, admits a device when a driver anywhere admits it, and
// closes everywhere with the last driver.
func portsFollowInterest(t *testing.T, c *testkit.Cluster) {
	r1, r2, r3 := c.Replicas[0], c.Replicas[1], c.Replicas[2]
	port := testkit.ClusterPort(t)
	for _, r := range c.Replicas {
		if r.PortOpen(port) {
			t.Fatalf("port %d open on replica %d before any driver", port, r.Index)
		}
	}
	d2 := testkit.TCPDriver(t, r2, port, "127.0.0.1")
	d3 := testkit.TCPDriver(t, r3, port, "127.0.0.2")
	for _, r := range c.Replicas {
		testkit.Eventually(t, testkit.EventTimeout, fmt.Sprintf("port open on replica %d", r.Index), func() bool { return r.PortOpen(port) })
	}
	r1.WaitInterest(t, r3, fmt.Sprintf("dispatch:tcp:%d", port))
	// Admission is cluster-wide: a device from 127.0.0.2 on replica 1 is
	// admitted because replica 3's driver admits it, and only that driver
	// hears it.
	pump2, pump3 := d2.Pump(), d3.Pump()
	dev, err := testkit.Dial("127.0.0.2", net.JoinHostPort(r1.DeviceHost, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	testkit.Send(t, dev, []byte("from .2"))
	m := testkit.ExpectPumped(t, pump3, "the device admitted by replica 3's driver", func(m codec.Message) bool {
		return m.Type == codec.Received
	})
	if string(m.IP) != "127.0.0.2" || string(m.Data) != "from .2" {
		t.Fatalf("replica 3's driver heard %s", testkit.DescribeMessage(m))
	}
	// The driver that admits it leaves: no driver anywhere admits it now,
	// so it is closed; replica 2's driver never heard of it.
	d3.Drop()
	testkit.ExpectDisconnectedEventually(t, dev)
	select {
	case p := <-pump2:
		t.Fatalf("replica 2's driver heard %+v", p)
	default:
	}
	for _, r := range c.Replicas {
		testkit.Eventually(t, testkit.EventTimeout, fmt.Sprintf("port still open on replica %d", r.Index), func() bool { return r.PortOpen(port) })
	}
	// The last driver leaves: the port closes on every replica.
	d2.Drop()
	for _, r := range c.Replicas {
		testkit.Eventually(t, testkit.EventTimeout, fmt.Sprintf("port closed on replica %d", r.Index), func() bool { return !r.PortOpen(port) })
		testkit.WaitForStats(t, r, `{"udp_listeners":{},"tcp_listeners":{},"tcp_clients":{}}`)
	}
}

// expectStreamFrom reads RECEIVED payloads of device id until n bytes came,
// skipping other devices and OPENED; CLOSED of id fails.
func expectStreamFrom(t *testing.T, d *testkit.Driver, id uint64, n int) []byte {
	t.Helper()
	var got []byte
	for len(got) < n {
		m := d.NextParsed()
		switch {
		case m.ID != id:
		case m.Type == codec.Received:
			got = append(got, m.Data...)
		case m.Type == codec.Closed:
			t.Fatalf("device closed after %d of %d bytes: %s", len(got), n, testkit.DescribeMessage(m))
		}
	}
	return got
}
