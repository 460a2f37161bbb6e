package relay

import (
	"strings"
	"testing"
	"time"
)

// The deny list survives closing the store, and so do allows (until their
// expiry); expired entries are dropped when it opens; a second opener is
// refused with a clear error.
func TestStoreKeepsTheDenyList(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_700_000_000, 0)
	s, verdicts, err := openStore(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(verdicts) != 0 {
		t.Fatalf("a new store holds %v", verdicts)
	}
	at := now.UnixNano()
	for _, v := range []verdict{
		{bid: "kept", deny: true, exp: now.Add(time.Hour), at: at},
		{bid: "stale", deny: true, exp: now.Add(time.Minute), at: at},
		{bid: "allowed", deny: true, exp: now.Add(time.Hour), at: at},
		{bid: "allowed", deny: false, exp: now.Add(time.Hour), at: at + 1},
	} {
		if written, err := s.put(&v, now); err != nil || !written {
			t.Fatalf("put %+v: %v, written %v", v, err, written)
		}
	}
	if _, _, err := openStore(dir, now); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("a second opener: %v", err)
	}
	if err := s.close(); err != nil {
		t.Fatal(err)
	}
	s, verdicts, err = openStore(dir, now.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	got := map[string]verdict{}
	for _, v := range verdicts {
		got[v.bid] = v
	}
	if len(got) != 2 || !got["kept"].deny || !got["kept"].exp.Equal(now.Add(time.Hour)) || got["allowed"].deny || got["allowed"].at != at+1 {
		t.Fatalf("reopened verdicts %+v, want kept denied and allowed allowed", got)
	}
}

// A verdict older than the one stored for its booking is not written:
// replicas that hear decisions in any order store the latest.
func TestStoreKeepsTheLatestVerdict(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s, _, err := openStore(t.TempDir(), now)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	exp := now.Add(time.Hour)
	allow := verdict{bid: "b", deny: false, exp: exp, at: 20}
	if written, _ := s.put(&allow, now); !written {
		t.Fatal("the first verdict was not written")
	}
	for _, older := range []verdict{{bid: "b", deny: true, exp: exp, at: 10}, {bid: "b", deny: false, exp: exp, at: 20}} {
		if written, err := s.put(&older, now); err != nil || written {
			t.Fatalf("%+v: written %v, %v; want it refused", older, written, err)
		}
	}
	// At the same instant a deny wins.
	tie := verdict{bid: "b", deny: true, exp: exp, at: 20}
	if written, _ := s.put(&tie, now); !written {
		t.Fatal("a deny at the same instant as an allow was not written")
	}
}

// Stores written before replicas (8-byte values) are read, as the oldest
// decisions.
func TestStoreReadsOldEntries(t *testing.T) {
	exp, at, ok := decodeEntry([]byte{0, 0, 0, 0, 0x65, 0x53, 0xf1, 0})
	if !ok || at != 0 || exp.Unix() != 0x6553f100 {
		t.Fatalf("old entry: %v %d %v", exp, at, ok)
	}
	if _, _, ok := decodeEntry([]byte{1, 2, 3}); ok {
		t.Fatal("a 3-byte entry read")
	}
}
