package harness

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// TestQuickSuite runs the quick suite against the real bin/dispatch when it
// has been built (go build -o bin/dispatch ./cmd/dispatch), and the floor
// of the everyday scenario, which it builds; it checks
// correctness (no byte lost or reordered, no crash), not speed.
func TestQuickSuite(t *testing.T) {
	bin := serverBin(t)
	if testing.Short() {
		t.Skip("-short")
	}
	cfg, err := SuiteConfig("quick")
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerBin = bin
	cfg.FloorBin = buildFloor(t)
	cfg.ServerCPU, cfg.HarnessCPU = -1, -1 // leave scheduling alone inside go test
	cfg.Logf = t.Logf
	if _, _, err := RaiseNofile(); err != nil {
		t.Logf("RLIMIT_NOFILE: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := rep.WriteJSON(filepath.Join(dir, "quick.json")); err != nil {
		t.Fatal(err)
	}
	if err := rep.WriteMarkdown(filepath.Join(dir, "quick.md")); err != nil {
		t.Fatal(err)
	}
	for _, s := range rep.Scenarios {
		if len(s.Metrics) == 0 && s.Error == "" {
			t.Errorf("%s: no figures", s.Name)
		}
	}
	if rep.Failed {
		for _, f := range rep.Failures {
			t.Error(f)
		}
	}
}
