package main

// Spec §1: process, configuration, secrets and shutdown.

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestTokenNeverLogged(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	const wrongToken = "e2e-wrong-token-5f0c1d"

	// Failures, by query and by header, on plain and upgrade routes.
	testkit.Get(t, s, testkit.BasePath+"?bearer_token="+wrongToken)
	testkit.Get(t, s, testkit.BasePath, "Authorization: Bearer "+wrongToken)
	testkit.GetUpgrade(t, s, testkit.DispatchTarget(testkit.BasePath, "tcp", testkit.FreeTCPPort(t), testkit.Localhost)+"&bearer_token="+wrongToken)
	testkit.Get(t, s, testkit.BasePath+"?bearer_token="+s.Secret(), "Authorization:")

	// Successes, by query and by header, with traffic.
	testkit.ExpectResponse(t, "stats by query", testkit.Get(t, s, testkit.BasePath+"?bearer_token="+s.Secret()), http.StatusOK, "application/json", testkit.EmptyStats)
	testkit.ExpectResponse(t, "stats by header", testkit.Get(t, s, testkit.BasePath, testkit.BearerHeader(s)), http.StatusOK, "application/json", testkit.EmptyStats)
	byHeader, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	byQuery, err := testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.BasePath, "tcp", port, testkit.Localhost)+"&bearer_token="+s.Secret(), http.Header{})
	if err != nil {
		t.Fatal(err)
	}
	device := testkit.DialDevice(t, testkit.Localhost, port)
	testkit.Send(t, device, []byte("data"))
	for _, d := range []*testkit.Driver{byQuery, byHeader} {
		d.ExpectOpened(testkit.Localhost, 0)
		d.ExpectReceived(testkit.Localhost, 0, []byte("data"))
	}
	byQuery.Leave()

	s.Stop() // flush every log line
	logs := s.Logs()
	if !strings.Contains(strings.ToLower(logs), "level=debug") {
		t.Errorf("no debug lines logged; the check below proves little")
	}
	if strings.Contains(logs, s.Secret()) {
		t.Errorf("the secret appears in the server output")
	}
	if strings.Contains(logs, wrongToken) {
		t.Errorf("a presented (wrong) token appears in the server output")
	}
}

func TestSIGTERMClosesDriversWith1001AndExits0(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, _, device := testkit.OpenPortWithDevice(t, s, testkit.Localhost)

	if err := s.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// CLOSED for the dropped device may come first; then the close frame.
	for {
		op, msg, err := d.NextMessage()
		var closeErr *testkit.CloseFrameError
		if errors.As(err, &closeErr) {
			if closeErr.Code != ws.StatusGoingAway {
				t.Fatalf("close code %d (%q), want 1001", closeErr.Code, closeErr.Reason)
			}
			break
		}
		if err != nil {
			t.Fatalf("waiting for close frame 1001: %v", err)
		}
		if op != ws.OpBinary {
			t.Fatalf("got a %v message %q before the close frame", op, msg)
		}
	}
	select {
	case <-s.Exited():
	case <-time.After(testkit.ShutdownTimeout):
		t.Fatalf("still running %v after SIGTERM", testkit.ShutdownTimeout)
	}
	if code := s.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	testkit.ExpectDisconnected(t, device)
}

func TestSecretSources(t *testing.T) {
	t.Parallel()
	secretsDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(secretsDir, "PLACE_SERVER_SECRET"), []byte("from-file"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		env      []string
		accepted string
		rejected []string
	}{
		{"PLACE_SERVER_SECRET", []string{"PLACE_SERVER_SECRET=place", "SERVER_SECRET=server"}, "place", []string{"server", "testing"}},
		{"SERVER_SECRET", []string{"SERVER_SECRET=server"}, "server", []string{"testing"}},
		{"default", nil, "testing", []string{"server"}},
		{"secrets file", []string{"SECRETS_PATH=" + secretsDir}, "from-file", []string{"testing"}},
		{"environment beats file", []string{"SECRETS_PATH=" + secretsDir, "PLACE_SERVER_SECRET=place"}, "place", []string{"from-file"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := testkit.Launch(t, testkit.Options{Secret: c.accepted, Env: c.env})
			testkit.ExpectResponse(t, "token "+c.accepted, testkit.Get(t, s, testkit.BasePath, testkit.BearerHeader(s)), http.StatusOK, "application/json", testkit.EmptyStats)
			for _, token := range c.rejected {
				testkit.ExpectResponse(t, "token "+token, testkit.Get(t, s, testkit.BasePath, "Authorization: Bearer "+token),
					http.StatusUnauthorized, "application/json", testkit.InvalidTokenBody)
			}
		})
	}
}

