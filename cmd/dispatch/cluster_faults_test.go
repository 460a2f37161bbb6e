package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop"
)

// A replica killed with SIGKILL says nothing: the others notice its
// silence within the peer timeout (1.5 s in the kit), report its devices
// CLOSED, drop its group members, and close ports only its drivers wanted.
func TestClusterReplicaKilled(t *testing.T) {
	t.Parallel()
	c := testkit.StartCluster(t, testkit.ClusterOptions{Replicas: 3, Env: []string{"DISPATCH_GROUP_TCP=0"}})
	r1, r2, r3 := c.Replicas[0], c.Replicas[1], c.Replicas[2]

	port := testkit.ClusterPort(t)
	d2 := testkit.TCPDriver(t, r2, port, testkit.Localhost)
	d3 := testkit.TCPDriver(t, r3, port, testkit.Localhost)
	for _, r := range []*testkit.Replica{r2, r3} {
		r1.WaitInterest(t, r, fmt.Sprintf("dispatch:tcp:%d", port))
	}
	pump2, pump3 := d2.Pump(), d3.Pump()
	device := r1.DialDevice(t, port)
	testkit.Send(t, device, []byte("alive"))
	var id uint64
	for _, pump := range []<-chan testkit.Pumped{pump2, pump3} {
		id = testkit.ExpectPumped(t, pump, "the device's payload", func(m codec.Message) bool {
			return m.Type == codec.Received && string(m.Data) == "alive"
		}).ID
	}

	// A group with a member on replica 1 and one on replica 2, and a
	// driver on replica 3.
	group := "g-" + testkit.RandomHex(t, 4)
	gd := testkit.MustDialDriver(t, r3, testkit.GroupTarget(testkit.BasePath, group, ""))
	gpump := gd.Pump()
	testkit.Join(t, r1, testkit.Localhost, group)
	survivor := testkit.Join(t, r2, testkit.Localhost, group)
	testkit.WaitGroupMembers(t, r3, "tcp", group, 2)
	var doomed uint64
	for opened := 0; opened < 2; opened++ {
		m := testkit.ExpectPumped(t, gpump, "OPENED of both members", func(m codec.Message) bool { return m.Type == codec.Opened })
		if uint64(loop.NodeOf(m.ID)) == r1.Node(t) {
			doomed = m.ID
		}
	}

	// A port only replica 1's driver wants is open on the others too.
	only := testkit.ClusterPort(t)
	testkit.TCPDriver(t, r1, only, testkit.Localhost)
	for _, r := range []*testkit.Replica{r2, r3} {
		testkit.Eventually(t, testkit.EventTimeout, fmt.Sprintf("port open on replica %d", r.Index), func() bool { return r.PortOpen(only) })
	}

	killed := time.Now()
	r1.Kill(t)
	for _, pump := range []<-chan testkit.Pumped{pump2, pump3} {
		testkit.ExpectPumped(t, pump, "CLOSED of the dead replica's device", func(m codec.Message) bool {
			return m.Type == codec.Closed && m.ID == id
		})
	}
	t.Logf("drivers heard CLOSED %v after SIGKILL (peer timeout 1.5s)", time.Since(killed).Round(time.Millisecond))
	testkit.ExpectPumped(t, gpump, "CLOSED of the dead replica's group member", func(m codec.Message) bool {
		return m.Type == codec.Closed && m.ID == doomed
	})
	testkit.WaitGroupMembers(t, r2, "tcp", group, 1)
	for _, r := range []*testkit.Replica{r2, r3} {
		testkit.Eventually(t, testkit.EventTimeout, fmt.Sprintf("port closed on replica %d", r.Index), func() bool { return !r.PortOpen(only) })
		testkit.WaitForStats(t, r, testkit.TCPStats(port, 2, 0))
	}
	// What is left still works: the member on replica 2 is heard.
	testkit.Send(t, survivor, []byte("still here"))
	testkit.ExpectPumped(t, gpump, "the survivor's payload", func(m codec.Message) bool {
		return m.Type == codec.Received && string(m.Data) == "still here"
	})
}

