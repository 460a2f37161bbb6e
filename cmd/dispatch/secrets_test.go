package main

// Robustness, part three: secrets. The shared token must never reach the
// logs, at any level and in either format, whatever a client sends; and
// the server warns at start exactly when it runs on the default secret.

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestSecretNeverLoggedAtAnyLevelInEitherFormat(t *testing.T) {
	t.Parallel()
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			secret := "robust-secret-" + testkit.RandomHex(t, 16)
			env := []string{
				"PLACE_SERVER_SECRET=" + secret,
				"LOG_LEVEL=debug",
				"DISPATCH_HANDSHAKE_TIMEOUT=1s",
				"DISPATCH_DEVICE_HOST=" + testkit.Localhost,
			}
			if format == "json" {
				env = append(env, "PLACE_LOG_FORMAT=json")
			}
			s := testkit.Launch(t, testkit.Options{Secret: secret, Env: env})
			exerciseTokenPaths(t, s)
			s.Stop() // every line flushed
			logs := s.Logs()
			checkNoSecretInLogs(t, logs, secret, nearMisses(secret))
			if format == "json" {
				for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
					if !json.Valid([]byte(line)) {
						t.Errorf("not a JSON log line: %q", line)
						break
					}
				}
			}
		})
	}
}

// nearMisses are wrong tokens a hair away from the secret: a log line that
// echoed one of them would give the secret away just the same.
func nearMisses(secret string) []string {
	last := secret[len(secret)-1]
	flipped := byte('a')
	if last == 'a' {
		flipped = 'b'
	}
	return []string{
		secret + "x",
		secret[:len(secret)-1],
		secret[:len(secret)-1] + string(flipped),
		"x" + secret,
		strings.ToUpper(secret),
		secret[:len(secret)/2] + "-" + secret[len(secret)/2:],
	}
}

