package testkit

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Cluster is N replicas of the real binary acting as one over NATS, on
// loopback: replica i (from 0) binds its device ports and group listeners
// on 127.0.0.(i+1), so that every replica can hold the same port number,
// and serves HTTP on 127.0.0.1 with a port of its own.
type Cluster struct {
	Replicas   []*Replica
	secret     string
	routes     []int // embedded NATS route ports, by replica
	env        []string
	replicaEnv func(i int) []string
	natsURL    string
}

// Replica is one replica of a Cluster.
type Replica struct {
	*Process
	Index      int
	DeviceHost string // 127.0.0.(Index+1)
}

// ClusterOptions says how to start a cluster.
type ClusterOptions struct {
	Replicas int
	// NATS is an external NATS URL; "" runs each replica's embedded NATS,
	// routed to the others on free loopback ports.
	NATS string
	// Env is added to every replica's environment.
	Env []string
	// ReplicaEnv, when set, adds replica i's own variables (a data
	// directory, say) after Env.
	ReplicaEnv func(i int) []string
}

// StartCluster launches the replicas one after the other (each claims its
// node number once the previous ones hold theirs) and waits until every
// replica has heard from every other.
func StartCluster(tb testing.TB, opts ClusterOptions) *Cluster {
	tb.Helper()
	c := &Cluster{secret: "cluster-secret-" + RandomHex(tb, 16), env: opts.Env, replicaEnv: opts.ReplicaEnv, natsURL: opts.NATS}
	if opts.NATS == "" {
		for range opts.Replicas {
			c.routes = append(c.routes, FreeTCPPort(tb))
		}
	}
	for i := range opts.Replicas {
		c.Replicas = append(c.Replicas, c.launch(tb, i))
	}
	c.WaitFormed(tb)
	return c
}

// launch starts replica i with the cluster's settings.
func (c *Cluster) launch(tb testing.TB, i int) *Replica {
	tb.Helper()
	host := "127.0.0." + strconv.Itoa(i+1)
	env := []string{
		"PLACE_SERVER_SECRET=" + c.secret, "LOG_LEVEL=debug",
		"DISPATCH_DEVICE_HOST=" + host,
		"DISPATCH_CLUSTER_PEER_TIMEOUT=1500ms",
	}
	if c.natsURL != "" {
		env = append(env, "DISPATCH_CLUSTER="+c.natsURL)
	} else {
		var peers []string
		for j, p := range c.routes {
			if j != i {
				peers = append(peers, net.JoinHostPort(Localhost, strconv.Itoa(p)))
			}
		}
		env = append(env, "DISPATCH_CLUSTER_EMBEDDED=true",
			"DISPATCH_CLUSTER_ROUTE="+net.JoinHostPort(Localhost, strconv.Itoa(c.routes[i])),
			"DISPATCH_CLUSTER_PEERS="+strings.Join(peers, ","))
	}
	env = append(env, c.env...)
	if c.replicaEnv != nil {
		env = append(env, c.replicaEnv(i)...)
	}
	p := Launch(tb, Options{Secret: c.secret, Env: env})
	return &Replica{Process: p, Index: i, DeviceHost: host}
}

// Stop stops replica i with SIGTERM (it says bye) and waits for it.
func (c *Cluster) Stop(i int) { c.Replicas[i].Stop() }

// Restart starts replica i again, stopped or killed before, with the same
// settings (its route port, its own variables), and waits until the
// cluster has formed again. Its node number is claimed afresh.
func (c *Cluster) Restart(tb testing.TB, i int) *Replica {
	tb.Helper()
	if !c.Replicas[i].HasExited() {
		tb.Fatalf("replica %d is still running", i)
	}
	c.Replicas[i] = c.launch(tb, i)
	c.WaitFormed(tb)
	return c.Replicas[i]
}

// WaitFormed waits until every live replica has heard from every other
// live one since it last started.
func (c *Cluster) WaitFormed(tb testing.TB) {
	tb.Helper()
	live := 0
	for _, r := range c.Replicas {
		if !r.HasExited() {
			live++
		}
	}
	for _, r := range c.Replicas {
		if r.HasExited() {
			continue
		}
		Eventually(tb, EventTimeout, fmt.Sprintf("replica %d hears the other %d", r.Index, live-1), func() bool {
			return r.Peers() >= live-1
		})
	}
}

