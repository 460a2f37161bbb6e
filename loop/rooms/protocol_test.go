package rooms

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/loop"
)

var jsonCases = []string{
	`{}`, `[]`, `""`, `0`, `-0`, `1.5e10`, `-1E-2`, `true`, `false`, `null`,
	` {"a" : [1, 2, {"b": null}], "c": "d\"\\\/\b\f\n\r\t\u00e9"} `,
	`{"a":1,}`, `{"a"}`, `{"a":}`, `[1,]`, `[,1]`, `01`, `1.`, `.5`, `1e`, `-`, `+1`,
	`"\x"`, `"\u12"`, "\"a\x01\"", `{"a":1}x`, `{"a":1} {}`, `tru`, `nul`, `{`, `[`, `"`,
	`{"a":"b"`, `[1 2]`, `{"a" 1}`, `{1:2}`, ``, ` `, `"\ud800"`,
}

// The scanner agrees with encoding/json on what is JSON.
func TestValidJSONAgreesWithEncodingJSON(t *testing.T) {
	for _, c := range jsonCases {
		if got, want := validJSON([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("validJSON(%q) = %v, encoding/json says %v", c, got, want)
		}
	}
	deep := strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1)
	if validJSON([]byte(deep)) {
		t.Error("nesting past maxDepth accepted")
	}
	ok := strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth)
	if !validJSON([]byte(ok)) {
		t.Error("nesting at maxDepth refused")
	}
}

func FuzzValidJSON(f *testing.F) {
	for _, c := range jsonCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !utf8.Valid(b) || depthOf(b) > maxDepth {
			return // the transport checks UTF-8; past maxDepth refusing is the point
		}
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, encoding/json says %v", b, got, want)
		}
		if validObject(b) {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("validObject(%q) but Unmarshal: %v", b, err)
			}
			n := 0
			if err := eachMember(b, func(key, value []byte) error {
				n++
				if !json.Valid(value) {
					t.Fatalf("member value %q of %q is not JSON", value, b)
				}
				return nil
			}); err != nil {
				t.Fatalf("eachMember(%q): %v", b, err)
			}
			if n < len(m) {
				t.Fatalf("eachMember saw %d members of %q, decoder %d distinct", n, b, len(m))
			}
		}
	})
}

// depthOf is an upper bound of a document's nesting.
func depthOf(b []byte) int {
	d, most := 0, 0
	for _, c := range b {
		switch c {
		case '[', '{':
			d++
			most = max(most, d)
		case ']', '}':
			d--
		}
	}
	return most
}

