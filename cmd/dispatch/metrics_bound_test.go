package main

import (
	"fmt"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// Clients that can name channels must not grow a scrape without end: 30
// socket groups give series of their own to the largest few only
// (--group-metrics-groups), and the rest are summed as group="_other".
// Groups past --group-max-groups are refused and counted.
func TestPerGroupSeriesStayBounded(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t, "DISPATCH_GROUP_TCP=127.0.0.1:0", "DISPATCH_METRICS_ADDR=127.0.0.1:0",
		"DISPATCH_GROUP_METRICS_GROUPS=3", "DISPATCH_GROUP_MAX_GROUPS=30")
	metrics := s.MetricsAddr(t)
	// Group g00 gets 3 members, g01 2, every other one member: the largest
	// three are g00, g01 and then the lowest-named of the rest.
	for g := range 30 {
		members := 1
		switch g {
		case 0:
			members = 3
		case 1:
			members = 2
		}
		for range members {
			testkit.Join(t, s, testkit.Localhost, fmt.Sprintf("g%02d", g))
		}
	}
	testkit.WaitGroupMembers(t, s, "tcp", "g29", 1)
	refused := testkit.Join(t, s, testkit.Localhost, "one-too-many")
	testkit.ExpectDisconnected(t, refused)

	var groups map[string]float64
	testkit.Eventually(t, testkit.EventTimeout, "the published group series", func() bool {
		all, err := testkit.Scrape(metrics)
		if err != nil {
			return false
		}
		groups = map[string]float64{}
		for _, x := range all {
			if x.Name == "dispatch_group_members" && x.Labels["proto"] == "tcp" {
				groups[x.Labels["group"]] = x.Value
			}
		}
		return groups["_other"] == 30+3-3-2-1
	})
	if len(groups) != 4 || groups["g00"] != 3 || groups["g01"] != 2 || groups["g02"] != 1 {
		t.Fatalf("per-group series: %v; want g00, g01, g02 and _other", groups)
	}
	testkit.ExpectMetric(t, metrics, 30, "dispatch_channels", "kind", "groups")
	testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_channels_refused_total", "kind", "groups")
}