// Peers counts the replicas this one has heard join and not yet lost,
// from its log lines.
func (r *Replica) Peers() int {
	logs := r.Logs()
	joined := CountLines(logs, "cluster: replica joined")
	gone := CountLines(logs, "cluster: replica left") + CountLines(logs, "cluster: replica silent") +
		CountLines(logs, "cluster: replica restarted")
	return joined - gone
}

// WaitInterest waits until the replica has heard that from has upstreams
// on the channel (kind:name, e.g. "dispatch:tcp:6001"): from then on it
// sends from its members there whatever those upstreams admit. The replicas
// must log at debug level (StartCluster's do).
func (r *Replica) WaitInterest(tb testing.TB, from *Replica, channel string) {
	tb.Helper()
	r.waitInterest(tb, from, channel, "upstreams")
}

// WaitMembersInterest waits until the replica has heard that from has
// members of the channel that hear the others (a relay topic's clients,
// say): from then on it sends them its own members' payloads.
func (r *Replica) WaitMembersInterest(tb testing.TB, from *Replica, channel string) {
	tb.Helper()
	r.waitInterest(tb, from, channel, "members")
}

func (r *Replica) waitInterest(tb testing.TB, from *Replica, channel, field string) {
	tb.Helper()
	node := strconv.FormatUint(from.Node(tb), 10)
	Eventually(tb, EventTimeout, fmt.Sprintf("replica %d hears replica %d's interest (%s) in %s", r.Index, from.Index, field, channel), func() bool {
		for _, line := range strings.Split(r.Logs(), "\n") {
			l := []byte(line)
			if strings.Contains(line, "cluster: interest") && logField(l, "node") == node &&
				logField(l, "channel") == channel && logField(l, field) == "true" {
				return true
			}
		}
		return false
	})
}

// Node is the replica's node number, from its log.
func (r *Replica) Node(tb testing.TB) uint64 {
	tb.Helper()
	for _, line := range strings.Split(r.Logs(), "\n") {
		if strings.Contains(line, "cluster joined") {
			if n, err := strconv.ParseUint(logField([]byte(line), "node"), 10, 64); err == nil {
				return n
			}
		}
	}
	tb.Fatalf("replica %d logged no node number", r.Index)
	return 0
}

// Kill ends the replica with SIGKILL and waits for it: no bye, no close.
func (r *Replica) Kill(tb testing.TB) {
	tb.Helper()
	if err := r.Signal(syscall.SIGKILL); err != nil {
		tb.Fatalf("killing replica %d: %v", r.Index, err)
	}
	select {
	case <-r.Exited():
	case <-time.After(EventTimeout):
		tb.Fatalf("replica %d did not die", r.Index)
	}
}

// DialDevice connects a device from 127.0.0.1 to port on this replica.
func (r *Replica) DialDevice(tb testing.TB, port int) *net.TCPConn {
	tb.Helper()
	conn, err := Dial(Localhost, net.JoinHostPort(r.DeviceHost, strconv.Itoa(port)))
	if err != nil {
		tb.Fatalf("device → replica %d port %d: %v", r.Index, port, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// TryDialDevice connects a device from 127.0.0.1 to port on this replica.
func (r *Replica) TryDialDevice(port int) (*net.TCPConn, error) {
	return Dial(Localhost, net.JoinHostPort(r.DeviceHost, strconv.Itoa(port)))
}

// ProbeIP is where PortOpen connects from: no test driver admits it, so a
// probe is refused silently and no driver hears of it.
const ProbeIP = "127.0.0.99"

// PortOpen reports whether the replica accepts connections on a device port.
func (r *Replica) PortOpen(port int) bool {
	conn, err := Dial(ProbeIP, net.JoinHostPort(r.DeviceHost, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// ClusterPort returns a TCP port number free on every replica's device host.
func ClusterPort(tb testing.TB) int {
	tb.Helper()
	return FreeTCPPort(tb) // free on every address, so on every 127.0.0.x
}