func TestEachMemberKeysAndValues(t *testing.T) {
	var keys, values []string
	err := eachMember([]byte(` { "type" : "room_msg", "pay\u006coad":{"x":[1,"}"]} ,"n":null}`), func(k, v []byte) error {
		keys, values = append(keys, string(k)), append(values, string(v))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(values, "|") != `"room_msg"|{"x":[1,"}"]}|null` {
		t.Fatalf("values %q", values)
	}
	if !keyIs([]byte(keys[1]), "payload") || keyIs([]byte(keys[0]), "payload") {
		t.Fatalf("keys %q", keys)
	}
	if err := eachMember([]byte(`[1]`), nil); err != errNotObj {
		t.Fatalf("array: %v", err)
	}
	if err := eachMember([]byte(`{"a":}`), nil); err != errSyntax {
		t.Fatalf("broken: %v", err)
	}
}

func TestParseAuth(t *testing.T) {
	for _, c := range []struct {
		in    string
		token string
		want  *authProblem
	}{
		{`{"action":"auth","token":"abc"}`, `"abc"`, nil},
		{` {"token":"a\"b","action":"auth","extra":1} `, `"a\"b"`, nil},
		{`{"action":"auth","token":""}`, `""`, nil},
		{`{"action":"req","token":"abc"}`, "", authNotAuth},
		{`{"action":7}`, "", authNotAuth},
		{`{"token":"abc"}`, "", authNotJSON},
		{`{"action":"auth"}`, "", authBadToken},
		{`{"action":"auth","token":5}`, "", authBadToken},
		{`not json`, "", authNotJSON},
		{`["auth"]`, "", authNotJSON},
		{`{"action":"auth","token":"` + strings.Repeat("x", maxTokenBytes+1) + `"}`, "", authLongToken},
		{`{"action":"auth","token":"` + strings.Repeat("x", maxAuthBytes) + `"}`, "", authTooLarge},
	} {
		token, problem := parseAuth([]byte(c.in))
		if problem != c.want || string(token) != c.token {
			t.Errorf("parseAuth(%.60q) = %q, %v; want %q, %v", c.in, token, problem, c.token, c.want)
		}
	}
}

func TestParseMonolithMessages(t *testing.T) {
	env, err := parseEnvelope([]byte(`{"type":"init","payload":{"port":3000,"region":"syd","id":"m-1","token":"t"}}`))
	if err != nil || string(env.typ) != "init" {
		t.Fatalf("envelope: %+v %v", env, err)
	}
	in, err := parseInit(env.payload)
	if err != nil || in.port != 3000 || in.region != "syd" || in.id != "m-1" || string(in.token) != `"t"` {
		t.Fatalf("init: %+v %v", in, err)
	}
	for _, bad := range []string{`{"port":0,"id":"x"}`, `{"port":70000,"id":"x"}`, `{"port":1,"id":""}`, `{"port":1}`,
		`{"port":"1","id":"x"}`, `{"port":1,"id":"x","region":5}`, `{"port":1,"id":"x","token":5}`} {
		if _, err := parseInit([]byte(bad)); err == nil {
			t.Errorf("init %s accepted", bad)
		}
	}

	ri, err := parseLoaded([]byte(`{"room":{"name":"Foo","visibility":"public","users":3,"title":"x"},"load_epoch":7}`))
	if err != nil || ri.name != "Foo" || ri.epoch != 7 || !ri.public || ri.users != 3 || !json.Valid(ri.meta) {
		t.Fatalf("loaded: %+v %v", ri, err)
	}
	for _, bad := range []string{`{"room":{"name":"a"}}`, `{"room":{"name":"a"},"load_epoch":-1}`,
		`{"room":{"name":"a"},"load_epoch":4294967296}`, `{"room":{"name":""},"load_epoch":1}`,
		`{"room":{"name":"a/b"},"load_epoch":1}`, `{"load_epoch":1}`, `{"room":[],"load_epoch":1}`} {
		if _, err := parseLoaded([]byte(bad)); err == nil {
			t.Errorf("loaded %s accepted", bad)
		}
	}
	big := `{"room":{"name":"a","x":"` + strings.Repeat("y", maxMetadataBytes) + `"},"load_epoch":1}`
	if ri, err := parseLoaded([]byte(big)); err != nil || ri.meta != nil || !ri.metaBig {
		t.Fatalf("big metadata: %+v %v", ri, err)
	}

	var names []string
	err = parseGossip([]byte(`{"rooms":[{"room":{"name":"a"},"load_epoch":1},{"room":{"name":"B"},"load_epoch":2}]}`),
		func(ri roomInfo) error { names = append(names, ri.name); return nil })
	if err != nil || strings.Join(names, ",") != "a,B" {
		t.Fatalf("gossip: %v %v", names, err)
	}
	if err := parseGossip([]byte(`{"rooms":{}}`), func(roomInfo) error { return nil }); err == nil {
		t.Error("gossip with an object for rooms accepted")
	}

	if name, err := parseUnloaded([]byte(`{"name":"Foo","reason":"Keepalive"}`)); err != nil || name != "Foo" {
		t.Fatalf("unloaded: %q %v", name, err)
	}

	for in, want := range map[string]roomMsg{
		`{"room":"r","client_id":"c","payload":{"a":1}}`: {room: []byte("r"), client: []byte("c"), payload: []byte(`{"a":1}`)},
		`{"room":"r","client_id":null,"payload":[1]}`:    {room: []byte("r"), payload: []byte(`[1]`)},
		`{"room":"r","payload":"x"}`:                     {room: []byte("r"), payload: []byte(`"x"`)},
	} {
		got, err := parseRoomMsg([]byte(in))
		if err != nil || !bytes.Equal(got.room, want.room) || !bytes.Equal(got.client, want.client) || !bytes.Equal(got.payload, want.payload) {
			t.Errorf("room_msg %s: %+v %v", in, got, err)
		}
	}
	for _, bad := range []string{`{"room":"r"}`, `{"payload":1}`, `{"room":"r","client_id":5,"payload":1}`} {
		if _, err := parseRoomMsg([]byte(bad)); err == nil {
			t.Errorf("room_msg %s accepted", bad)
		}
	}

	if id, code, err := parseKick([]byte(`{"client_id":"c","reason":4005}`)); err != nil || string(id) != "c" || code != 4005 {
		t.Fatalf("kick: %q %d %v", id, code, err)
	}
	for _, bad := range []string{`{"client_id":"c","reason":70000}`, `{"client_id":"c"}`, `{"reason":4000}`, `{"client_id":"c","reason":4000.5}`} {
		if _, _, err := parseKick([]byte(bad)); err == nil {
			t.Errorf("kick %s accepted", bad)
		}
	}
}

// Every parser survives anything, and what it returns as raw JSON is JSON.
func FuzzParseMonolithMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"room_msg","payload":{"room":"r","client_id":"c","payload":{"a":1}}}`,
		`{"type":"gossip","payload":{"rooms":[{"room":{"name":"a","visibility":"public"},"load_epoch":1}]}}`,
		`{"type":"loaded","payload":{"room":{"name":"a"},"load_epoch":1}}`,
		`{"type":"kick","payload":{"client_id":"c","reason":4005}}`,
		`{"type":"init","payload":{"port":3000,"region":"x","id":"y"}}`,
		`{"type":"unloaded","payload":{"name":"a","reason":"Admin"}}`,
		`{"action":"auth","token":"t"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !utf8.Valid(b) {
			return
		}
		if token, problem := parseAuth(b); problem == nil && !json.Valid(token) {
			t.Fatalf("auth token %q is not JSON", token)
		}
		env, err := parseEnvelope(b)
		if err != nil {
			return
		}
		p := env.payload
		if p == nil {
			return
		}
		if !json.Valid(p) {
			t.Fatalf("payload %q is not JSON", p)
		}
		_, _ = parseInit(p)
		if ri, err := parseLoaded(p); err == nil && ri.meta != nil && !json.Valid(ri.meta) {
			t.Fatalf("metadata %q is not JSON", ri.meta)
		}
		_ = parseGossip(p, func(ri roomInfo) error {
			if nameProblem(ri.name) != "" {
				t.Fatalf("gossip room name %q accepted", ri.name)
			}
			return nil
		})
		_, _ = parseUnloaded(p)
		if m, err := parseRoomMsg(p); err == nil && !json.Valid(m.payload) {
			t.Fatalf("room_msg payload %q is not JSON", m.payload)
		}
		_, _, _ = parseKick(p)
	})
}

