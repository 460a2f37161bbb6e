package loop

import (
	"testing"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/stats"
)

// Metrics label ends with stats.EndReasons, indexed by EndReason: the two
// lists must stay in step, and each reason maps to its close code.
func TestEndReasonsMatchTheirNamesAndCloseCodes(t *testing.T) {
	cases := []struct {
		r    EndReason
		name string
		code ws.StatusCode
	}{
		{EndGone, "gone", ws.StatusNormalClosure},
		{EndShutdown, "shutdown", ws.StatusGoingAway},
		{EndSlow, "slow", ws.StatusPolicyViolation},
		{EndStalled, "stalled", ws.StatusPolicyViolation},
		{EndOversized, "oversized", ws.StatusMessageTooBig},
		{EndProtocol, "protocol", ws.StatusProtocolError},
		{EndMalformed, "malformed", ws.StatusInvalidFramePayloadData},
		{EndRefused, "refused", ws.StatusPolicyViolation},
		{EndTimeout, "timeout", ws.StatusPolicyViolation},
		{EndExpired, "expired", ws.StatusPolicyViolation},
		{EndDenied, "denied", ws.StatusPolicyViolation},
		{EndClosedByUpstream, "closed_by_upstream", ws.StatusNormalClosure},
		{EndChannelClosed, "channel_closed", ws.StatusNormalClosure},
	}
	if len(cases) != len(stats.EndReasons) {
		t.Fatalf("%d reasons here, %d in stats.EndReasons", len(cases), len(stats.EndReasons))
	}
	for _, c := range cases {
		if c.r.String() != c.name || c.r.closeCode() != c.code {
			t.Errorf("reason %d: %q, close %d; want %q, %d", c.r, c.r.String(), c.r.closeCode(), c.name, c.code)
		}
	}
}
