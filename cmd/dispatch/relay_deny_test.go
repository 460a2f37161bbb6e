package main

// Expiry and cancellation of relay connections: a token's end closes its
// connection with a close frame, and a deny-listed booking is cut at once
// and stays cut across a restart.

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop/relay"
)

// A connection is closed with a close frame (1008, "token expired") when
// its token expires; the others stay.
func TestRelayTokenExpiryClosesWithACloseFrame(t *testing.T) {
	r := testkit.StartRelay(t)
	short := r.JoinWith(t, testkit.TokenSpec{Topic: "exp", Expires: time.Now().Add(2 * time.Second)})
	long := r.Join(t, "exp")
	third := r.Join(t, "exp")
	r.WaitRelayConns(t, "exp", 3)
	short.ExpectClose(ws.StatusPolicyViolation, "token expired")
	long.SendText("after")
	third.ExpectMessage(ws.OpText, []byte("after"))
	r.WaitRelayConns(t, "exp", 2)
}

// POST /bids/deny closes the booking's live connections at once with a
// close frame that says why, voids its unused codes and refuses it access
// (400); the deny list survives a restart; POST /bids/allow undoes it.
func TestRelayDenyClosesLiveConnectionsAndSurvivesRestart(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "relay-data")
	secret := "relay-secret-" + testkit.RandomHex(t, 16)
	env := append(testkit.RelayEnv(secret), "DISPATCH_RELAY_DATA_DIR="+dataDir, "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	r := testkit.RelayOf(t, testkit.Start(t, env...), secret)

	cancelled := testkit.TokenSpec{Topic: "room", BookingID: "bk-cancelled"}
	a := r.JoinWith(t, cancelled)
	b := r.JoinWith(t, cancelled)
	kept := r.JoinWith(t, testkit.TokenSpec{Topic: "room", BookingID: "bk-kept"})
	unused := r.CodeURI(t, "room", r.Token(t, cancelled))
	r.WaitRelayConns(t, "room", 3)

	exp := time.Now().Add(time.Hour).Unix()
	resp := r.Admin(t, http.MethodPost, "/bids/deny?bid=bk-cancelled&exp="+strconv.FormatInt(exp, 10), relay.ScopeAdmin)
	if resp.Status != http.StatusNoContent {
		t.Fatalf("deny: %d %q", resp.Status, resp.Body)
	}
	a.ExpectClose(ws.StatusPolicyViolation, "deny-listed")
	b.ExpectClose(ws.StatusPolicyViolation, "deny-listed")
	testkit.ExpectRelayError(t, "unused code of a denied booking", testkit.UpgradeAnswer(t, unused), 401, string(relay.ReasonCode))
	testkit.ExpectRelayError(t, "access for a denied booking", r.Access(t, "room", r.Token(t, cancelled)), 400, string(relay.ReasonDenied))
	other := r.JoinWith(t, testkit.TokenSpec{Topic: "room", BookingID: "bk-other"})
	other.SendText("kept goes on")
	kept.ExpectMessage(ws.OpText, []byte("kept goes on"))
	metrics := r.MetricsAddr(t)
	testkit.ExpectMetric(t, metrics, 2, "dispatch_relay_denied_total", "what", "connections")
	testkit.ExpectMetric(t, metrics, 1, "dispatch_relay_codes_total", "outcome", "voided")
	testkit.ExpectMetric(t, metrics, 2, "dispatch_ends_total", "kind", "relay", "reason", "denied")
	expectBids(t, r, "/bids/deny", "bk-cancelled")

	// A restart on the same data directory keeps the deny list.
	r.Stop()
	r = testkit.RelayOf(t, testkit.Start(t, env...), secret)
	expectBids(t, r, "/bids/deny", "bk-cancelled")
	testkit.ExpectRelayError(t, "access after a restart", r.Access(t, "room", r.Token(t, cancelled)), 400, string(relay.ReasonDenied))

	resp = r.Admin(t, http.MethodPost, "/bids/allow?bid=bk-cancelled&exp="+strconv.FormatInt(exp, 10), relay.ScopeAdmin)
	if resp.Status != http.StatusNoContent {
		t.Fatalf("allow: %d %q", resp.Status, resp.Body)
	}
	expectBids(t, r, "/bids/deny")
	expectBids(t, r, "/bids/allow", "bk-cancelled")
	r.JoinWith(t, cancelled)

	// And the allow survives the next restart too.
	r.Stop()
	r = testkit.RelayOf(t, testkit.Start(t, env...), secret)
	expectBids(t, r, "/bids/deny")

	// Bad admin requests.
	for _, q := range []string{"", "?bid=x", "?exp=" + strconv.FormatInt(exp, 10), "?bid=x&exp=12", "?bid=x&exp=soon"} {
		testkit.ExpectRelayError(t, "deny"+q, r.Admin(t, http.MethodPost, "/bids/deny"+q, relay.ScopeAdmin), 400, "")
	}
}

func expectBids(t *testing.T, r *testkit.Relay, path string, want ...string) {
	t.Helper()
	resp := r.Admin(t, http.MethodGet, path, relay.ScopeAdmin)
	var doc struct {
		BookingIDs []string `json:"booking_ids"`
	}
	if resp.Status != 200 || json.Unmarshal([]byte(resp.Body), &doc) != nil || doc.BookingIDs == nil {
		t.Fatalf("GET %s: %d %q", path, resp.Status, resp.Body)
	}
	if want == nil {
		want = []string{}
	}
	if !slices.Equal(doc.BookingIDs, want) {
		t.Fatalf("GET %s: %q, want %q", path, doc.BookingIDs, want)
	}
}
