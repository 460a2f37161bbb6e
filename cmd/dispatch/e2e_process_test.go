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
)

func TestTokenNeverLogged(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	const wrongToken = "e2e-wrong-token-5f0c1d"

	// Failures, by query and by header, on plain and upgrade routes.
	s.get(t, basePath+"?bearer_token="+wrongToken)
	s.get(t, basePath, "Authorization: Bearer "+wrongToken)
	s.getUpgrade(t, dispatchTarget(basePath, "tcp", freeTCPPort(t), localhost)+"&bearer_token="+wrongToken)
	s.get(t, basePath+"?bearer_token="+s.secret, "Authorization:")

	// Successes, by query and by header, with traffic.
	expectResponse(t, "stats by query", s.get(t, basePath+"?bearer_token="+s.secret), http.StatusOK, "application/json", emptyStats)
	expectResponse(t, "stats by header", s.get(t, basePath, s.bearerHeader()), http.StatusOK, "application/json", emptyStats)
	byHeader, port := s.openPort(t, "tcp", localhost)
	byQuery, err := s.dialDriver(t, dispatchTarget(basePath, "tcp", port, localhost)+"&bearer_token="+s.secret, http.Header{})
	if err != nil {
		t.Fatal(err)
	}
	device := dialDevice(t, localhost, port)
	deviceSend(t, device, []byte("data"))
	for _, d := range []*driver{byQuery, byHeader} {
		d.expectOpened(localhost, 0)
		d.expectReceived(localhost, 0, []byte("data"))
	}
	byQuery.leave()

	s.stop() // flush every log line
	logs := s.logs.String()
	if !strings.Contains(strings.ToLower(logs), "level=debug") {
		t.Errorf("no debug lines logged; the check below proves little")
	}
	if strings.Contains(logs, s.secret) {
		t.Errorf("the secret appears in the server output")
	}
	if strings.Contains(logs, wrongToken) {
		t.Errorf("a presented (wrong) token appears in the server output")
	}
}

func TestSIGTERMClosesDriversWith1001AndExits0(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	device := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)

	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// CLOSED for the dropped device may come first; then the close frame.
	for {
		op, msg, err := d.nextMessage()
		var closeErr *closeFrameError
		if errors.As(err, &closeErr) {
			if closeErr.code != ws.StatusGoingAway {
				t.Fatalf("close code %d (%q), want 1001", closeErr.code, closeErr.reason)
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
	case <-s.exited:
	case <-time.After(shutdownTimeout):
		t.Fatalf("still running %v after SIGTERM", shutdownTimeout)
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	expectDeviceDisconnected(t, device)
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
			s := launchServer(t, c.accepted, c.env...)
			expectResponse(t, "token "+c.accepted, s.get(t, basePath, s.bearerHeader()), http.StatusOK, "application/json", emptyStats)
			for _, token := range c.rejected {
				expectResponse(t, "token "+token, s.get(t, basePath, "Authorization: Bearer "+token),
					http.StatusUnauthorized, "application/json", invalidTokenBody)
			}
		})
	}
}

func TestDefaultSecretWarns(t *testing.T) {
	t.Parallel()
	defaulted := launchServer(t, "testing")
	defaulted.stop()
	if !warnLine.MatchString(defaulted.logs.String()) {
		t.Errorf("no warning logged at start with the default secret:\n%s", defaulted.logs.String())
	}
}

func TestVersionFlag(t *testing.T) {
	t.Parallel()
	for _, flag := range []string{"-v", "--version"} {
		out, err := exec.Command(dispatchBinary, flag).CombinedOutput()
		if err != nil {
			t.Errorf("dispatch %s: %v (%s)", flag, err, out)
		} else if len(strings.TrimSpace(string(out))) == 0 {
			t.Errorf("dispatch %s printed nothing", flag)
		}
	}
}

func TestCurlFlag(t *testing.T) {
	t.Parallel()
	s := startServer(t)
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
		{"http://" + s.addr + basePath + "/healthz", 0},
		{"http://" + s.addr + basePath, 0}, // 401
		{statusServer.URL + "/200", 0},
		{statusServer.URL + "/499", 0},
		{statusServer.URL + "/500", 1},
		{statusServer.URL + "/503", 1},
		{statusServer.URL + "/hang-up", 1},
	}
	for _, c := range cases {
		for _, flag := range []string{"-c", "--curl"} {
			cmd := exec.Command(dispatchBinary, flag, c.url)
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
			s := launchServer(t, "secret", append(c.env, "PLACE_SERVER_SECRET=secret")...)
			d, port := s.openPort(t, "tcp", localhost)
			dialDevice(t, localhost, port)
			d.expectOpened(localhost, 0)
			s.get(t, basePath) // a refused request
			s.stop()
			if got := debugLine.MatchString(s.logs.String()); got != c.wantDebug {
				t.Errorf("debug lines logged: %v, want %v", got, c.wantDebug)
			}
		})
	}

	t.Run("JSON", func(t *testing.T) {
		t.Parallel()
		s := launchServer(t, "secret", "PLACE_SERVER_SECRET=secret", "PLACE_LOG_FORMAT=json")
		expectResponse(t, "stats", s.get(t, basePath, s.bearerHeader()), http.StatusOK, "application/json", emptyStats)
		s.stop()
		for _, line := range strings.Split(strings.TrimSpace(s.logs.String()), "\n") {
			if !json.Valid([]byte(line)) {
				t.Errorf("not a JSON log line: %s", line)
			}
		}
	})
}
