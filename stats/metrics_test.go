package stats

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollectorExportsCoreClassesLegacyAndKindSamples(t *testing.T) {
	kindGauge := NewGauge("ports_open", "Device ports open.", "proto")
	snap := Snapshot{Core: Core{HandshakeTimeouts: 3, Passes: 9}}
	driver := ClassCounters{Kind: "dispatch", Role: "driver", Open: 2, FramesOut: 40}
	driver.Ends[2] = 1 // slow
	driver.Ends[3] = 2 // stalled
	snap.Classes = []ClassCounters{driver, {Kind: "groups", Role: "driver", Open: 1, FramesOut: 2}}
	snap.Kinds = []KindChannels{{Kind: "dispatch", Open: 1, Refused: 4}}
	snap.Samples = []Sample{S(kindGauge, 2, "tcp"), S(kindGauge, 0, "udp")}
	snap.Lag.Observe(0.0002)
	snap.Lag.Observe(2)
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(NewCollector(func() Snapshot { return snap })); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP dispatch_ports_open Device ports open.
# TYPE dispatch_ports_open gauge
dispatch_ports_open{proto="tcp"} 2
dispatch_ports_open{proto="udp"} 0
# HELP dispatch_drivers Driver sessions registered.
# TYPE dispatch_drivers gauge
dispatch_drivers 3
# HELP dispatch_channels_refused_total Channels not opened because the kind's cap was reached.
# TYPE dispatch_channels_refused_total counter
dispatch_channels_refused_total{kind="dispatch"} 4
# HELP dispatch_loop_passes_total Event loop passes that ended with output to write.
# TYPE dispatch_loop_passes_total counter
dispatch_loop_passes_total 9
`
	names := []string{"dispatch_ports_open", "dispatch_drivers", "dispatch_channels_refused_total", "dispatch_loop_passes_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			key := f.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			switch {
			case m.GetCounter() != nil:
				values[key] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				values[key] = m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				h := m.GetHistogram()
				if h.GetSampleCount() != 2 || h.GetBucket()[1].GetCumulativeCount() != 1 {
					t.Fatalf("lag histogram: %v", h)
				}
			}
		}
	}
	for key, want := range map[string]float64{
		"dispatch_ends_total,kind=dispatch,reason=stalled,role=driver":      2,
		"dispatch_forced_disconnects_total,kind=slow_driver":                3, // slow and stalled drivers, every kind
		"dispatch_driver_messages_total,direction=out":                      42,
		"dispatch_connections,kind=groups,role=driver":                      1,
		"dispatch_handshake_failures_total,reason=timeout":                  3,
		"dispatch_ends_total,kind=groups,reason=channel_closed,role=driver": 0,
	} {
		if got, ok := values[key]; !ok || got != want {
			t.Errorf("%s = %v (exported %v), want %v", key, got, ok, want)
		}
	}
}

func TestBoundedKeepsTheLargestChannelsAndSumsTheRest(t *testing.T) {
	var channels []Ranked
	for i, name := range []string{"a", "b", "c", "d", "e"} {
		channels = append(channels, Ranked{Name: name, Rank: float64(i), Values: [MaxRanked]float64{float64(i), 1}})
	}
	got := Bounded(channels, 2)
	if len(got) != 3 || got[0].Name != "e" || got[1].Name != "d" || got[2].Name != OtherChannels {
		t.Fatalf("bounded: %+v", got)
	}
	if rest := got[2]; rest.Values[0] != 0+1+2 || rest.Values[1] != 3 {
		t.Fatalf("the rest summed: %+v", rest)
	}
	if few := Bounded(channels[:2], 5); len(few) != 2 {
		t.Fatalf("under the limit: %+v", few)
	}
}
