package stats

import (
	"cmp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace prefixes every metric name.
const Namespace = "dispatch"

// Desc describes one metric family a kind exports.
type Desc struct {
	desc  *prometheus.Desc
	gauge bool
}

// NewCounter describes a counter family; name is without the namespace.
func NewCounter(name, help string, labels ...string) *Desc {
	return &Desc{desc: prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)}
}

// NewGauge describes a gauge family; name is without the namespace.
func NewGauge(name, help string, labels ...string) *Desc {
	return &Desc{desc: prometheus.NewDesc(Namespace+"_"+name, help, labels, nil), gauge: true}
}

// Sample is one series' value at publish time.
type Sample struct {
	Desc   *Desc
	Value  float64
	Labels []string // values, in the order of the family's label names
}

// S builds a sample.
func S(d *Desc, value float64, labels ...string) Sample {
	return Sample{Desc: d, Value: value, Labels: labels}
}

// Collector exposes the loop's published snapshots to Prometheus. It reads
// whatever the loop last published when scraped, so the loop itself only
// ever increments plain integers.
type Collector struct {
	snapshot func() Snapshot
}

// NewCollector returns a collector over the snapshots that snapshot returns.
func NewCollector(snapshot func() Snapshot) *Collector { return &Collector{snapshot: snapshot} }

var (
	handshakeFailures = NewCounter("handshake_failures_total", "HTTP requests refused or abandoned.", "reason")
	handshakesPending = NewGauge("handshakes_pending", "Connections still sending their request head.")
	acceptErrors      = NewCounter("accept_errors_total", "Failed accepts (e.g. out of file descriptors); accepting backs off and retries.")
	loopPasses        = NewCounter("loop_passes_total", "Event loop passes that ended with output to write.")
	loopNaps          = NewCounter("loop_naps_total", "Naps of a lightly loaded loop after a pass, so that reads arriving meanwhile share the next pass's writes.")
	loopLag           = prometheus.NewDesc(Namespace+"_loop_lag_seconds",
		"Time work posted to the event loop waited before it ran (about one loop pass).", nil, nil)

	channels        = NewGauge("channels", "Channels open, by kind.", "kind")
	channelsRefused = NewCounter("channels_refused_total", "Channels not opened because the kind's cap was reached.", "kind")

	// DatagramsDropped is shared by every kind with UDP ports.
	DatagramsDropped = NewCounter("datagrams_dropped_total", "UDP datagrams not delivered.", "reason")

	connections = NewGauge("connections", "Endpoints open, by kind and role.", "kind", "role")
	opened      = NewCounter("connections_opened_total", "Endpoints admitted, by kind and role.", "kind", "role")
	ends        = NewCounter("ends_total", "Endpoints ended, by kind, role and reason.", "kind", "role", "reason")
	messagesIn  = NewCounter("messages_in_total", "Messages (WebSocket) or reads (raw sockets) received.", "kind", "role")
	bytesIn     = NewCounter("bytes_in_total", "Payload bytes received.", "kind", "role")
	framesOut   = NewCounter("frames_out_total", "Frames or raw chunks sent.", "kind", "role")
	bytesOut    = NewCounter("bytes_out_total", "Bytes written.", "kind", "role")
	writes      = NewCounter("writes_total", "write and writev calls (each carries everything queued in one loop pass).", "kind", "role")
	dropped     = NewCounter("dropped_messages_total", "Whole messages dropped for a reader past its bound.", "kind", "role")
	blocked     = NewGauge("blocked", "Endpoints past their high watermark now.", "kind", "role")
	paused      = NewGauge("paused", "Producers not being read now, because something they feed is blocked.", "kind", "role")
	pauses      = NewCounter("pauses_total", "Times a producer was paused.", "kind", "role")
	pausedSecs  = NewCounter("paused_seconds_total", "Time producers spent paused, summed.", "kind", "role")
	discarded   = NewCounter("discarded_messages_total", "Messages discarded from members without the right to write.", "kind", "role")
)

