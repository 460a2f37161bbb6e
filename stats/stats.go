// Package stats holds the loop's counters, renders the JSON stats documents
// and exposes metrics to Prometheus. Counters are plain integers written
// only by the event loop; the loop publishes a copy periodically for readers
// on other goroutines.
package stats

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
)

// EndReasons names why endpoints end, in the order of loop.EndReason.
var EndReasons = [...]string{
	"gone", "shutdown", "slow", "stalled", "oversized", "protocol", "malformed",
	"refused", "timeout", "expired", "denied", "closed_by_upstream", "channel_closed",
}

// Core are the counts of the core itself: requests before any kind sees
// them, and the loop.
type Core struct {
	HandshakeFailures uint64 // any HTTP request answered with a 4xx or 5xx, or timed out
	HandshakeTimeouts uint64
	HandshakesRefused uint64 // too many connections still sending a request head
	HeadTooLarge      uint64
	AcceptErrors      uint64 // failed accepts or hand-overs to the loop (counted off the loop)
	Passes            uint64 // loop passes that ended with output to write
	Naps              uint64 // naps of a lightly loaded loop, batching reads
	Writes            uint64 // write and writev calls to endpoints
}

// ClassCounters are the counts of one class of endpoints: one role of one
// kind (dispatch drivers, devices, group members, …).
type ClassCounters struct {
	Kind, Role string
	Open       int // endpoints open now
	Opened     uint64
	Ends       [len(EndReasons)]uint64 // endpoints ended, by reason
	MessagesIn uint64                  // WebSocket messages, or raw reads
	BytesIn    uint64
	FramesOut  uint64 // frames (or raw chunks) queued or written
	BytesOut   uint64
	Writes     uint64 // write and writev calls
	Dropped    uint64 // whole messages dropped for a reader past its bound
	Discarded  uint64 // messages from members without the right to write

	Blocked       int     // endpoints past their high watermark now
	Paused        int     // producers not being read now: something they feed is blocked
	Pauses        uint64  // times a producer was paused
	PausedSeconds float64 // time producers spent paused, summed
}

// Forced is the number of endpoints of the class ended by the server for a
// reason other than shutdown.
func (c *ClassCounters) Forced() uint64 {
	var n uint64
	for r, count := range c.Ends {
		switch EndReasons[r] {
		case "gone", "shutdown":
		default:
			n += count
		}
	}
	return n
}

// Snapshot is what the loop publishes for readers on other goroutines.
type Snapshot struct {
	Core
	Handshakes int // connections still sending a request head
	Lag        LagHistogram
	Classes    []ClassCounters
	Kinds      []KindChannels
	Samples    []Sample // the kinds' own metrics
}

// KindChannels is one kind's channel count, against its cap.
type KindChannels struct {
	Kind    string
	Open    int
	Refused uint64 // channels not opened: the kind's cap was reached
}

// Class returns the counters of one class, or zeros.
func (s *Snapshot) Class(kind, role string) ClassCounters {
	for _, c := range s.Classes {
		if c.Kind == kind && c.Role == role {
			return c
		}
	}
	return ClassCounters{Kind: kind, Role: role}
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
