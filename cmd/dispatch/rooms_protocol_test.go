package main

// The room balancer (OpenTogetherTube) as a browser and a Monolith see it,
// through the real binary: the client's auth handshake and each refusal,
// messages each way, kicks.

import (
	"net/http"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// roomsRig is a balancer with one emulated Monolith connected.
type roomsRig struct {
	p    *testkit.Process
	addr string // the balancer's listener
	m    *testkit.Monolith
	link *testkit.MonolithLink
	init map[string]any // the balancer's init
}

// startRoomsRig starts a Monolith and a balancer that dials it, and waits
// for the handshake both ways.
func startRoomsRig(t *testing.T, mopts testkit.MonolithOptions, env ...string) *roomsRig {
	t.Helper()
	m := testkit.StartMonolith(t, mopts)
	p, addr := testkit.StartRooms(t, append([]string{"DISPATCH_ROOMS_MONOLITHS=" + m.Addr()}, env...)...)
	link, init := m.Handshake(t)
	testkit.WaitMonolithUp(t, p, m.ID(), 1)
	return &roomsRig{p: p, addr: addr, m: m, link: link, init: init}
}

// A client authenticates with its first message; the Monolith hears join
// with the client's token, then every message verbatim inside client_msg,
// then leave; the balancer's own init names it.
func TestRoomsJoinClientMsgLeave(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{})
	if id, _ := r.init["id"].(string); len(id) != 36 {
		t.Fatalf("balancer init %v: want a UUID id", r.init)
	}
	if _, ok := r.init["token"]; ok {
		t.Fatalf("balancer init %v carries a token with none configured", r.init)
	}

	c := testkit.DialRoom(t, r.addr, "Movie-Night")
	c.Auth(t, "tok-1")
	j := r.link.ExpectJoin(t)
	if j.Room != "Movie-Night" || j.Token != "tok-1" || len(j.Client) != 36 {
		t.Fatalf("join %+v", j)
	}

	// Verbatim: spacing, key order and escapes as the client wrote them.
	for _, msg := range []string{`{ "action" : "chat", "text": "h\u00e9llo \"you\"" }`, `{}`, `{"b":1,"a":[true,null,1.5e3]}`} {
		c.SendText(t, msg)
		e := r.link.Expect(t, "client_msg")
		want := `{"type":"client_msg","payload":{"client_id":"` + j.Client + `","payload":` + msg + `}}`
		if string(e.Raw) != want {
			t.Fatalf("client_msg\n got %s\nwant %s", e.Raw, want)
		}
	}
	// A binary frame holding a JSON object is forwarded too, as the original does.
	c.SendFrame(t, ws.OpBinary, []byte(`{"bin":1}`))
	if e := r.link.Expect(t, "client_msg"); !strings.HasSuffix(string(e.Raw), `"payload":{"bin":1}}}`) {
		t.Fatalf("binary client message: %s", e.Raw)
	}

	// Pings are answered by the balancer, never forwarded.
	c.Ping(t, "are you there")

	c.CloseNormally()
	e := r.link.Expect(t, "leave")
	if want := `{"type":"leave","payload":{"client":"` + j.Client + `"}}`; string(e.Raw) != want {
		t.Fatalf("leave %s, want %s", e.Raw, want)
	}
}

// The Monolith answers one client (unicast) or the whole room (broadcast,
// client_id null or absent); payloads arrive as sent; clients of other
// rooms hear nothing.
func TestRoomsUnicastAndBroadcast(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{})
	a, ja := testkit.JoinRoom(t, r.addr, "lobby", "a", r.link)
	b, jb := testkit.JoinRoom(t, r.addr, "LOBBY", "b", r.link) // the same room: names compare case-insensitively
	other, _ := testkit.JoinRoom(t, r.addr, "elsewhere", "o", r.link)
	if jb.Room != "LOBBY" {
		t.Fatalf("join %+v: the client's spelling is kept", jb)
	}

	r.link.RoomMsg(t, "lobby", ja.Client, `{"to":"a",  "n":1}`)
	a.Expect(t, `{"to":"a",  "n":1}`)
	r.link.RoomMsg(t, "lobby", jb.Client, `{"to":"b"}`)
	b.Expect(t, `{"to":"b"}`)

	r.link.RoomMsg(t, "Lobby", "", `{"all":true}`)
	a.Expect(t, `{"all":true}`)
	b.Expect(t, `{"all":true}`)
	r.link.SendRaw(t, `{"type":"room_msg","payload":{"room":"lobby","payload":[1,2,3]}}`) // client_id absent
	a.Expect(t, `[1,2,3]`)
	b.Expect(t, `[1,2,3]`)

	// The other room's client heard none of it: its first message is its own.
	r.link.RoomMsg(t, "elsewhere", "", `"just you"`)
	other.Expect(t, `"just you"`)

	// A unicast to a client that is not there is dropped, and counted.
	r.link.RoomMsg(t, "lobby", "no-such-client", `{}`)
	r.link.RoomMsg(t, "lobby", ja.Client, `"still here"`)
	a.Expect(t, `"still here"`)
}

