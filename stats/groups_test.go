package stats

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestGroupsJSONSortsAndEscapesIDs(t *testing.T) {
	g := Groups{
		TCP: []Group{{ID: "b", Members: 2, Upstreams: 1, BytesForwarded: 10}, {ID: `a"<x>`, Members: 1}},
		UDP: []Group{{ID: "9000", Members: 3, BytesForwarded: 7}},
	}
	got := string(g.AppendJSON(nil))
	want := `{"tcp":{"a\"\u003cx\u003e":{"members":1,"upstreams":0,"bytes_forwarded":0},` +
		`"b":{"members":2,"upstreams":1,"bytes_forwarded":10}},` +
		`"udp":{"9000":{"members":3,"upstreams":0,"bytes_forwarded":7}}}`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if empty := string((&Groups{}).AppendJSON(nil)); empty != `{"tcp":{},"udp":{}}` {
		t.Fatalf("empty groups: %s", empty)
	}
}

func TestCollectorExportsGroups(t *testing.T) {
	snap := Snapshot{Groups: Groups{TCP: []Group{{ID: "room", Members: 3, Upstreams: 1, BytesForwarded: 42}}}}
	snap.SlowMemberCuts = 2
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(NewCollector(func() Snapshot { return snap })); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP dispatch_group_bytes_forwarded_total Bytes members sent to a socket group, counted once however many members hear them.
# TYPE dispatch_group_bytes_forwarded_total counter
dispatch_group_bytes_forwarded_total{group="room",proto="tcp"} 42
# HELP dispatch_group_members Members of a socket group.
# TYPE dispatch_group_members gauge
dispatch_group_members{group="room",proto="tcp"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "dispatch_group_members", "dispatch_group_bytes_forwarded_total"); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "dispatch_forced_disconnects_total"); err != nil || n != 4 {
		t.Fatalf("forced disconnect series: %d, %v", n, err)
	}
}
