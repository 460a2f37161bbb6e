package stats

// The series below are the server's first metric names, kept so that
// dashboards and alerts written for them go on working. They are sums over
// the classes by role name, whatever kind the endpoints belong to; the
// per-class families (ends_total, frames_out_total, …) say the same with
// more detail.

var (
	legacyDrivers   = NewGauge("drivers", "Driver sessions registered.")
	legacyForced    = NewCounter("forced_disconnects_total", "Peers cut off by a bound or a protocol violation.", "kind")
	legacyParse     = NewCounter("parse_errors_total", "Malformed input from drivers.", "kind")
	legacyDriverMsg = NewCounter("driver_messages_total", "Protocol messages exchanged with drivers.", "direction")
	legacyDriverB   = NewCounter("driver_bytes_total", "WebSocket bytes exchanged with drivers.", "direction")
	legacyWrites    = NewCounter("driver_writes_total", "Batched writes to drivers (each carries every frame queued in one loop pass).")
)

// roleTotals sums the counters of every class with the role.
func (s *Snapshot) roleTotals(role string) ClassCounters {
	var t ClassCounters
	for i := range s.Classes {
		c := &s.Classes[i]
		if c.Role != role {
			continue
		}
		t.Open += c.Open
		t.MessagesIn += c.MessagesIn
		t.BytesIn += c.BytesIn
		t.FramesOut += c.FramesOut
		t.BytesOut += c.BytesOut
		t.Writes += c.Writes
		for r, n := range c.Ends {
			t.Ends[r] += n
		}
	}
	return t
}

func (s *Snapshot) legacySamples(out []Sample) []Sample {
	drivers, devices, members := s.roleTotals("driver"), s.roleTotals("device"), s.roleTotals("member")
	end := func(c *ClassCounters, reason string) float64 {
		for r, name := range EndReasons {
			if name == reason {
				return float64(c.Ends[r])
			}
		}
		return 0
	}
	return append(out,
		S(legacyDrivers, float64(drivers.Open)),
		S(legacyForced, end(&drivers, "slow")+end(&drivers, "stalled"), "slow_driver"),
		S(legacyForced, end(&devices, "slow")+end(&devices, "stalled"), "slow_device"),
		S(legacyForced, end(&members, "slow")+end(&members, "stalled"), "slow_member"),
		S(legacyForced, end(&drivers, "oversized"), "oversize_message"),
		S(legacyParse, end(&drivers, "malformed"), "dispatch_message"),
		S(legacyParse, end(&drivers, "protocol"), "websocket_protocol"),
		S(legacyDriverMsg, float64(drivers.FramesOut), "out"),
		S(legacyDriverMsg, float64(drivers.MessagesIn), "in"),
		S(legacyDriverB, float64(drivers.BytesOut), "out"),
		S(legacyDriverB, float64(drivers.BytesIn), "in"),
		S(legacyWrites, float64(drivers.Writes)),
	)
}