// exerciseTokenPaths presents the right token and near misses every way a
// client can: header and query, on every route, in requests that succeed,
// fail authentication, fail validation, are malformed, oversized or never
// finish, and on WebSocket sessions with traffic.
func exerciseTokenPaths(t *testing.T, s *testkit.Process) {
	t.Helper()
	secret := s.Secret()
	port := testkit.FreeTCPPort(t)
	tcp := func(p int, accept string) string { return testkit.DispatchTarget(testkit.BasePath, "tcp", p, accept) }

	for _, wrong := range nearMisses(secret) {
		testkit.ExpectResponse(t, "wrong header token", testkit.Get(t, s, testkit.BasePath, "Authorization: Bearer "+wrong), http.StatusUnauthorized, "application/json", testkit.InvalidTokenBody)
		testkit.ExpectResponse(t, "wrong query token", testkit.Get(t, s, testkit.BasePath+"?bearer_token="+wrong), http.StatusUnauthorized, "application/json", testkit.InvalidTokenBody)
		if r := testkit.GetUpgrade(t, s, tcp(port, testkit.Localhost)+"&bearer_token="+wrong); r.Status != http.StatusUnauthorized {
			t.Errorf("upgrade with a wrong query token: status %d", r.Status)
		}
		if r := testkit.GetUpgrade(t, s, tcp(port, testkit.Localhost), "Authorization: Bearer "+wrong); r.Status != http.StatusUnauthorized {
			t.Errorf("upgrade with a wrong header token: status %d", r.Status)
		}
	}
	// Right token, header and query, on every kind of answer.
	q := "bearer_token=" + secret
	testkit.Get(t, s, testkit.BasePath+"?"+q)
	testkit.Get(t, s, testkit.BasePath+"/?"+q)
	testkit.Get(t, s, testkit.LegacyBasePath+"?"+q)
	testkit.Get(t, s, testkit.BasePath+"/healthz?"+q)
	testkit.Get(t, s, testkit.BasePath+"/version?"+q)
	testkit.Get(t, s, "/nowhere?"+q)
	testkit.Get(t, s, testkit.BasePath+"/nowhere?"+q, testkit.BearerHeader(s))
	testkit.Get(t, s, tcp(port, testkit.Localhost)+"&"+q)                                                              // 426
	testkit.GetUpgrade(t, s, testkit.BasePath+"/tcp_dispatch?"+q)                                                      // 422
	testkit.GetUpgrade(t, s, testkit.BasePath+"/tcp_dispatch?port=0&accept=x&"+q)                                      // 400 port
	testkit.GetUpgrade(t, s, testkit.BasePath+"/tcp_dispatch?port=1&accept=nope&"+q)                                   // 400 accept
	testkit.GetUpgrade(t, s, testkit.BasePath+"/tcp_dispatch?port=1&accept=%zz&"+q)                                    // bad escape
	testkit.GetUpgrade(t, s, testkit.BasePath+"/udp_dispatch?port=70000&accept=1&"+q)                                  // 400
	testkit.GetUpgrade(t, s, tcp(port, testkit.Localhost)+"&"+q, "Authorization:")                                     // header wins: 401
	testkit.GetUpgrade(t, s, tcp(port, testkit.Localhost), "Authorization: "+secret)                                   // no "Bearer ": accepted as is
	testkit.RoundTrip(t, s, tcp(port, testkit.Localhost)+"&"+q, []string{"Upgrade: websocket", "Connection: Upgrade"}) // bad handshake
	testkit.RoundTrip(t, s, tcp(port, testkit.Localhost)+"&"+q, []string{"Upgrade: websocket", "Connection: Upgrade",
		"Sec-WebSocket-Version: 8", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="})
	// A device port that cannot be bound: 409.
	busy, err := net.Listen("tcp", net.JoinHostPort(testkit.Localhost, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	testkit.GetUpgrade(t, s, tcp(busy.Addr().(*net.TCPAddr).Port, testkit.Localhost)+"&"+q)

	// Malformed, oversized and unfinished requests carrying the token.
	for _, raw := range []string{
		"GET " + testkit.BasePath + "?" + q + " HTTP/1.1\r\nno colon\r\n\r\n",
		"GET " + testkit.BasePath + "?" + q + " SPDY/3\r\n\r\n",
		secret + "\r\n\r\n",
		"GET " + testkit.BasePath + " HTTP/1.1\r\nAuthorization: Bearer " + secret + "\r\nX-Pad: " + strings.Repeat("p", 9000) + "\r\n\r\n",
		"GET " + testkit.BasePath + "?" + q + strings.Repeat("&x=y", 3000) + " HTTP/1.1\r\n\r\n",
	} {
		conn := testkit.DialRaw(t, s)
		_ = conn.SetDeadline(time.Now().Add(testkit.EventTimeout))
		_, _ = io.WriteString(conn, raw)
		_, _ = io.ReadAll(conn)
	}
	unfinished := testkit.DialRaw(t, s)
	_, _ = io.WriteString(unfinished, "GET "+testkit.BasePath+"?"+q+" HTTP/1.1\r\nAuthorization: Bearer "+secret+"\r\n")
	testkit.ExpectClosedWithoutAnswer(t, "unfinished head", unfinished, 20*time.Second)

	// Sessions by query and by header, with traffic, a malformed message,
	// a protocol error and a polite close.
	byHeader := testkit.TCPDriver(t, s, port, testkit.Localhost)
	byQuery, err := testkit.DialDriver(t, s, tcp(port, testkit.Localhost)+"&"+q, http.Header{"X-Module-Id": {"mod"}})
	if err != nil {
		t.Fatalf("driver with the query token: %v", err)
	}
	device := testkit.DialDevice(t, testkit.Localhost, port)
	byHeader.ExpectOpened(testkit.Localhost, 0)
	byQuery.ExpectOpened(testkit.Localhost, 0)
	testkit.Send(t, device, []byte("hello"))
	byHeader.ExpectReceived(testkit.Localhost, 0, []byte("hello"))
	byQuery.ExpectReceived(testkit.Localhost, 0, []byte("hello"))
	byQuery.Write(testkit.Localhost, 0, []byte(secret)) // the secret as payload is data, not a token; it still must not be logged
	testkit.ExpectReceives(t, device, []byte(secret))
	byQuery.Send([]byte{3, 'x'})
	byQuery.ExpectCloseCode(1007)
	spare := testkit.TCPDriver(t, s, port, testkit.Localhost)
	_, _ = spare.Conn.Write(testkit.RawClientFrame(true, 4, 2, true, []byte("x")))
	spare.ExpectCloseCode(1002)
	byHeader.Leave()
}

// checkNoSecretInLogs fails if the secret, any near miss, or any 12-byte
// stretch of the secret appears anywhere in the output.
func checkNoSecretInLogs(t *testing.T, logs, secret string, misses []string) {
	t.Helper()
	if !strings.Contains(strings.ToLower(logs), "debug") {
		t.Errorf("no debug lines were logged; the check proves little:\n%s", logs)
	}
	if strings.Contains(logs, secret) {
		t.Errorf("the secret appears in the logs: %s", testkit.LinesContaining(logs, secret))
	}
	for _, m := range misses {
		if strings.Contains(logs, m) {
			t.Errorf("a near-miss token %q appears in the logs: %s", m, testkit.LinesContaining(logs, m))
		}
	}
	const window = 12
	for i := 0; i+window <= len(secret); i++ {
		if part := secret[i : i+window]; strings.Contains(logs, part) {
			t.Errorf("part of the secret (%q) appears in the logs: %s", part, testkit.LinesContaining(logs, part))
			return
		}
	}
}

func TestDefaultSecretWarningOnlyWithTheDefault(t *testing.T) {
	t.Parallel()
	secretsDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(secretsDir, "PLACE_SERVER_SECRET"), []byte("from-a-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		secret string
		env    []string
		warn   bool
	}{
		{"unset, text", "testing", nil, true},
		{"unset, json", "testing", []string{"PLACE_LOG_FORMAT=json"}, true},
		{"unset, production level", "testing", []string{"SG_ENV=production"}, true},
		{"empty variables", "testing", []string{"PLACE_SERVER_SECRET=", "SERVER_SECRET="}, true},
		{"PLACE_SERVER_SECRET", "s1-" + testkit.RandomHex(t, 8), nil, false},
		{"SERVER_SECRET", "s2-" + testkit.RandomHex(t, 8), nil, false},
		{"secrets file", "from-a-file", []string{"SECRETS_PATH=" + secretsDir}, false},
		{"set, json", "s3-" + testkit.RandomHex(t, 8), []string{"PLACE_LOG_FORMAT=json"}, false},
		// The spec: warn whenever the secret is the well-known default,
		// however it came to be.
		{"explicitly testing", "testing", []string{"PLACE_SERVER_SECRET=testing"}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			env := append([]string{"LOG_LEVEL=debug"}, c.env...)
			switch {
			case c.name == "PLACE_SERVER_SECRET" || c.name == "set, json":
				env = append(env, "PLACE_SERVER_SECRET="+c.secret)
			case c.name == "SERVER_SECRET":
				env = append(env, "SERVER_SECRET="+c.secret)
			}
			if c.name == "unset, production level" {
				env = env[1:] // SG_ENV=production alone: info level
			}
			s := testkit.Launch(t, testkit.Options{Secret: c.secret, Env: env})
			testkit.ExpectResponse(t, "the configured secret works", testkit.Get(t, s, testkit.BasePath, testkit.BearerHeader(s)), http.StatusOK, "application/json", testkit.EmptyStats)
			s.Stop()
			logs := s.Logs()
			var warnings []string
			for _, line := range strings.Split(logs, "\n") {
				if strings.Contains(strings.ToLower(line), "default secret") {
					warnings = append(warnings, line)
				}
			}
			switch {
			case c.warn && len(warnings) != 1:
				t.Errorf("want exactly one default-secret warning, got %d:\n%s", len(warnings), logs)
			case c.warn && !testkit.WarnLine.MatchString(warnings[0]):
				t.Errorf("the default-secret line is not a warning: %s", warnings[0])
			case !c.warn && len(warnings) > 0:
				t.Errorf("default-secret warning with a configured secret:\n%s", strings.Join(warnings, "\n"))
			}
			if !c.warn && strings.Contains(logs, c.secret) {
				t.Errorf("the configured secret appears in the logs: %s", testkit.LinesContaining(logs, c.secret))
			}
		})
	}
}
