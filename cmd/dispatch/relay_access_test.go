package main

// The relay's access API and connection checks, as practable's clients
// meet them: token checks, codes, refusals before the upgrade.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop/relay"
)

// Each bad token is refused with its status and reason, in JSON, and
// counted by reason; a good one gets a code, raw or after "Bearer ".
func TestRelayTokenChecks(t *testing.T) {
	r := testkit.StartRelay(t, "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	now := time.Now()
	cases := []struct {
		name   string
		topic  string // path topic; default "lab"
		token  string
		status int
		reason relay.Reason
	}{
		{name: "bad signature", token: r.Token(t, testkit.TokenSpec{Topic: "lab", Key: []byte("not-the-secret")}),
			status: 401, reason: relay.ReasonSignature},
		{name: "wrong topic", token: r.Token(t, testkit.TokenSpec{Topic: "other"}), status: 401, reason: relay.ReasonTopic},
		{name: "wrong audience", token: r.Token(t, testkit.TokenSpec{Topic: "lab", Audience: "https://elsewhere.example"}),
			status: 401, reason: relay.ReasonAudience},
		{name: "expired", token: r.Token(t, testkit.TokenSpec{Topic: "lab", IssuedAt: now.Add(-2 * time.Hour),
			NotBefore: now.Add(-2 * time.Hour), Expires: now.Add(-time.Minute)}), status: 401, reason: relay.ReasonExpired},
		{name: "not yet valid", token: r.Token(t, testkit.TokenSpec{Topic: "lab", NotBefore: now.Add(time.Hour)}),
			status: 401, reason: relay.ReasonNotYetValid},
		{name: "no read or write scope", token: r.Token(t, testkit.TokenSpec{Topic: "lab", Scopes: []string{"relay:stats"}}),
			status: 401, reason: relay.ReasonScope},
		{name: "malformed", token: "not.a.jwt", status: 401, reason: relay.ReasonMalformed},
		{name: "missing", token: "", status: 401, reason: relay.ReasonMissingToken},
		{name: "unsigned (alg none)", token: unsignedToken(t, r), status: 401, reason: relay.ReasonAlgorithm},
		{name: "no booking id", token: r.Token(t, testkit.TokenSpec{Topic: "lab", NoBooking: true}),
			status: 400, reason: relay.ReasonNoBooking},
		{name: "unknown prefix", token: r.Token(t, testkit.TokenSpec{Topic: "lab", Prefix: "shell"}),
			status: 404, reason: relay.ReasonPrefix},
	}
	for _, c := range cases {
		topic := c.topic
		if topic == "" {
			topic = "lab"
		}
		testkit.ExpectRelayError(t, c.name, r.Access(t, topic, c.token), c.status, string(c.reason))
	}

	good := r.Token(t, testkit.TokenSpec{Topic: "lab"})
	for _, auth := range []string{good, "Bearer " + good} {
		resp := testkit.Request(t, http.MethodPost, r.AccessURL+"/session/lab", auth)
		if resp.Status != 200 || !strings.Contains(resp.Body, `"uri":"`+r.RelayURL+`/session/lab?code=`) {
			t.Errorf("good token (%.7s…): %d %q", auth, resp.Status, resp.Body)
		}
	}

	// Admin and stats endpoints want their scopes.
	testkit.ExpectRelayError(t, "deny without relay:admin",
		r.Admin(t, http.MethodPost, "/bids/deny?bid=x&exp=9999999999", relay.ScopeRead), 401, string(relay.ReasonScope))
	testkit.ExpectRelayError(t, "status without relay:stats", r.Admin(t, http.MethodGet, "/status", relay.ScopeAdmin), 401, string(relay.ReasonScope))
	// Unknown paths, methods and prefixes.
	testkit.ExpectRelayError(t, "POST to shell", testkit.Request(t, http.MethodPost, r.AccessURL+"/shell/lab", good), 404, "")
	testkit.ExpectRelayError(t, "GET a session", testkit.Request(t, http.MethodGet, r.AccessURL+"/session/lab", good), 426, "")
	testkit.ExpectRelayError(t, "unknown path", testkit.Request(t, http.MethodGet, r.AccessURL+"/nothing", ""), 404, "")
	testkit.ExpectRelayError(t, "bad topic", r.Access(t, "a%20b", good), 400, "")

	metrics := r.MetricsAddr(t)
	for _, c := range cases {
		testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_relay_auth_failures_total", "reason", string(c.reason))
	}
	testkit.ExpectMetric(t, metrics, 2, "dispatch_relay_codes_total", "outcome", "issued")
	// One log line per interval for refusals, not one per refusal.
	if n := testkit.CountLines(r.Logs(), `msg="refused relay access"`); n > 2 {
		t.Errorf("%d log lines for refused access, want at most 2:\n%s", n, testkit.LinesContaining(r.Logs(), "refused relay access"))
	}
}

// unsignedToken is a token with alg none, which no relay may accept.
func unsignedToken(t *testing.T, r *testkit.Relay) string {
	good := r.Token(t, testkit.TokenSpec{Topic: "lab"})
	parts := strings.Split(good, ".")
	return "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + parts[1] + "."
}

// A code works once; an unknown, used or expired one is refused with a JSON
// 401 before any upgrade, never with a 101.
func TestRelayCodesAreSingleUseAndExpire(t *testing.T) {
	r := testkit.StartRelay(t, "DISPATCH_RELAY_CODE_TTL=300ms", "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	token := r.Token(t, testkit.TokenSpec{Topic: "lab"})
	uri := r.CodeURI(t, "lab", token)
	if _, err := testkit.DialRelay(t, uri); err != nil {
		t.Fatalf("first use of a code: %v", err)
	}
	testkit.ExpectRelayError(t, "second use of a code", testkit.UpgradeAnswer(t, uri), 401, string(relay.ReasonCode))
	testkit.ExpectRelayError(t, "made-up code", testkit.UpgradeAnswer(t, r.RelayURL+"/session/lab?code=00000000-0000-0000-0000-000000000000"),
		401, string(relay.ReasonCode))
	testkit.ExpectRelayError(t, "no code", testkit.UpgradeAnswer(t, r.RelayURL+"/session/lab"), 401, string(relay.ReasonCode))

	// A code for one topic does not open another.
	other := r.CodeURI(t, "lab", token)
	testkit.ExpectRelayError(t, "code on another topic", testkit.UpgradeAnswer(t, strings.Replace(other, "/session/lab?", "/session/lab2?", 1)),
		401, string(relay.ReasonTopic))

	// A code left unused expires.
	stale := r.CodeURI(t, "lab", token)
	testkit.ExpectMetricAtLeast(t, r.MetricsAddr(t), 1, "dispatch_relay_codes_total", "outcome", "expired")
	resp := testkit.UpgradeAnswer(t, stale)
	if resp.Status != 401 || !strings.Contains(resp.Body, "code") {
		t.Errorf("expired code: %d %q, want a JSON 401", resp.Status, resp.Body)
	}
}

// Tokens signed with a private key are checked with the public key from
// --relay-public-key: RS256, ES256 and EdDSA; a token from another key, or
// an HS256 token when the server holds no secret, is refused.
func TestRelayAsymmetricTokens(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, c := range []struct {
		name          string
		key, public   any
		wrongKey      any
		wrongAlgToken bool
	}{
		{"RS256", rsaKey, &rsaKey.PublicKey, otherRSA, true},
		{"ES256", ecKey, &ecKey.PublicKey, nil, false},
		{"EdDSA", edKey, edKey.Public(), nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "relay.pub")
			der, err := x509.MarshalPKIXPublicKey(c.public)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
				t.Fatal(err)
			}
			p := testkit.Start(t, "DISPATCH_RELAY_LISTEN=127.0.0.1:0", "DISPATCH_RELAY_PUBLIC_KEY="+path)
			r := testkit.RelayOf(t, p, "")
			r.Key = c.key
			a := r.JoinWith(t, testkit.TokenSpec{Topic: "lab", Key: c.key})
			b := r.JoinWith(t, testkit.TokenSpec{Topic: "lab", Key: c.key})
			r.WaitRelayConns(t, "lab", 2)
			a.SendText("signed by " + c.name)
			b.ExpectMessage(ws.OpText, []byte("signed by "+c.name))
			if c.wrongKey != nil {
				testkit.ExpectRelayError(t, "another key", r.Access(t, "lab", r.Token(t, testkit.TokenSpec{Topic: "lab", Key: c.wrongKey})),
					401, string(relay.ReasonSignature))
			}
			testkit.ExpectRelayError(t, "HS256 without a secret", r.Access(t, "lab", r.Token(t, testkit.TokenSpec{Topic: "lab", Key: []byte("guess")})),
				401, string(relay.ReasonAlgorithm))
		})
	}
}

// The token subcommand mints what the server accepts.
func TestRelayTokenSubcommand(t *testing.T) {
	r := testkit.StartRelay(t)
	out := runBinary(t, []string{"RELAY_TOKEN_SECRET=" + string(r.RelaySecret)},
		"token", "--topic", "cli", "--audience", r.AccessURL, "--scopes", "read,write", "--lifetime", "60")
	uri := r.CodeURI(t, "cli", strings.TrimSpace(out))
	if _, err := testkit.DialRelay(t, uri); err != nil {
		t.Fatalf("connecting with a minted token: %v", err)
	}
}

// runBinary runs the test kit's binary to completion with env and returns
// its stdout, failing the test on a non-zero exit.
func runBinary(t *testing.T, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testkit.EventTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, testkit.BinaryPath(t), args...)
	cmd.Env = append(env, "SECRETS_PATH="+t.TempDir())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("dispatch %v: %v\n%s", args, err, stderr.String())
	}
	return stdout.String()
}
