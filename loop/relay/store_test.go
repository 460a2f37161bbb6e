package relay

import (
	"strings"
	"testing"
	"time"
)

// The deny list survives closing the store; expired entries are dropped
// when it opens; a second opener is refused with a clear error.
func TestStoreKeepsTheDenyList(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_700_000_000, 0)
	s, denied, err := openStore(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(denied) != 0 {
		t.Fatalf("a new store holds %v", denied)
	}
	if err := s.deny("kept", now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if err := s.deny("stale", now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	if err := s.deny("allowed", now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	if err := s.allow("allowed"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openStore(dir, now); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a second opener: %v", err)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	s, denied, err = openStore(dir, now.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if len(denied) != 1 || !denied["kept"].Equal(now.Add(time.Hour)) {
		t.Fatalf("reopened deny list %v, want only kept", denied)
	}
}
