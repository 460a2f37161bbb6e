package stats

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes a Snapshot to Prometheus. It reads whatever the loop
// last published when scraped, so the loop itself only ever increments
// plain integers.
type Collector struct {
	snapshot func() Snapshot
	descs    []*prometheus.Desc
	lag      *prometheus.Desc
	// per socket group, labelled proto and group
	groupMembers, groupUpstreams, groupBytes *prometheus.Desc
}

// metric describes one exported series and where its value comes from.
type metric struct {
	name, help string
	kind       prometheus.ValueType
	labels     prometheus.Labels
	value      func(*Snapshot) float64
}

var metrics = []metric{
	gauge("ports_open", "Device ports open.", prometheus.Labels{"proto": "tcp"}, func(s *Snapshot) int { return s.TCPPortsOpen }),
	gauge("ports_open", "Device ports open.", prometheus.Labels{"proto": "udp"}, func(s *Snapshot) int { return s.UDPPortsOpen }),
	gauge("drivers", "Driver sessions registered.", nil, func(s *Snapshot) int { return s.Drivers }),
	gauge("device_connections", "Device TCP connections open.", nil, func(s *Snapshot) int { return s.DeviceConns }),

	counter("device_bytes_total", "Payload bytes exchanged with devices.", prometheus.Labels{"proto": "tcp", "direction": "in"}, func(s *Snapshot) uint64 { return s.TCPBytesIn }),
	counter("device_bytes_total", "Payload bytes exchanged with devices.", prometheus.Labels{"proto": "tcp", "direction": "out"}, func(s *Snapshot) uint64 { return s.TCPBytesOut }),
	counter("device_bytes_total", "Payload bytes exchanged with devices.", prometheus.Labels{"proto": "udp", "direction": "in"}, func(s *Snapshot) uint64 { return s.UDPBytesIn }),
	counter("device_bytes_total", "Payload bytes exchanged with devices.", prometheus.Labels{"proto": "udp", "direction": "out"}, func(s *Snapshot) uint64 { return s.UDPBytesOut }),
	counter("device_messages_total", "Reads from and writes to devices (TCP), datagrams (UDP).", prometheus.Labels{"proto": "tcp", "direction": "in"}, func(s *Snapshot) uint64 { return s.TCPReads }),
	counter("device_messages_total", "Reads from and writes to devices (TCP), datagrams (UDP).", prometheus.Labels{"proto": "tcp", "direction": "out"}, func(s *Snapshot) uint64 { return s.TCPWrites }),
	counter("device_messages_total", "Reads from and writes to devices (TCP), datagrams (UDP).", prometheus.Labels{"proto": "udp", "direction": "in"}, func(s *Snapshot) uint64 { return s.DatagramsIn }),
	counter("device_messages_total", "Reads from and writes to devices (TCP), datagrams (UDP).", prometheus.Labels{"proto": "udp", "direction": "out"}, func(s *Snapshot) uint64 { return s.DatagramsOut }),
	counter("driver_messages_total", "Protocol messages exchanged with drivers.", prometheus.Labels{"direction": "out"}, func(s *Snapshot) uint64 { return s.FramesToDrivers }),
	counter("driver_messages_total", "Protocol messages exchanged with drivers.", prometheus.Labels{"direction": "in"}, func(s *Snapshot) uint64 { return s.MessagesFromDrivers }),
	counter("driver_bytes_total", "WebSocket bytes exchanged with drivers.", prometheus.Labels{"direction": "out"}, func(s *Snapshot) uint64 { return s.BytesToDrivers }),
	counter("driver_bytes_total", "WebSocket bytes exchanged with drivers.", prometheus.Labels{"direction": "in"}, func(s *Snapshot) uint64 { return s.BytesFromDrivers }),
	counter("driver_writes_total", "Batched writes to drivers (each carries every frame queued in one loop pass).", nil, func(s *Snapshot) uint64 { return s.Flushes }),

	counter("drivers_registered_total", "Driver sessions registered.", nil, func(s *Snapshot) uint64 { return s.DriversAccepted }),
	counter("device_connections_accepted_total", "Device TCP connections admitted.", nil, func(s *Snapshot) uint64 { return s.DevicesAccepted }),
	counter("ports_opened_total", "Device ports opened.", nil, func(s *Snapshot) uint64 { return s.PortsOpened }),

	counter("refused_peers_total", "Device peers refused.", prometheus.Labels{"proto": "tcp", "reason": "not_accepted"}, func(s *Snapshot) uint64 { return s.DevicesRefusedIP }),
	counter("refused_peers_total", "Device peers refused.", prometheus.Labels{"proto": "tcp", "reason": "connection_cap"}, func(s *Snapshot) uint64 { return s.DevicesRefusedCap }),
	counter("refused_peers_total", "Device peers refused.", prometheus.Labels{"proto": "tcp", "reason": "port_closed"}, func(s *Snapshot) uint64 { return s.DevicesRefusedStale }),
	counter("refused_peers_total", "Device peers refused.", prometheus.Labels{"proto": "udp", "reason": "not_accepted"}, func(s *Snapshot) uint64 { return s.DatagramsRefusedIP }),

	counter("forced_disconnects_total", "Peers cut off by a bound or a protocol violation.", prometheus.Labels{"kind": "slow_driver"}, func(s *Snapshot) uint64 { return s.SlowDriverCuts }),
	counter("forced_disconnects_total", "Peers cut off by a bound or a protocol violation.", prometheus.Labels{"kind": "slow_device"}, func(s *Snapshot) uint64 { return s.SlowDeviceCuts }),
	counter("forced_disconnects_total", "Peers cut off by a bound or a protocol violation.", prometheus.Labels{"kind": "oversize_message"}, func(s *Snapshot) uint64 { return s.OversizeMessages }),
	counter("parse_errors_total", "Malformed input from drivers.", prometheus.Labels{"kind": "dispatch_message"}, func(s *Snapshot) uint64 { return s.MalformedMessages }),
	counter("parse_errors_total", "Malformed input from drivers.", prometheus.Labels{"kind": "websocket_protocol"}, func(s *Snapshot) uint64 { return s.ProtocolErrors }),

	counter("datagrams_dropped_total", "UDP datagrams not delivered.", prometheus.Labels{"reason": "queue_full"}, func(s *Snapshot) uint64 { return s.DatagramsDropped }),
	counter("datagrams_dropped_total", "UDP datagrams not delivered.", prometheus.Labels{"reason": "empty"}, func(s *Snapshot) uint64 { return s.DatagramsEmpty }),
	counter("datagrams_dropped_total", "UDP datagrams not delivered.", prometheus.Labels{"reason": "send_failed"}, func(s *Snapshot) uint64 { return s.DatagramsOutDropped }),

	counter("handshake_failures_total", "HTTP requests refused or abandoned.", prometheus.Labels{"reason": "any"}, func(s *Snapshot) uint64 { return s.HandshakeFailures }),
	counter("handshake_failures_total", "HTTP requests refused or abandoned.", prometheus.Labels{"reason": "timeout"}, func(s *Snapshot) uint64 { return s.HandshakeTimeouts }),
	counter("handshake_failures_total", "HTTP requests refused or abandoned.", prometheus.Labels{"reason": "head_too_large"}, func(s *Snapshot) uint64 { return s.HeadTooLarge }),
	counter("handshake_failures_total", "HTTP requests refused or abandoned.", prometheus.Labels{"reason": "too_many_pending"}, func(s *Snapshot) uint64 { return s.HandshakesRefused }),
	counter("accept_errors_total", "Failed accepts (e.g. out of file descriptors); accepting backs off and retries.", nil, func(s *Snapshot) uint64 { return s.AcceptErrors }),

	counter("group_joins_total", "Socket group joins: TCP members joined, UDP members registered.", nil, func(s *Snapshot) uint64 { return s.GroupJoins }),
	counter("group_joins_refused_total", "Socket group joins refused.", prometheus.Labels{"reason": "any"}, func(s *Snapshot) uint64 { return s.GroupJoinsRefused }),
	counter("group_joins_refused_total", "Socket group joins refused.", prometheus.Labels{"reason": "timeout"}, func(s *Snapshot) uint64 { return s.GroupJoinTimeouts }),
	counter("group_members_left_total", "Socket group members gone: TCP members closed, UDP members expired.", prometheus.Labels{"proto": "tcp"}, func(s *Snapshot) uint64 { return s.GroupMembersLeft }),
	counter("group_members_left_total", "Socket group members gone: TCP members closed, UDP members expired.", prometheus.Labels{"proto": "udp"}, func(s *Snapshot) uint64 { return s.GroupUDPMembersExpired }),
	counter("group_payload_bytes_total", "Socket group payload: sent by members (in, once per chunk), written to TCP members (out).", prometheus.Labels{"direction": "in"}, func(s *Snapshot) uint64 { return s.GroupBytesForwarded }),
	counter("group_payload_bytes_total", "Socket group payload: sent by members (in, once per chunk), written to TCP members (out).", prometheus.Labels{"direction": "out"}, func(s *Snapshot) uint64 { return s.GroupBytesToMembers }),
	counter("forced_disconnects_total", "Peers cut off by a bound or a protocol violation.", prometheus.Labels{"kind": "slow_member"}, func(s *Snapshot) uint64 { return s.SlowMemberCuts }),
	counter("datagrams_dropped_total", "UDP datagrams not delivered.", prometheus.Labels{"reason": "not_a_group_member"}, func(s *Snapshot) uint64 { return s.GroupDatagramsUnregistered }),
	counter("datagrams_dropped_total", "UDP datagrams not delivered.", prometheus.Labels{"reason": "group_send_failed"}, func(s *Snapshot) uint64 { return s.GroupDatagramsOutDropped }),
}

