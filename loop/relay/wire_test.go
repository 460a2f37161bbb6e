package relay

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestWireRedeemedRoundTrip(t *testing.T) {
	g := &grant{topic: "lab/1", read: true, scopes: []string{"read", "x"}, bid: "b-17", exp: time.Unix(1_700_000_000, 123)}
	out, got, err := parseRedeemed(appendRedeemed(nil, redeemOK, g))
	if err != nil || out != redeemOK {
		t.Fatalf("%d %v", out, err)
	}
	if got.topic != g.topic || got.read != g.read || got.write != g.write || got.bid != g.bid ||
		!got.exp.Equal(g.exp) || !slices.Equal(got.scopes, g.scopes) {
		t.Fatalf("got %+v, want %+v", got, g)
	}
	for _, o := range []uint8{redeemUnknown, redeemExpired} {
		if out, g, err := parseRedeemed(appendRedeemed(nil, o, nil)); err != nil || out != o || g != nil {
			t.Fatalf("outcome %d: %d %v %v", o, out, g, err)
		}
	}
	for _, bad := range [][]byte{nil, {3}, {redeemUnknown, 0}, appendRedeemed(nil, redeemOK, g)[:20]} {
		if _, _, err := parseRedeemed(bad); !errors.Is(err, errWire) {
			t.Errorf("% x: %v, want errWire", bad, err)
		}
	}
}

func TestWireVerdictsRoundTrip(t *testing.T) {
	in := []verdict{
		{bid: "a", deny: true, exp: time.Unix(1_800_000_000, 0), at: 42},
		{bid: "booking b", deny: false, exp: time.Unix(1_800_000_001, 0), at: -1},
	}
	msg := appendVerdicts(nil, verdictsAnswerBack)
	for i := range in {
		msg = appendVerdict(msg, &in[i])
	}
	var got []verdict
	flags, err := parseVerdicts(msg, func(v verdict) { got = append(got, v) })
	if err != nil || flags != verdictsAnswerBack || len(got) != 2 {
		t.Fatalf("flags %d, %v, %+v", flags, err, got)
	}
	for i := range in {
		if got[i].bid != in[i].bid || got[i].deny != in[i].deny || !got[i].exp.Equal(in[i].exp) || got[i].at != in[i].at {
			t.Fatalf("verdict %d: %+v, want %+v", i, got[i], in[i])
		}
	}
	// An empty list is one byte; a truncated or invalid entry is refused.
	if _, err := parseVerdicts([]byte{0}, func(verdict) { t.Fatal("a verdict in an empty list") }); err != nil {
		t.Fatal(err)
	}
	bad := [][]byte{nil, msg[:len(msg)-1], append(appendVerdicts(nil, 0), 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 'x')}
	empty := appendVerdict(appendVerdicts(nil, 0), &verdict{bid: ""})
	for _, b := range append(bad, empty) {
		if _, err := parseVerdicts(b, func(verdict) {}); !errors.Is(err, errWire) {
			t.Errorf("% x: %v, want errWire", b, err)
		}
	}
}

func FuzzRelayWire(f *testing.F) {
	g := &grant{topic: "t", write: true, scopes: []string{"write"}, bid: "b", exp: time.Unix(1, 2)}
	f.Add(appendRedeemed(nil, redeemOK, g))
	f.Add(appendVerdict(appendVerdicts(nil, 1), &verdict{bid: "b", deny: true, exp: time.Unix(5, 0), at: 7}))
	f.Add([]byte{0})
	f.Fuzz(func(t *testing.T, b []byte) {
		// Whatever reads re-encodes to the same bytes.
		if out, g, err := parseRedeemed(b); err == nil {
			if again := appendRedeemed(nil, out, g); !bytes.Equal(again, b) {
				t.Fatalf("redeemed % x re-encodes as % x", b, again)
			}
		}
		var vs []verdict
		if flags, err := parseVerdicts(b, func(v verdict) { vs = append(vs, v) }); err == nil {
			again := appendVerdicts(nil, flags)
			for i := range vs {
				again = appendVerdict(again, &vs[i])
			}
			if !bytes.Equal(again, b) {
				t.Fatalf("verdicts % x re-encode as % x", b, again)
			}
		}
	})
}