func TestUintOf(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "7": 7, "65535": 65535, "65536": -1, "01": -1, "-1": -1, "1.0": -1, "1e3": -1, `"1"`: -1, "": -1} {
		got, err := uintOf([]byte(in), 65535)
		if want < 0 && err == nil || want >= 0 && (err != nil || int64(got) != want) {
			t.Errorf("uintOf(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

func TestRoomNames(t *testing.T) {
	if roomKey("MyRoom-É") != "myroom-É" || roomKey("lower") != "lower" {
		t.Fatal("roomKey folds ASCII only")
	}
	if string(appendRoomKey(nil, []byte("AbC"))) != "abc" {
		t.Fatal("appendRoomKey")
	}
	for _, bad := range []string{"", "a/b", "a\x00", strings.Repeat("x", maxNameBytes+1), "\xff"} {
		if nameProblem(bad) == "" {
			t.Errorf("name %q accepted", bad)
		}
	}
	if nameProblem("Movie-Night_2") != "" {
		t.Error("plain name refused")
	}
}

// What the balancer sends is JSON, shaped as the original's messages.
func TestBalancerMessages(t *testing.T) {
	label := loop.AppendJSONString(nil, "c-1")
	for _, msg := range [][]byte{
		appendInit(nil, "b-1", ""), appendInit(nil, "b-1", "sec\"ret"),
		appendJoin(nil, "Ro\"om", label, []byte(`"tok"`)), appendUnload(nil, "<Room>"),
	} {
		var env struct {
			Type    string                     `json:"type"`
			Payload map[string]json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(msg, &env); err != nil || env.Type == "" {
			t.Fatalf("%s: %v", msg, err)
		}
	}
	var join struct {
		Payload struct{ Room, Client, Token string }
	}
	_ = json.Unmarshal(appendJoin(nil, "Ro\"om", label, []byte(`"tok"`)), &join)
	if join.Payload.Room != `Ro"om` || join.Payload.Client != "c-1" || join.Payload.Token != "tok" {
		t.Fatalf("join %+v", join)
	}
}

// The link format wraps a client's message, verbatim, in client_msg, and
// its departure in leave; frames are masked.
func TestLinkFormat(t *testing.T) {
	m := &loop.Member{Label: loop.AppendJSONString(nil, "c-1")}
	for _, c := range []struct {
		ev   loop.Event
		want string
	}{
		{loop.Event{Type: loop.MemberData, Member: m, Data: []byte(`{"a": [1, 2]}`)}, `{"type":"client_msg","payload":{"client_id":"c-1","payload":{"a": [1, 2]}}}`},
		{loop.Event{Type: loop.MemberClosed, Member: m}, `{"type":"leave","payload":{"client":"c-1"}}`},
		{loop.Event{Type: loop.MemberData, Data: []byte(`{"type":"unload","payload":{"room":"r"}}`)}, `{"type":"unload","payload":{"room":"r"}}`},
	} {
		head, tail, ok := frameLink(nil, &c.ev)
		if !ok {
			t.Fatalf("%s: not framed", c.want)
		}
		frame := append(append(head, c.ev.Data...), tail...)
		// The core seals the encoding in place: codec.MaskFrame.
		f, err := ws.ReadFrame(bytes.NewReader(maskedCopy(frame)))
		if err != nil {
			t.Fatal(err)
		}
		ws.Cipher(f.Payload, f.Header.Mask, 0)
		if !f.Header.Masked || f.Header.OpCode != ws.OpText || string(f.Payload) != c.want {
			t.Fatalf("got %q (masked %v), want %q", f.Payload, f.Header.Masked, c.want)
		}
	}
	if _, _, ok := frameLink(nil, &loop.Event{Type: loop.MemberOpened, Member: m}); ok {
		t.Fatal("an arrival is framed: join is the kind's to send")
	}
}

func maskedCopy(frame []byte) []byte {
	b := append([]byte(nil), frame...)
	codec.MaskFrame(b)
	return b
}

// The ring is stable: the same Monoliths place a room on the same one,
// whatever their order; each gets a share.
func TestHashRing(t *testing.T) {
	a, b, c := &monolith{id: "a"}, &monolith{id: "b"}, &monolith{id: "c"}
	count := map[*monolith]int{}
	for i := range 3000 {
		key := "room-" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		m1 := hashRingPick([]*monolith{a, b, c}, key, 50)
		if m2 := hashRingPick([]*monolith{c, a, b}, key, 50); m1 != m2 {
			t.Fatalf("%s: %s then %s", key, m1.id, m2.id)
		}
		count[m1]++
	}
	for _, m := range []*monolith{a, b, c} {
		if count[m] < 500 {
			t.Errorf("monolith %s got %d of 3000 rooms", m.id, count[m])
		}
	}
}

func TestUUID(t *testing.T) {
	id := newUUID()
	if len(id) != 36 || id[14] != '4' || strings.Count(id, "-") != 4 || id == newUUID() {
		t.Fatalf("uuid %q", id)
	}
}
