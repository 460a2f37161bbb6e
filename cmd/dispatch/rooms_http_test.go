package main

// The balancer's HTTP side: its own endpoints (status, metrics, balancing
// and state behind the API key, the room list from gossip) and everything
// else proxied to a Monolith with its body and status intact.

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestRoomsStatusAndMetrics(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{}, "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	status, _, body := testkit.RoomsGet(t, r.addr, "/api/status")
	if status != http.StatusOK || body != "OK" {
		t.Fatalf("/api/status: %d %q", status, body)
	}
	// The same registry as --metrics: the loop's series and the Go runtime's.
	testkit.Eventually(t, testkit.EventTimeout, "rooms_monoliths in /api/status/metrics", func() bool {
		status, _, body = testkit.RoomsGet(t, r.addr, "/api/status/metrics")
		return status == http.StatusOK && strings.Contains(body, `dispatch_rooms_monoliths{state="connected"} 1`)
	})
	for _, want := range []string{"go_goroutines", `dispatch_connections{kind="rooms",role="monolith"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("/api/status/metrics lacks %s", want)
		}
	}
	testkit.ExpectMetric(t, r.p.MetricsAddr(t), 1, "dispatch_rooms_monoliths", "state", "connected")
}

// /api/balancing and /api/state want the Bearer API key; without a key
// configured they always answer 401, as the original's do.
func TestRoomsStateNeedsTheAPIKey(t *testing.T) {
	t.Parallel()
	const key = "api-key-for-tests"
	r := startRoomsRig(t, testkit.MonolithOptions{Region: "syd"}, "DISPATCH_ROOMS_API_KEY="+key, "DISPATCH_ROOMS_REGION=syd")
	for _, path := range []string{"/api/balancing", "/api/state"} {
		for _, header := range []string{"", "Authorization: Bearer wrong", "Authorization: " + key} {
			if status, _, body := testkit.RoomsGet(t, r.addr, path, header); status != http.StatusUnauthorized || !strings.Contains(body, "invalid API key") {
				t.Errorf("%s with %q: %d %s", path, header, status, body)
			}
		}
	}
	c := testkit.DialRoom(t, r.addr, "MyRoom")
	c.Auth(t, "t")
	j := r.link.ExpectJoin(t)

	status, _, body := testkit.RoomsGet(t, r.addr, "/api/state", "Authorization: Bearer "+key)
	if status != http.StatusOK {
		t.Fatalf("/api/state: %d %s", status, body)
	}
	var state struct {
		ID, Region string
		Monoliths  []struct {
			ID, Region string
			Rooms      []struct {
				Name    string
				Clients []struct {
					ID         string
					EdgeRegion string `json:"edge_region"`
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(body), &state); err != nil {
		t.Fatalf("/api/state %s: %v", body, err)
	}
	if state.Region != "syd" || len(state.Monoliths) != 1 || state.Monoliths[0].ID != r.m.ID() ||
		len(state.Monoliths[0].Rooms) != 1 || state.Monoliths[0].Rooms[0].Name != "MyRoom" ||
		len(state.Monoliths[0].Rooms[0].Clients) != 1 || state.Monoliths[0].Rooms[0].Clients[0].ID != j.Client {
		t.Fatalf("/api/state %s", body)
	}
	status, _, body = testkit.RoomsGet(t, r.addr, "/api/balancing", "Authorization: Bearer "+key)
	if status != http.StatusOK || !strings.Contains(body, "MyRoom -> "+r.m.ID()) {
		t.Fatalf("/api/balancing: %d\n%s", status, body)
	}

	_, addr := testkit.StartRooms(t)
	if status, _, _ := testkit.RoomsGet(t, addr, "/api/state", "Authorization: Bearer "); status != http.StatusUnauthorized {
		t.Fatalf("/api/state with no key configured: %d", status)
	}
}

// /api/room/list: the public rooms the Monoliths gossiped, their metadata
// as sent, most users first; no Monolith is asked.
func TestRoomsRoomListFromGossip(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{HTTP: http.NotFoundHandler()})
	r.link.Gossip(t,
		testkit.GossipRoom{Meta: testkit.RoomMeta("quiet", true, 1), Epoch: 1},
		testkit.GossipRoom{Meta: testkit.RoomMeta("secret", false, 50), Epoch: 2},
		testkit.GossipRoom{Meta: testkit.RoomMeta("busy", true, 9), Epoch: 3},
	)
	var list []map[string]any
	testkit.Eventually(t, testkit.EventTimeout, "two public rooms listed", func() bool {
		status, _, body := testkit.RoomsGet(t, r.addr, "/api/room/list")
		list = nil
		return status == http.StatusOK && json.Unmarshal([]byte(body), &list) == nil && len(list) == 2
	})
	if list[0]["name"] != "busy" || list[1]["name"] != "quiet" || list[0]["title"] != "Title of busy" {
		t.Fatalf("room list %v", list)
	}
}

// Everything else is proxied: /api/room/<name>/… to the room's Monolith
// (or the one it would be placed on), anything else to any Monolith; the
// status, headers and body come back as the Monolith sent them, and a
// request body reaches it whole.
func TestRoomsHTTPProxy(t *testing.T) {
	t.Parallel()
	r := startTwoMonoliths(t, [2]testkit.MonolithOptions{{}, {}})
	_, where, _ := r.join(t, "watch-party")
	other := 1 - where

	resp := roomsDo(t, r.addr, http.MethodGet, "/api/room/Watch-Party/info?x=1", nil, "X-Want-Status: 418")
	if resp.status != http.StatusTeapot || resp.header.Get("X-Monolith") != r.m[where].ID() ||
		resp.body != "GET /api/room/Watch-Party/info?x=1\n" {
		t.Fatalf("room route: %d %s %q", resp.status, resp.header.Get("X-Monolith"), resp.body)
	}
	// A room loaded nowhere goes where it would be placed: the emptier Monolith.
	resp = roomsDo(t, r.addr, http.MethodGet, "/api/room/unplaced", nil)
	if resp.header.Get("X-Monolith") != r.m[other].ID() {
		t.Fatalf("an unplaced room's request went to %s, want the emptier %s", resp.header.Get("X-Monolith"), r.m[other].ID())
	}

	body := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	resp = roomsDo(t, r.addr, http.MethodPost, "/api/room/watch-party/queue", body, "Content-Type: application/octet-stream")
	if resp.status != http.StatusOK || resp.body != "POST /api/room/watch-party/queue\n"+string(body) {
		t.Fatalf("POST: %d, %d bytes back", resp.status, len(resp.body))
	}
	resp = roomsDo(t, r.addr, http.MethodPut, "/api/user/prefs", []byte(`{"a":1}`), "X-Want-Status: 201")
	if resp.status != http.StatusCreated || resp.body != "PUT /api/user/prefs\n{\"a\":1}" {
		t.Fatalf("other route: %d %q", resp.status, resp.body)
	}
}

// A Monolith whose HTTP side is down: 502 with a JSON body, counted; no
// Monolith at all: 503.
func TestRoomsHTTPProxyFailures(t *testing.T) {
	t.Parallel()
	m := testkit.StartMonolith(t, testkit.MonolithOptions{})
	p, addr := testkit.StartRooms(t, "DISPATCH_ROOMS_MONOLITHS="+m.Addr(), "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	_, _ = m.Handshake(t)
	testkit.WaitMonolithUp(t, p, m.ID(), 1)
	m.StopHTTP()
	resp := roomsDo(t, addr, http.MethodGet, "/api/anything", nil)
	if resp.status != http.StatusBadGateway || !strings.Contains(resp.body, `"error"`) {
		t.Fatalf("dead Monolith HTTP: %d %q", resp.status, resp.body)
	}
	testkit.ExpectMetric(t, p.MetricsAddr(t), 1, "dispatch_rooms_proxy_errors_total", "route", "other")

	_, none := testkit.StartRooms(t)
	resp = roomsDo(t, none, http.MethodGet, "/api/room/x", nil)
	if resp.status != http.StatusServiceUnavailable || !strings.Contains(resp.body, "No monoliths available") {
		t.Fatalf("no Monolith: %d %q", resp.status, resp.body)
	}
}

type roomsResponse struct {
	status int
	header http.Header
	body   string
}

func roomsDo(t *testing.T, addr, method, path string, body []byte, headers ...string) roomsResponse {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := testkit.RoomsHTTP.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return roomsResponse{resp.StatusCode, resp.Header, string(b)}
}

// The API key and the init token never reach the configuration line; the
// rooms settings parse as documented.
func TestRoomsSettings(t *testing.T) {
	o, err := parseOptions([]string{"--rooms-addr", "7000", "--rooms-strategy", "HashRing", "--rooms-dns", "monoliths.internal:3002",
		"--rooms-dns-server", "10.0.0.53", "--rooms-monoliths", "a:1, b:2"},
		envOf(map[string]string{"SECRETS_PATH": t.TempDir(), "DISPATCH_ROOMS_API_KEY": "key-do-not-print",
			"DISPATCH_ROOMS_INIT_TOKEN": "token-do-not-print", "FLY_REGION": "syd"}))
	if err != nil {
		t.Fatal(err)
	}
	r := o.rooms
	if r.Addr != "127.0.0.1:7000" || r.Strategy.String() != "hash-ring" || r.DNSName != "monoliths.internal" || r.DNSPort != 3002 ||
		r.DNSServer != "10.0.0.53:53" || strings.Join(r.Monoliths, ",") != "a:1,b:2" || r.Region != "syd" ||
		r.APIKey != "key-do-not-print" || r.InitToken != "token-do-not-print" {
		t.Fatalf("rooms settings %+v", r)
	}
	var logs bytes.Buffer
	o.logConfig(slog.New(slog.NewTextHandler(&logs, nil)))
	if strings.Contains(logs.String(), "do-not-print") || !strings.Contains(logs.String(), `rooms-api-key=(set)`) {
		t.Fatalf("config line: %s", logs.String())
	}
	o, err = parseOptions([]string{"--rooms-region", "ams"}, envOf(map[string]string{"SECRETS_PATH": t.TempDir(), "FLY_REGION": "syd"}))
	if err != nil || o.rooms.Region != "ams" {
		t.Fatalf("--rooms-region beats FLY_REGION: %v %q", err, o.rooms.Region)
	}
	for _, bad := range [][]string{{"--rooms-strategy", "fastest"}, {"--rooms-monoliths", "nohost"}, {"--rooms-dns", "name"},
		{"--rooms-dns-server", "not-an-ip"}, {"--rooms-hash-weight", "0"}, {"--rooms-max-message-bytes", "10"}} {
		if _, err := parseOptions(bad, envOf(map[string]string{"SECRETS_PATH": t.TempDir()})); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}