func TestDefaultSecretWarns(t *testing.T) {
	t.Parallel()
	defaulted := testkit.Launch(t, testkit.Options{Secret: "testing"})
	defaulted.Stop()
	if !testkit.WarnLine.MatchString(defaulted.Logs()) {
		t.Errorf("no warning logged at start with the default secret:\n%s", defaulted.Logs())
	}
}

func TestVersionFlag(t *testing.T) {
	t.Parallel()
	for _, flag := range []string{"-v", "--version"} {
		out, err := exec.Command(testkit.BinaryPath(t), flag).CombinedOutput()
		if err != nil {
			t.Errorf("dispatch %s: %v (%s)", flag, err, out)
		} else if len(strings.TrimSpace(string(out))) == 0 {
			t.Errorf("dispatch %s printed nothing", flag)
		}
	}
}

func TestCurlFlag(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	statusServer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hang-up" {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		status, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/"))
		w.WriteHeader(status)
	}))
	defer statusServer.Close()

	cases := []struct {
		url      string
		exitCode int
	}{
		{"http://" + s.HTTPAddr() + testkit.BasePath + "/healthz", 0},
		{"http://" + s.HTTPAddr() + testkit.BasePath, 0}, // 401
		{statusServer.URL + "/200", 0},
		{statusServer.URL + "/499", 0},
		{statusServer.URL + "/500", 1},
		{statusServer.URL + "/503", 1},
		{statusServer.URL + "/hang-up", 1},
	}
	for _, c := range cases {
		for _, flag := range []string{"-c", "--curl"} {
			cmd := exec.Command(testkit.BinaryPath(t), flag, c.url)
			cmd.Env = []string{}
			out, _ := cmd.CombinedOutput()
			if got := cmd.ProcessState.ExitCode(); got != c.exitCode {
				t.Errorf("dispatch %s %s: exit code %d, want %d (%s)", flag, c.url, got, c.exitCode, out)
			}
		}
	}
}

func TestLogLevelAndFormat(t *testing.T) {
	t.Parallel()
	debugLine := regexp.MustCompile(`(?i)level"?[=:]"?debug`)
	cases := []struct {
		name      string
		env       []string
		wantDebug bool
	}{
		{"default is debug", nil, true},
		{"production is info", []string{"SG_ENV=production"}, false},
		{"LOG_LEVEL overrides production", []string{"SG_ENV=production", "LOG_LEVEL=debug"}, true},
		{"LOG_LEVEL overrides default", []string{"LOG_LEVEL=info"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := testkit.Launch(t, testkit.Options{Secret: "secret", Env: append(c.env, "PLACE_SERVER_SECRET=secret")})
			testkit.OpenPortWithDevice(t, s, testkit.Localhost)
			testkit.Get(t, s, testkit.BasePath) // a refused request
			s.Stop()
			if got := debugLine.MatchString(s.Logs()); got != c.wantDebug {
				t.Errorf("debug lines logged: %v, want %v", got, c.wantDebug)
			}
		})
	}

	t.Run("JSON", func(t *testing.T) {
		t.Parallel()
		s := testkit.Launch(t, testkit.Options{Secret: "secret", Env: []string{"PLACE_SERVER_SECRET=secret", "PLACE_LOG_FORMAT=json"}})
		testkit.ExpectResponse(t, "stats", testkit.Get(t, s, testkit.BasePath, testkit.BearerHeader(s)), http.StatusOK, "application/json", testkit.EmptyStats)
		s.Stop()
		for _, line := range strings.Split(strings.TrimSpace(s.Logs()), "\n") {
			if !json.Valid([]byte(line)) {
				t.Errorf("not a JSON log line: %s", line)
			}
		}
	})
}
