package cluster

import (
	"net/netip"
	"testing"
)

// A channel remembers at most maxHeard datagram sources' replicas; a new
// source past the bound forgets one (counted), a known one only moves.
func TestHeardIsBounded(t *testing.T) {
	sp := &span{b: &Bus{}, heard: make(map[mkey]uint16)}
	ip := netip.MustParseAddr("10.0.0.1")
	for port := range maxHeard {
		sp.hear(mkey{uint64(port), ip}, 1)
	}
	sp.hear(mkey{0, ip}, 2)
	if len(sp.heard) != maxHeard || sp.b.c.HeardForgotten != 0 || sp.heard[mkey{0, ip}] != 2 {
		t.Fatalf("a known source: %d remembered, %d forgotten", len(sp.heard), sp.b.c.HeardForgotten)
	}
	sp.hear(mkey{maxHeard, ip}, 3)
	if len(sp.heard) != maxHeard || sp.b.c.HeardForgotten != 1 || sp.heard[mkey{maxHeard, ip}] != 3 {
		t.Fatalf("a new source past the bound: %d remembered, %d forgotten", len(sp.heard), sp.b.c.HeardForgotten)
	}
}
