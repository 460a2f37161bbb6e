package main

import (
	"bytes"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envOf(vars map[string]string) env {
	return newEnv(func(k string) (string, bool) { v, ok := vars[k]; return v, ok })
}

func TestDefaults(t *testing.T) {
	o, err := parseOptions(nil, envOf(map[string]string{"SECRETS_PATH": t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	if o.core.HTTPAddr != "127.0.0.1:3000" || o.driver.Secret != "testing" || o.secretSrc != "default" {
		t.Fatalf("defaults: addr %s secret source %s", o.core.HTTPAddr, o.secretSrc)
	}
	if o.logLevel != slog.LevelDebug {
		t.Fatalf("default log level %v, want debug", o.logLevel)
	}
}

func TestEnvironmentThenFlags(t *testing.T) {
	vars := map[string]string{
		"SECRETS_PATH":               t.TempDir(),
		"SG_SERVER_HOST":             "0.0.0.0",
		"SG_SERVER_PORT":             "4000",
		"DISPATCH_HANDSHAKE_TIMEOUT": "3s",
		"DISPATCH_MAX_CONNS":         "77",
		"SERVER_SECRET":              "fallback",
		"SG_ENV":                     "production",
	}
	o, err := parseOptions([]string{"-p", "5000", "--max-conns", "88"}, envOf(vars))
	if err != nil {
		t.Fatal(err)
	}
	if o.core.HTTPAddr != "0.0.0.0:5000" {
		t.Errorf("addr %s: the flag must win over SG_SERVER_PORT", o.core.HTTPAddr)
	}
	if o.core.HandshakeTimeout != 3*time.Second || o.core.MaxConns != 88 {
		t.Errorf("timeout %v max conns %d", o.core.HandshakeTimeout, o.core.MaxConns)
	}
	if o.driver.Secret != "fallback" || o.secretSrc != "SERVER_SECRET" {
		t.Errorf("secret from %s", o.secretSrc)
	}
	if o.logLevel != slog.LevelInfo {
		t.Errorf("SG_ENV=production gives %v", o.logLevel)
	}
	vars["LOG_LEVEL"] = "warn"
	vars["PLACE_SERVER_SECRET"] = "primary"
	o, err = parseOptions(nil, envOf(vars))
	if err != nil || o.logLevel != slog.LevelWarn || o.driver.Secret != "primary" {
		t.Fatalf("LOG_LEVEL/PLACE_SERVER_SECRET: %v %v %v", err, o.logLevel, o.secretSrc)
	}
}

func TestSecretsPathFillsMissingVariables(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "PLACE_SERVER_SECRET"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseOptions(nil, envOf(map[string]string{"SECRETS_PATH": dir}))
	if err != nil || o.driver.Secret != "from-file" {
		t.Fatalf("secret %q err %v", o.driver.Secret, err)
	}
	// The environment wins over the file.
	o, _ = parseOptions(nil, envOf(map[string]string{"SECRETS_PATH": dir, "PLACE_SERVER_SECRET": "env"}))
	if o.driver.Secret != "env" {
		t.Fatalf("secret %q, want the environment's", o.driver.Secret)
	}
}

func TestBadValuesAreErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		vars map[string]string
	}{
		{[]string{"-p", "70000"}, nil},
		{[]string{"--handshake-timeout", "soon"}, nil},
		{nil, map[string]string{"DISPATCH_MAX_CONNS": "many"}},
		{nil, map[string]string{"LOG_LEVEL": "loud"}},
		{[]string{"stray"}, nil},
	} {
		vars := map[string]string{"SECRETS_PATH": t.TempDir()}
		for k, v := range c.vars {
			vars[k] = v
		}
		if _, err := parseOptions(c.args, envOf(vars)); err == nil {
			t.Errorf("%v %v accepted", c.args, c.vars)
		}
	}
}

func TestHelpListsEveryFlagWithItsVariable(t *testing.T) {
	o, err := parseOptions([]string{"-h"}, envOf(map[string]string{"SECRETS_PATH": t.TempDir(), "PLACE_SERVER_SECRET": "hidden"}))
	if err != flag.ErrHelp {
		t.Fatalf("-h: %v", err)
	}
	var out bytes.Buffer
	o.usage(&out)
	help := out.String()
	for _, want := range []string{"SG_SERVER_HOST", "SG_SERVER_PORT", "DISPATCH_MAX_DRIVER_PENDING", "DISPATCH_METRICS_ADDR",
		"PLACE_SERVER_SECRET", "SECRETS_PATH", "LOG_LEVEL", "PLACE_LOG_FORMAT", "--curl", "--version"} {
		if !strings.Contains(help, want) {
			t.Errorf("-h does not mention %s", want)
		}
	}
	if strings.Contains(help, "hidden") {
		t.Error("-h printed the secret")
	}
}

// The help shows the built-in defaults, not what the environment set.
func TestHelpShowsDefaultsNotTheEnvironment(t *testing.T) {
	o, err := parseOptions([]string{"-h"}, envOf(map[string]string{"SECRETS_PATH": t.TempDir(), "DISPATCH_MAX_CONNS": "77"}))
	if err != flag.ErrHelp {
		t.Fatalf("-h: %v", err)
	}
	var out bytes.Buffer
	o.usage(&out)
	if strings.Contains(out.String(), `"77"`) || !strings.Contains(out.String(), `"100000"`) {
		t.Fatalf("help shows the environment's value as the default:\n%s", out.String())
	}
}

// Every bound names the flag and its variable, whichever of them set the
// value, and the smallest accepted value passes.
func TestOutOfRangeValuesNameTheFlag(t *testing.T) {
	cases := []struct {
		flag, env, bad, lowest, want string
	}{
		{"port", "SG_SERVER_PORT", "-1", "0", "must be in 0-65535, got -1"},
		{"port", "SG_SERVER_PORT", "65536", "65535", "must be in 0-65535, got 65536"},
		{"max-head-bytes", "DISPATCH_MAX_HEAD_BYTES", "255", "256", "must be at least 256, got 255"},
		{"handshake-timeout", "DISPATCH_HANDSHAKE_TIMEOUT", "0s", "1ms", "must be positive, got 0s"},
		{"handshake-timeout", "DISPATCH_HANDSHAKE_TIMEOUT", "-1s", "1ns", "must be positive, got -1s"},
		{"max-handshakes", "DISPATCH_MAX_HANDSHAKES", "0", "1", "must be at least 1, got 0"},
		{"max-message-bytes", "DISPATCH_MAX_MESSAGE_BYTES", "63", "64", "must be at least 64, got 63"},
		{"max-driver-pending", "DISPATCH_MAX_DRIVER_PENDING", "65535", "65536", "must be at least 65536, got 65535"},
		{"max-device-pending", "DISPATCH_MAX_DEVICE_PENDING", "0", "1", "must be at least 1, got 0"},
		{"max-port-conns", "DISPATCH_MAX_PORT_CONNS", "0", "1", "must be at least 1, got 0"},
		{"max-conns", "DISPATCH_MAX_CONNS", "-1", "1", "must be at least 1, got -1"},
		{"udp-queue-bytes", "DISPATCH_UDP_QUEUE_BYTES", "65535", "65536", "must be at least 65536, got 65535"},
		{"max-member-pending", "DISPATCH_MAX_MEMBER_PENDING", "65535", "65536", "must be at least 65536, got 65535"},
		{"group-join-timeout", "DISPATCH_GROUP_JOIN_TIMEOUT", "0s", "1ms", "must be positive, got 0s"},
		{"group-udp-idle", "DISPATCH_GROUP_UDP_IDLE", "-5m", "1s", "must be positive, got -5m0s"},
		{"group-id-max-len", "DISPATCH_GROUP_ID_MAX_LEN", "0", "1", "must be in 1-4096, got 0"},
		{"group-id-max-len", "DISPATCH_GROUP_ID_MAX_LEN", "4097", "4096", "must be in 1-4096, got 4097"},
		{"group-prefix", "DISPATCH_GROUP_PREFIX", "two\nlines", "J", `must be one non-empty line, got "two\nlines"`},
		{"metrics", "DISPATCH_METRICS_ADDR", "abc", "0", `want a port (0-65535) or host:port, got "abc"`},
		{"metrics", "DISPATCH_METRICS_ADDR", "127.0.0.1:http", "127.0.0.1:0", `want a port (0-65535) or host:port, got "127.0.0.1:http"`},
		{"metrics", "DISPATCH_METRICS_ADDR", "::1", "[::1]:0", `want a port or host:port, got "::1"`},
		{"group-tcp", "DISPATCH_GROUP_TCP", "70000", "127.0.0.1:0", `want a port (0-65535) or host:port, got "70000"`},
		{"group-udp", "DISPATCH_GROUP_UDP", "udp", "0", `want a port (0-65535) or host:port, got "udp"`},
	}
	for _, c := range cases {
		t.Run(c.flag+"="+c.bad, func(t *testing.T) {
			want := "--" + c.flag + " (" + c.env + "): " + c.want
			bySource := map[string]struct {
				args []string
				vars map[string]string
			}{
				"flag":        {[]string{"--" + c.flag, c.bad}, nil},
				"environment": {nil, map[string]string{c.env: c.bad}},
			}
			for source, in := range bySource {
				vars := map[string]string{"SECRETS_PATH": t.TempDir()}
				for k, v := range in.vars {
					vars[k] = v
				}
				_, err := parseOptions(in.args, envOf(vars))
				if err == nil || err.Error() != want {
					t.Errorf("by %s: error %v, want %q", source, err, want)
				}
			}
			if _, err := parseOptions([]string{"--" + c.flag, c.lowest}, envOf(map[string]string{"SECRETS_PATH": t.TempDir()})); err != nil {
				t.Errorf("--%s %s refused: %v", c.flag, c.lowest, err)
			}
		})
	}
}

// A value the environment gets wrong is forgiven when the flag corrects it:
// only the final value is checked.
func TestFlagCorrectsABadEnvironmentValue(t *testing.T) {
	vars := map[string]string{"SECRETS_PATH": t.TempDir(), "DISPATCH_MAX_CONNS": "-1"}
	o, err := parseOptions([]string{"--max-conns", "5"}, envOf(vars))
	if err != nil || o.core.MaxConns != 5 {
		t.Fatalf("err %v, max conns %v", err, o)
	}
}

// Every value parseOptions accepts, the loop and its kinds accept too: the
// checks here are at least as strict as theirs, so their unnamed errors
// never reach an operator.
func TestAcceptedBoundsPassTheLoop(t *testing.T) {
	args := []string{"--max-head-bytes", "256", "--handshake-timeout", "1ns", "--max-handshakes", "1",
		"--max-message-bytes", "64", "--max-driver-pending", "65536", "--max-device-pending", "1",
		"--max-port-conns", "1", "--max-conns", "1", "--udp-queue-bytes", "65536", "--max-member-pending", "65536",
		"--group-join-timeout", "1ns", "--group-id-max-len", "4096", "--group-udp-idle", "1ns", "--group-prefix", "J"}
	o, err := parseOptions(args, envOf(map[string]string{"SECRETS_PATH": t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newServer(o); err != nil {
		t.Fatalf("the server refuses what the command line accepted: %v", err)
	}
	o.groups.IDMaxLen = maxGroupIDLen + 1
	if _, err := newServer(o); err == nil {
		t.Fatal("the groups kind accepts a longer group id limit than the command line: maxGroupIDLen is stale")
	}
}

func TestConfigLogMasksTheSecret(t *testing.T) {
	o, err := parseOptions(nil, envOf(map[string]string{"SECRETS_PATH": t.TempDir(), "PLACE_SERVER_SECRET": "do-not-print"}))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	o.logConfig(slog.New(slog.NewTextHandler(&logs, nil)))
	if strings.Contains(logs.String(), "do-not-print") || !strings.Contains(logs.String(), "secret_source=PLACE_SERVER_SECRET") {
		t.Fatalf("config line: %s", logs.String())
	}
}

func TestMetricsAddrBarePortIsLoopback(t *testing.T) {
	for in, want := range map[string]string{"9100": "127.0.0.1:9100", "0.0.0.0:9100": "0.0.0.0:9100", ":9100": ":9100", "": ""} {
		if got := metricsAddr(in); got != want {
			t.Errorf("metricsAddr(%q) = %q, want %q", in, got, want)
		}
	}
}
