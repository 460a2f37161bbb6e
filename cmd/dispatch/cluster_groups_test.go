package main

import (
	"fmt"
	"net"
	"testing"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop"
)

// A socket group with a member on each of three replicas: members hear
// each other, a driver on any replica hears them all and answers any one.
func TestClusterGroupSpansReplicas(t *testing.T) {
	t.Parallel()
	c := testkit.StartCluster(t, testkit.ClusterOptions{Replicas: 3, Env: []string{"DISPATCH_GROUP_TCP=0"}})
	r1, r2, r3 := c.Replicas[0], c.Replicas[1], c.Replicas[2]
	id := "kitchen-" + testkit.RandomHex(t, 4)

	d := testkit.MustDialDriver(t, r2, testkit.GroupTarget(testkit.BasePath, id, ""))
	pump := d.Pump()
	members := map[int]*testkitMember{}
	for _, r := range c.Replicas {
		members[r.Index] = &testkitMember{conn: testkit.Join(t, r, testkit.Localhost, id)}
	}
	// Every replica counts the three members (the document is the cluster's),
	// and once it does it has heard every other replica's interest.
	for _, r := range c.Replicas {
		testkit.WaitGroupMembers(t, r, "tcp", id, 3)
	}
	// The driver heard the three open, each with an id of its replica's node.
	nodes := map[uint64]uint64{}
	for len(nodes) < 3 {
		m := testkit.ExpectPumped(t, pump, "OPENED of every member", func(m codec.Message) bool { return m.Type == codec.Opened })
		nodes[uint64(loop.NodeOf(m.ID))] = m.ID
	}
	for _, r := range c.Replicas {
		memberID, ok := nodes[r.Node(t)]
		if !ok {
			t.Fatalf("no member id of replica %d's node %d among %v", r.Index, r.Node(t), nodes)
		}
		members[r.Index].id = memberID
	}

	// Each member's payload reaches the other two and the driver.
	for _, from := range c.Replicas {
		payload := []byte(fmt.Sprintf("from replica %d;", from.Index))
		testkit.Send(t, members[from.Index].conn, payload)
		for _, to := range c.Replicas {
			if to != from {
				testkit.ExpectReceives(t, members[to.Index].conn, payload)
			}
		}
		m := testkit.ExpectPumped(t, pump, "the driver hears the payload", func(m codec.Message) bool { return m.Type == codec.Received })
		if m.ID != members[from.Index].id || string(m.Data) != string(payload) {
			t.Fatalf("driver heard %s, want %q from id %d", testkit.DescribeMessage(m), payload, members[from.Index].id)
		}
	}

	// The driver on replica 2 writes to the member on replica 3 alone.
	d.Write(testkit.Localhost, members[2].id, []byte("just for three"))
	testkit.ExpectReceives(t, members[2].conn, []byte("just for three"))

	// A driver arriving late on replica 3 is told of every member.
	late := testkit.MustDialDriver(t, r3, testkit.GroupTarget(testkit.BasePath, id, ""))
	seen := map[uint64]bool{}
	for len(seen) < 3 {
		m := late.NextParsed()
		if m.Type != codec.Opened {
			t.Fatalf("late driver heard %s before every OPENED", testkit.DescribeMessage(m))
		}
		seen[m.ID] = true
	}

	// CLOSE from the driver on replica 2 closes the member on replica 1.
	d.CloseClient(testkit.Localhost, members[0].id)
	testkit.ExpectDisconnected(t, members[0].conn)
	testkit.ExpectPumped(t, pump, "CLOSED of the closed member", func(m codec.Message) bool {
		return m.Type == codec.Closed && m.ID == members[0].id
	})
	testkit.WaitGroupCounts(t, r1, "tcp", id, testkit.GroupCounts{Members: 2, Upstreams: 2})
}

type testkitMember struct {
	conn *net.TCPConn
	id   uint64
}
