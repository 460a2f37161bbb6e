// Package stats holds the loop's counters and renders the dispatch stats
// document. Counters are plain integers written only by the event loop; the
// loop publishes a copy periodically for readers on other goroutines.
package stats

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
)

// Counters are the cumulative event counts of one server. Only the event
// loop writes them.
type Counters struct {
	DriversAccepted     uint64
	DriversClosed       uint64
	DevicesAccepted     uint64
	DevicesClosed       uint64
	DevicesRefusedIP    uint64 // TCP peer not on any accept list
	DevicesRefusedCap   uint64 // per-port or total connection cap reached
	DevicesRefusedStale uint64 // arrived after its port closed
	DatagramsIn         uint64
	DatagramsRefusedIP  uint64
	DatagramsEmpty      uint64
	DatagramsDropped    uint64 // reader queue full (counted off-loop, folded in on publish)
	DatagramsOut        uint64
	DatagramsOutDropped uint64 // socket buffer full or bad destination
	TCPReads            uint64 // device reads, each one RECEIVED
	TCPBytesIn          uint64
	TCPWrites           uint64 // driver WRITEs carried to devices
	TCPBytesOut         uint64
	UDPBytesIn          uint64
	UDPBytesOut         uint64
	FramesToDrivers     uint64
	BytesToDrivers      uint64
	MessagesFromDrivers uint64
	BytesFromDrivers    uint64
	SlowDriverCuts      uint64 // close 1008: pending output past its bound
	SlowDeviceCuts      uint64 // device pending WRITE bytes past its bound
	OversizeMessages    uint64 // close 1009
	MalformedMessages   uint64 // close 1007
	ProtocolErrors      uint64 // close 1002
	HandshakeFailures   uint64 // any HTTP request answered with a 4xx, or timed out
	HandshakeTimeouts   uint64
	HandshakesRefused   uint64 // too many connections still sending a request head
	HeadTooLarge        uint64
	AcceptErrors        uint64
	PortsOpened         uint64
	PortsClosed         uint64
	Flushes             uint64

	// Socket groups.
	GroupJoins                 uint64 // TCP members joined, UDP members registered
	GroupJoinsRefused          uint64 // bad prefix, bad or too long group id, join deadline missed, caps
	GroupJoinTimeouts          uint64 // of those refused: nothing usable before the join deadline
	GroupMembersLeft           uint64 // joined TCP members closed, whichever side closed them
	GroupChunksForwarded       uint64 // member reads and datagrams forwarded to their group
	GroupBytesForwarded        uint64 // their bytes, counted once however many members hear them
	GroupChunksToMembers       uint64 // chunks queued for TCP members (one per receiver)
	GroupBytesToMembers        uint64 // bytes written to TCP members
	GroupBytesFromDrivers      uint64 // WRITE payload from group drivers to members
	GroupDatagramsUnregistered uint64 // datagrams from senders that are not members, dropped
	GroupDatagramsOut          uint64 // datagrams sent to UDP members
	GroupDatagramsOutDropped   uint64 // datagrams to UDP members the socket could not take
	GroupUDPMembersExpired     uint64 // UDP members silent for the idle time, forgotten
	SlowMemberCuts             uint64 // TCP member pending output past its bound
}

// Gauges are the loop's current sizes.
type Gauges struct {
	TCPPortsOpen int
	UDPPortsOpen int
	Drivers      int
	DeviceConns  int
}

// LagBuckets are the upper bounds, in seconds, of the loop-lag histogram.
var LagBuckets = [...]float64{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1}

// LagHistogram records how long work posted to the loop waited before it
// ran: the time one pass of the loop takes, as a client experiences it.
type LagHistogram struct {
	Counts [len(LagBuckets) + 1]uint64 // per bucket; the last is +Inf
	Sum    float64
	Total  uint64
}

// Observe adds one lag sample in seconds.
func (h *LagHistogram) Observe(seconds float64) {
	i := 0
	for i < len(LagBuckets) && seconds > LagBuckets[i] {
		i++
	}
	h.Counts[i]++
	h.Sum += seconds
	h.Total++
}

// Snapshot is what the loop publishes for readers on other goroutines.
type Snapshot struct {
	Counters
	Gauges
	Lag    LagHistogram
	Groups Groups // socket groups; kept out of the dispatch stats document
}

// PortCount is one entry of a stats map: a port and a count for it.
type PortCount struct {
	Port  int
	Count int
}

// Dispatch is the state behind GET /api/dispatch/v1.
type Dispatch struct {
	UDPListeners []PortCount
	TCPListeners []PortCount
	TCPClients   []PortCount
}

// AppendJSON renders the stats document with the original's key order and
// ports as decimal strings, ports ascending.
func (d *Dispatch) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"udp_listeners":`...)
	dst = appendPortMap(dst, d.UDPListeners)
	dst = append(dst, `,"tcp_listeners":`...)
	dst = appendPortMap(dst, d.TCPListeners)
	dst = append(dst, `,"tcp_clients":`...)
	dst = appendPortMap(dst, d.TCPClients)
	return append(dst, '}')
}

func appendPortMap(dst []byte, entries []PortCount) []byte {
	slices.SortFunc(entries, func(a, b PortCount) int { return a.Port - b.Port })
	dst = append(dst, '{')
	for i, e := range entries {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = strconv.AppendInt(dst, int64(e.Port), 10)
		dst = append(dst, `":`...)
		dst = strconv.AppendInt(dst, int64(e.Count), 10)
	}
	return append(dst, '}')
}

// Group is one socket group in the groups document.
type Group struct {
	ID             string // the group id; the port, in decimal, for a UDP group
	Members        int
	Upstreams      int    // drivers attached to the group
	BytesForwarded uint64 // bytes members sent to the group, counted once however many hear them
}

// Groups is the state behind GET /api/dispatch/v1/groups. It is a document
// of its own so that the dispatch stats document keeps its exact shape.
type Groups struct {
	TCP []Group
	UDP []Group
}

// AppendJSON renders {"tcp":{ID:{"members":N,"upstreams":N,"bytes_forwarded":N}},"udp":{...}},
// ids ascending. It does not reorder g: published snapshots are shared.
func (g *Groups) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"tcp":`...)
	dst = appendGroupMap(dst, g.TCP)
	dst = append(dst, `,"udp":`...)
	dst = appendGroupMap(dst, g.UDP)
	return append(dst, '}')
}

// ByID orders groups by id.
func ByID(a, b Group) int { return strings.Compare(a.ID, b.ID) }

func appendGroupMap(dst []byte, groups []Group) []byte {
	if !slices.IsSortedFunc(groups, ByID) {
		groups = slices.SortedFunc(slices.Values(groups), ByID)
	}
	dst = append(dst, '{')
	for i, g := range groups {
		if i > 0 {
			dst = append(dst, ',')
		}
		key, _ := json.Marshal(g.ID) // a string always marshals
		dst = append(dst, key...)
		dst = append(dst, `:{"members":`...)
		dst = strconv.AppendInt(dst, int64(g.Members), 10)
		dst = append(dst, `,"upstreams":`...)
		dst = strconv.AppendInt(dst, int64(g.Upstreams), 10)
		dst = append(dst, `,"bytes_forwarded":`...)
		dst = strconv.AppendUint(dst, g.BytesForwarded, 10)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}