// Describe sends nothing: the families depend on the kinds registered, so
// this is an unchecked collector.
func (c *Collector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	emit := func(x Sample) {
		kind := prometheus.CounterValue
		if x.Desc.gauge {
			kind = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(x.Desc.desc, kind, x.Value, x.Labels...)
	}
	for _, x := range s.coreSamples() {
		emit(x)
	}
	buckets := make(map[float64]uint64, len(LagBuckets))
	var cumulative uint64
	for i, upper := range LagBuckets {
		cumulative += s.Lag.Counts[i]
		buckets[upper] = cumulative
	}
	ch <- prometheus.MustNewConstHistogram(loopLag, s.Lag.Total, s.Lag.Sum, buckets)
	for _, x := range s.Samples {
		emit(x)
	}
}

func (s *Snapshot) coreSamples() []Sample {
	out := []Sample{
		S(handshakeFailures, float64(s.HandshakeFailures), "any"),
		S(handshakeFailures, float64(s.HandshakeTimeouts), "timeout"),
		S(handshakeFailures, float64(s.HeadTooLarge), "head_too_large"),
		S(handshakeFailures, float64(s.HandshakesRefused), "too_many_pending"),
		S(handshakesPending, float64(s.Handshakes)),
		S(acceptErrors, float64(s.AcceptErrors)),
		S(loopPasses, float64(s.Passes)),
		S(loopNaps, float64(s.Naps)),
	}
	for _, k := range s.Kinds {
		out = append(out, S(channels, float64(k.Open), k.Kind), S(channelsRefused, float64(k.Refused), k.Kind))
	}
	for i := range s.Classes {
		c := &s.Classes[i]
		k, r := c.Kind, c.Role
		out = append(out,
			S(connections, float64(c.Open), k, r),
			S(opened, float64(c.Opened), k, r),
			S(messagesIn, float64(c.MessagesIn), k, r),
			S(bytesIn, float64(c.BytesIn), k, r),
			S(framesOut, float64(c.FramesOut), k, r),
			S(bytesOut, float64(c.BytesOut), k, r),
			S(writes, float64(c.Writes), k, r),
			S(dropped, float64(c.Dropped), k, r),
			S(discarded, float64(c.Discarded), k, r),
			S(blocked, float64(c.Blocked), k, r),
			S(paused, float64(c.Paused), k, r),
			S(pauses, float64(c.Pauses), k, r),
			S(pausedSecs, c.PausedSeconds, k, r),
		)
		for reason, n := range c.Ends {
			out = append(out, S(ends, float64(n), k, r, EndReasons[reason]))
		}
	}
	return s.legacySamples(out)
}

// MaxRanked is the most per-channel families a kind can bound with Bounded.
const MaxRanked = 4

// Ranked is one channel's per-channel series, for Bounded.
type Ranked struct {
	Name   string
	Rank   float64            // what the channels are ordered by (largest first)
	Values [MaxRanked]float64 // one per per-channel family
}

// OtherChannels is the label value under which Bounded sums the channels
// past its limit.
const OtherChannels = "_other"

// Bounded keeps per-channel series to a bounded set: the limit largest
// channels by rank, and the rest summed under OtherChannels, so that peers
// who can create channels cannot grow a scrape without end.
func Bounded(channels []Ranked, limit int) []Ranked {
	if len(channels) <= limit {
		return channels
	}
	slices.SortFunc(channels, func(a, b Ranked) int {
		return cmp.Or(cmp.Compare(b.Rank, a.Rank), cmp.Compare(a.Name, b.Name))
	})
	rest := Ranked{Name: OtherChannels}
	for _, c := range channels[limit:] {
		rest.Rank += c.Rank
		for i, v := range c.Values {
			rest.Values[i] += v
		}
	}
	return append(channels[:limit:limit], rest)
}