// NATS stopped and started again: each replica keeps serving its own
// devices and drivers, logs the outage once, and cross traffic resumes
// once NATS is back.
func TestClusterSurvivesNATSRestart(t *testing.T) {
	t.Parallel()
	natsPort := testkit.FreeTCPPort(t)
	ns := startNATS(t, natsPort)
	c := testkit.StartCluster(t, testkit.ClusterOptions{Replicas: 2, NATS: fmt.Sprintf("nats://127.0.0.1:%d", natsPort)})
	r1, r2 := c.Replicas[0], c.Replicas[1]

	port := testkit.ClusterPort(t)
	// The remote driver first: replica 1 opens the port once it has heard
	// of it, and from then on sends it replica 1's device events.
	remote := testkit.TCPDriver(t, r2, port, testkit.Localhost)
	testkit.Eventually(t, testkit.EventTimeout, "port open on replica 1", func() bool { return r1.PortOpen(port) })
	local := testkit.TCPDriver(t, r1, port, testkit.Localhost)
	localPump, remotePump := local.Pump(), remote.Pump()
	device := r1.DialDevice(t, port)
	testkit.Send(t, device, []byte("before;"))
	var id uint64
	for _, pump := range []<-chan testkit.Pumped{localPump, remotePump} {
		id = testkit.ExpectPumped(t, pump, "payload before the outage", func(m codec.Message) bool {
			return m.Type == codec.Received && strings.Contains(string(m.Data), "before;")
		}).ID
	}

	ns.Shutdown()
	ns.WaitForShutdown()
	for _, r := range c.Replicas {
		testkit.Eventually(t, testkit.EventTimeout, fmt.Sprintf("replica %d notices the outage", r.Index), func() bool {
			return strings.Contains(r.Logs(), "NATS connection lost")
		})
	}
	// Local traffic goes on.
	testkit.Send(t, device, []byte("during;"))
	testkit.ExpectPumped(t, localPump, "local payload during the outage", func(m codec.Message) bool {
		return m.Type == codec.Received && strings.Contains(string(m.Data), "during;")
	})
	local.Write(testkit.Localhost, id, []byte("local write"))
	testkit.ExpectReceives(t, device, []byte("local write"))

	startNATS(t, natsPort)
	for _, r := range c.Replicas {
		testkit.Eventually(t, testkit.EventTimeout, fmt.Sprintf("replica %d back on NATS", r.Index), func() bool {
			return strings.Contains(r.Logs(), "NATS connection back")
		})
		if n := testkit.CountLines(r.Logs(), "NATS connection lost"); n != 1 {
			t.Errorf("replica %d logged the outage %d times, want once", r.Index, n)
		}
	}
	// Cross traffic resumes once the replicas have resynchronised: send
	// until the remote driver hears it.
	deadline := time.Now().Add(testkit.EventTimeout)
	for resumed := false; !resumed; {
		if time.Now().After(deadline) {
			t.Fatal("cross traffic did not resume")
		}
		testkit.Send(t, device, []byte("after;"))
		wait := time.After(50 * time.Millisecond) // the pause between sends, not a synchronisation
	drain:
		for {
			select {
			case it, ok := <-remotePump:
				if !ok || it.Err != nil || it.Closed {
					t.Fatalf("remote driver ended: %+v", it)
				}
				if it.Msg.Type == codec.Received && strings.Contains(string(it.Msg.Data), "after;") {
					resumed = true
					break drain
				}
			case <-wait:
				break drain
			}
		}
	}
	remote.Write(testkit.Localhost, id, []byte("remote write"))
	expectReceivesSkipping(t, device, []byte("remote write"))
}

// expectReceivesSkipping reads the device until want arrives (earlier
// writes may precede it).
func expectReceivesSkipping(t *testing.T, conn net.Conn, want []byte) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(testkit.EventTimeout))
	var got []byte
	buf := make([]byte, 4096)
	for !strings.Contains(string(got), string(want)) {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("reading the device for %q: %v (got %q)", want, err, got)
		}
		got = append(got, buf[:n]...)
	}
}

// startNATS runs a NATS server on 127.0.0.1:port in the test's process.
func startNATS(t *testing.T, port int) *server.Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: testkit.Localhost, Port: port, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(testkit.EventTimeout) {
		t.Fatalf("NATS on port %d not ready", port)
	}
	t.Cleanup(ns.Shutdown)
	t.Logf("NATS listening on %s", net.JoinHostPort(testkit.Localhost, strconv.Itoa(port)))
	return ns
}
