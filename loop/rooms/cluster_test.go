package rooms

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestPlaceQuestion(t *testing.T) {
	for _, reserve := range []bool{true, false} {
		got, name, err := parsePlaceQuestion(appendPlaceQuestion(nil, reserve, "Movie-Night"))
		if err != nil || got != reserve || name != "Movie-Night" {
			t.Fatalf("reserve %v: %v %q %v", reserve, got, name, err)
		}
	}
	for _, bad := range [][]byte{nil, {0}, {2, 'a'}, append([]byte{0}, "a/b"...), append([]byte{1}, strings.Repeat("x", maxNameBytes+1)...)} {
		if _, _, err := parsePlaceQuestion(bad); err == nil {
			t.Errorf("% x read as a question", bad)
		}
	}
}

// The cluster's state: this replica's id; each Monolith once, each room
// once with every replica's clients; a part that does not parse is left out.
func TestMergeState(t *testing.T) {
	a := `{"id":"b1","region":"r","monoliths":[{"id":"m1","region":"x","rooms":[{"name":"movie","clients":[{"id":"c1","edge_region":""}]}]}]}`
	b := `{"id":"b2","region":"r","monoliths":[{"id":"m1","region":"x","rooms":[{"name":"movie","clients":[{"id":"c2","edge_region":"ams"}]},{"name":"other","clients":[]}]},{"id":"m2","region":"y","rooms":[]}]}`
	var got stateDoc
	if err := json.Unmarshal(mergeState([][]byte{[]byte(a), []byte(b), []byte("not json")}), &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != "b1" || len(got.Monoliths) != 2 || got.Monoliths[0].ID != "m1" || got.Monoliths[1].ID != "m2" {
		t.Fatalf("merged %+v", got)
	}
	rooms := got.Monoliths[0].Rooms
	if len(rooms) != 2 || rooms[0].Name != "movie" || len(rooms[0].Clients) != 2 || rooms[1].Name != "other" {
		t.Fatalf("rooms %+v", rooms)
	}
	if empty := string(mergeState(nil)); empty != `{"id":"","region":"","monoliths":[]}` {
		t.Fatalf("no parts: %s", empty)
	}
	if got := string(mergeBalancing([][]byte{[]byte("a\n"), []byte("b\n")})); got != "a\n\nb\n" {
		t.Fatalf("balancing %q", got)
	}
}

func FuzzRoomsCluster(f *testing.F) {
	f.Add(appendPlaceQuestion(nil, true, "room"), []byte(`{"id":"b","region":"r","monoliths":[{"id":"m","region":"x","rooms":[{"name":"a","clients":[{}]}]}]}`))
	f.Add([]byte{0}, []byte(`{"monoliths":null}`))
	f.Fuzz(func(t *testing.T, question, state []byte) {
		if reserve, name, err := parsePlaceQuestion(question); err == nil {
			if again := appendPlaceQuestion(nil, reserve, name); string(again) != string(question) {
				t.Fatalf("% x re-encodes as % x", question, again)
			}
		}
		if out := mergeState([][]byte{state, state}); !json.Valid(out) {
			t.Fatalf("merged state is not JSON: %s", out)
		}
	})
}