func gauge(name, help string, labels prometheus.Labels, f func(*Snapshot) int) metric {
	return metric{name, help, prometheus.GaugeValue, labels, func(s *Snapshot) float64 { return float64(f(s)) }}
}

func counter(name, help string, labels prometheus.Labels, f func(*Snapshot) uint64) metric {
	return metric{name, help, prometheus.CounterValue, labels, func(s *Snapshot) float64 { return float64(f(s)) }}
}

// NewCollector returns a collector over the snapshots that snapshot returns.
func NewCollector(snapshot func() Snapshot) *Collector {
	c := &Collector{snapshot: snapshot}
	for _, m := range metrics {
		c.descs = append(c.descs, prometheus.NewDesc("dispatch_"+m.name, m.help, nil, m.labels))
	}
	c.lag = prometheus.NewDesc("dispatch_loop_lag_seconds",
		"Time work posted to the event loop waited before it ran (about one loop pass).", nil, nil)
	groupLabels := []string{"proto", "group"}
	c.groupMembers = prometheus.NewDesc("dispatch_group_members", "Members of a socket group.", groupLabels, nil)
	c.groupUpstreams = prometheus.NewDesc("dispatch_group_upstreams", "Drivers attached to a socket group.", groupLabels, nil)
	c.groupBytes = prometheus.NewDesc("dispatch_group_bytes_forwarded_total",
		"Bytes members sent to a socket group, counted once however many members hear them.", groupLabels, nil)
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
	ch <- c.lag
	ch <- c.groupMembers
	ch <- c.groupUpstreams
	ch <- c.groupBytes
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	for i, m := range metrics {
		ch <- prometheus.MustNewConstMetric(c.descs[i], m.kind, m.value(&s))
	}
	buckets := make(map[float64]uint64, len(LagBuckets))
	var cumulative uint64
	for i, upper := range LagBuckets {
		cumulative += s.Lag.Counts[i]
		buckets[upper] = cumulative
	}
	ch <- prometheus.MustNewConstHistogram(c.lag, s.Lag.Total, s.Lag.Sum, buckets)
	for proto, groups := range map[string][]Group{"tcp": s.Groups.TCP, "udp": s.Groups.UDP} {
		for _, g := range groups {
			ch <- prometheus.MustNewConstMetric(c.groupMembers, prometheus.GaugeValue, float64(g.Members), proto, g.ID)
			ch <- prometheus.MustNewConstMetric(c.groupUpstreams, prometheus.GaugeValue, float64(g.Upstreams), proto, g.ID)
			ch <- prometheus.MustNewConstMetric(c.groupBytes, prometheus.CounterValue, float64(g.BytesForwarded), proto, g.ID)
		}
	}
}
