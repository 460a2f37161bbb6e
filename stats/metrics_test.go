package stats

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollectorExportsTheSnapshot(t *testing.T) {
	snap := Snapshot{}
	snap.TCPPortsOpen = 2
	snap.UDPBytesIn = 123
	snap.SlowDriverCuts = 4
	snap.Lag.Observe(0.0002)
	snap.Lag.Observe(2)
	c := NewCollector(func() Snapshot { return snap })
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP dispatch_ports_open Device ports open.
# TYPE dispatch_ports_open gauge
dispatch_ports_open{proto="tcp"} 2
dispatch_ports_open{proto="udp"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "dispatch_ports_open"); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, f := range families {
		found[f.GetName()] = true
		if f.GetName() == "dispatch_loop_lag_seconds" {
			h := f.GetMetric()[0].GetHistogram()
			if h.GetSampleCount() != 2 || h.GetBucket()[1].GetCumulativeCount() != 1 {
				t.Fatalf("lag histogram: %v", h)
			}
		}
	}
	for _, name := range []string{"dispatch_device_bytes_total", "dispatch_forced_disconnects_total", "dispatch_loop_lag_seconds", "dispatch_refused_peers_total"} {
		if !found[name] {
			t.Errorf("%s not exported", name)
		}
	}
}
