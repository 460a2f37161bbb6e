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
	o, err := parseOptions(nil, envOf(map[string]string{"SECRETS_PATH": t.TempDir()}), &bytes.Buffer{})
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
	o, err := parseOptions([]string{"-p", "5000", "--max-conns", "88"}, envOf(vars), &bytes.Buffer{})
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
	o, err = parseOptions(nil, envOf(vars), &bytes.Buffer{})
	if err != nil || o.logLevel != slog.LevelWarn || o.driver.Secret != "primary" {
		t.Fatalf("LOG_LEVEL/PLACE_SERVER_SECRET: %v %v %v", err, o.logLevel, o.secretSrc)
	}
}

func TestSecretsPathFillsMissingVariables(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "PLACE_SERVER_SECRET"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseOptions(nil, envOf(map[string]string{"SECRETS_PATH": dir}), &bytes.Buffer{})
	if err != nil || o.driver.Secret != "from-file" {
		t.Fatalf("secret %q err %v", o.driver.Secret, err)
	}
	// The environment wins over the file.
	o, _ = parseOptions(nil, envOf(map[string]string{"SECRETS_PATH": dir, "PLACE_SERVER_SECRET": "env"}), &bytes.Buffer{})
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
		if _, err := parseOptions(c.args, envOf(vars), &bytes.Buffer{}); err == nil {
			t.Errorf("%v %v accepted", c.args, c.vars)
		}
	}
}

func TestHelpListsEveryFlagWithItsVariable(t *testing.T) {
	var out bytes.Buffer
	o, err := parseOptions([]string{"-h"}, envOf(map[string]string{"SECRETS_PATH": t.TempDir(), "PLACE_SERVER_SECRET": "hidden"}), &out)
	if err != flag.ErrHelp {
		t.Fatalf("-h: %v", err)
	}
	_ = o
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

func TestConfigLogMasksTheSecret(t *testing.T) {
	o, err := parseOptions(nil, envOf(map[string]string{"SECRETS_PATH": t.TempDir(), "PLACE_SERVER_SECRET": "do-not-print"}), &bytes.Buffer{})
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
