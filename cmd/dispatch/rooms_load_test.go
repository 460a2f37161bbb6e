package main

// Rooms under load: a thousand clients in one room with one that stops
// reading (cut alone, counted, logged once; nobody else notices), and a
// Monolith link that stops reading (its clients are held back, nobody is
// cut, nothing is lost).

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestRooms1000ClientsOneStalled(t *testing.T) {
	t.Parallel()
	const clients, before, after = 1000, 50, 10
	r := startRoomsRig(t, testkit.MonolithOptions{},
		"DISPATCH_ROOMS_MAX_CLIENT_PENDING=65536", "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	metrics := r.p.MetricsAddr(t)

	stalled := testkit.DialRoomUnread(t, r.addr, "crowd", testkit.ReceiveBuffer(4096))
	stalled.Auth(t, "stalled")
	stalledID := r.link.ExpectJoin(t).Client
	readers := testkit.DialRooms(t, r.addr, "crowd", "t", clients)
	for range readers {
		r.link.ExpectJoin(t)
	}

	// The room hears broadcasts, each encoded once for everyone; then the
	// Monolith floods the stalled client until the balancer cuts it.
	body := strings.Repeat("x", 200)
	for i := range before {
		r.link.RoomMsg(t, "crowd", "", fmt.Sprintf(`{"n":%d,"body":%q}`, i, body))
	}
	flood := `"` + strings.Repeat("y", 60000) + `"`
	cut := false
	for i := 0; !cut && i < 1000; i++ {
		r.link.RoomMsg(t, "crowd", stalledID, flood)
		if i%8 == 7 {
			all, err := testkit.Scrape(metrics)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := testkit.MetricValue(all, "dispatch_ends_total", "kind", "rooms", "role", "client", "reason", "slow")
			cut = v == 1
		}
	}
	testkit.ExpectMetric(t, metrics, 1, "dispatch_ends_total", "kind", "rooms", "role", "client", "reason", "slow")
	// The stalled client learns why when it reads: close 1008 behind what
	// was already on its way (the server gives it a few seconds for that).
	stalled.StartReading()
	for i := range after {
		r.link.RoomMsg(t, "crowd", "", fmt.Sprintf(`{"n":%d,"body":%q}`, before+i, body))
	}

	var wg sync.WaitGroup
	errs := make(chan string, clients)
	for _, c := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range before + after {
				got, err := c.TryNext()
				if want := fmt.Sprintf(`{"n":%d,"body":%q}`, i, body); err != nil || got != want {
					errs <- fmt.Sprintf("message %d: %.40q %v", i, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	stalled.ExpectClose(t, 1008)
	// The Monolith heard it leave.
	for {
		e := r.link.Next(t)
		if e.Type == "leave" && strings.Contains(string(e.Raw), stalledID) {
			break
		}
	}
	testkit.ExpectMetric(t, metrics, 1, "dispatch_ends_total", "kind", "rooms", "role", "client", "reason", "slow")
	if n := testkit.CountLines(r.p.Logs(), "room client not reading"); n != 1 {
		t.Fatalf("%d log lines for one slow client, want 1", n)
	}
}

// A Monolith link that does not keep up is not cut for it: the clients
// that feed it stop being read (their own TCP windows close) until it
// drains; then everything arrives, in order, and nobody was cut.
func TestRoomsSlowMonolithHoldsBackItsClients(t *testing.T) {
	t.Parallel()
	const clients, perClient = 8, 1500
	r := startRoomsRig(t, testkit.MonolithOptions{ReceiveBuffer: 8192},
		"DISPATCH_HIGH_WATER=65536", "DISPATCH_LOW_WATER=16384", "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	metrics := r.p.MetricsAddr(t)
	ids := map[string]int{}
	cs := make([]*testkit.RoomClient, clients)
	for i := range cs {
		var j testkit.RoomJoin
		cs[i], j = testkit.JoinRoom(t, r.addr, "busy", "t", r.link)
		ids[j.Client] = i
	}
	r.link.Hold()

	pad := strings.Repeat("z", 1000)
	var wg sync.WaitGroup
	sendErrs := make(chan error, clients)
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range perClient {
				if err := c.TrySendText(fmt.Sprintf(`{"c":%d,"seq":%d,"pad":%q}`, i, n, pad)); err != nil {
					sendErrs <- err
					return
				}
			}
		}()
	}
	testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_pauses_total", "kind", "rooms", "role", "client")
	testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_blocked", "kind", "rooms", "role", "monolith")
	r.link.Release()

	next := make([]int, clients)
	for got := 0; got < clients*perClient; got++ {
		e := r.link.Expect(t, "client_msg")
		s := string(e.Raw)
		id := s[strings.Index(s, `"client_id":"`)+13:]
		id = id[:strings.IndexByte(id, '"')]
		i, ok := ids[id]
		if !ok {
			t.Fatalf("client_msg from an unknown client: %.80s", s)
		}
		want := `"payload":{"c":` + strconv.Itoa(i) + `,"seq":` + strconv.Itoa(next[i]) + ","
		if !strings.Contains(s, want) {
			t.Fatalf("client %d: got %.120s, want seq %d", i, s, next[i])
		}
		next[i]++
	}
	wg.Wait()
	close(sendErrs)
	for err := range sendErrs {
		t.Fatal(err)
	}
	all, err := testkit.Scrape(metrics)
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"client", "monolith"} {
		for _, reason := range []string{"slow", "stalled"} {
			if v, _ := testkit.MetricValue(all, "dispatch_ends_total", "kind", "rooms", "role", role, "reason", reason); v != 0 {
				t.Errorf("%s ended %s: %v", role, reason, v)
			}
		}
	}
}