// Auth: nothing within the deadline closes 4004, as does any action but
// auth; text that is not JSON closes 1002; a binary first frame gets a
// close frame too (the original drops the socket); the refusals are
// counted and the Monolith hears of none of them.
func TestRoomsAuthRefusals(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{},
		"DISPATCH_ROOMS_AUTH_TIMEOUT=300ms", "DISPATCH_METRICS_ADDR=127.0.0.1:0")

	silent := testkit.DialRoom(t, r.addr, "r1")
	silent.ExpectClose(t, 4004)

	for _, c := range []struct {
		name string
		op   ws.OpCode
		msg  string
		code int
	}{
		{"other action", ws.OpText, `{"action":"req","token":"x"}`, 4004},
		{"not JSON", ws.OpText, `hello`, 1002},
		{"no token", ws.OpText, `{"action":"auth"}`, 1002},
		{"binary", ws.OpBinary, `{"action":"auth","token":"x"}`, 1003},
	} {
		cl := testkit.DialRoom(t, r.addr, "r1")
		cl.SendFrame(t, c.op, []byte(c.msg))
		cl.ExpectClose(t, c.code)
	}

	// A joined client that sends something other than a JSON object is
	// closed with 1007; the Monolith hears it leave.
	c, j := testkit.JoinRoom(t, r.addr, "r1", "t", r.link)
	c.SendText(t, `[1,2]`)
	c.ExpectClose(t, 1007)
	if e := r.link.Expect(t, "leave"); !strings.Contains(string(e.Raw), j.Client) {
		t.Fatalf("after a refused message: %s", e.Raw)
	}

	metrics := r.p.MetricsAddr(t)
	testkit.ExpectMetric(t, metrics, 1, "dispatch_rooms_auth_refused_total", "reason", "timeout")
	testkit.ExpectMetric(t, metrics, 1, "dispatch_rooms_auth_refused_total", "reason", "not_auth")
	testkit.ExpectMetric(t, metrics, 1, "dispatch_rooms_auth_refused_total", "reason", "not_json")
	testkit.ExpectMetric(t, metrics, 1, "dispatch_rooms_auth_refused_total", "reason", "binary")
	testkit.ExpectMetric(t, metrics, 1, "dispatch_rooms_client_messages_total", "outcome", "refused")
	if !strings.Contains(r.p.Logs(), "did not authenticate in time") {
		t.Error("no log line for the auth timeout")
	}
}

// With no Monolith connected the upgrade is refused with 503, so that
// clients back off; a bad room name is a 400.
func TestRoomsRefusedUpgrades(t *testing.T) {
	t.Parallel()
	_, addr := testkit.StartRooms(t)
	_, err := testkit.TryDialRoom(addr, "lobby")
	var refused *testkit.RoomDialError
	if !asRoomDialError(err, &refused) || refused.Status != http.StatusServiceUnavailable ||
		!strings.Contains(refused.Body, "No monoliths available") {
		t.Fatalf("upgrade with no Monolith: %v", err)
	}

	r := startRoomsRig(t, testkit.MonolithOptions{})
	for _, name := range []string{"a%2Fb", strings.Repeat("x", 129), "a%00b"} {
		_, err := testkit.TryDialRoom(r.addr, name)
		if !asRoomDialError(err, &refused) || refused.Status != http.StatusBadRequest {
			t.Errorf("room %q: %v, want 400", name, err)
		}
	}
}

func asRoomDialError(err error, target **testkit.RoomDialError) bool {
	e, ok := err.(*testkit.RoomDialError)
	if ok {
		*target = e
	}
	return ok
}

// kick closes the client with the code the Monolith gives (OTT's 4000s
// are final for the web client; 1000 makes it reconnect); an invalid code
// becomes 4000; the Monolith hears the kicked client leave.
func TestRoomsKickCodes(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{})
	for _, c := range []struct{ code, want int }{{4005, 4005}, {4002, 4002}, {1000, 1000}, {3000, 3000}, {1005, 4000}, {999, 4000}} {
		cl, j := testkit.JoinRoom(t, r.addr, "kick-room", "t", r.link)
		r.link.Kick(t, j.Client, c.code)
		if reason := cl.ExpectClose(t, c.want); reason != "kicked" {
			t.Errorf("kick %d: reason %q", c.code, reason)
		}
		if e := r.link.Expect(t, "leave"); !strings.Contains(string(e.Raw), j.Client) {
			t.Fatalf("after kick %d: %s", c.code, e.Raw)
		}
	}
}

// Hostile or broken Monolith messages are ignored and counted; the link
// and its clients go on.
func TestRoomsBadMonolithMessagesAreIgnored(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{}, "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	c, j := testkit.JoinRoom(t, r.addr, "room", "t", r.link)
	bad := []string{
		`not json`, `{"payload":{}}`, `{"type":"room_msg","payload":{"room":"room"}}`,
		`{"type":"loaded","payload":{"room":{"name":"x"},"load_epoch":-1}}`,
		`{"type":"kick","payload":{"client_id":5}}`, `{"type":"gossip","payload":{"rooms":7}}`,
		`{"type":"init","payload":{"port":1,"id":"again"}}`,
	}
	for _, msg := range bad {
		r.link.SendRaw(t, msg)
	}
	r.link.SendRaw(t, `{"type":"something_new","payload":{}}`) // an unknown type: ignored too
	r.link.RoomMsg(t, "room", j.Client, `{"ok":1}`)
	c.Expect(t, `{"ok":1}`)
	testkit.ExpectMetric(t, r.p.MetricsAddr(t), float64(len(bad)), "dispatch_rooms_monolith_messages_refused_total")
}
