package main

// Monolith links: the handshake both ways and its token, retries after a
// failed handshake (which the original never retries), the loss of a
// Monolith and reconnection, messages handled in order, DNS discovery.

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// closeCode is the close code a link's read ended with, or 0.
func closeCode(err error) int {
	var closed wsutil.ClosedError
	if errors.As(err, &closed) {
		return int(closed.Code)
	}
	return 0
}

// A Monolith's link that drops: its rooms are unmapped and their clients
// closed with 1000 (they reconnect and land elsewhere); the balancer dials
// it again after the reconnect delay and serves its rooms again.
func TestRoomsMonolithLinkLostAndRedialled(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{}, "DISPATCH_ROOMS_RECONNECT_DELAY=100ms", "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	a, _ := testkit.JoinRoom(t, r.addr, "one", "t", r.link)
	b, _ := testkit.JoinRoom(t, r.addr, "two", "t", r.link)
	r.link.Close()
	a.ExpectClose(t, 1000)
	b.ExpectClose(t, 1000)

	link, _ := r.m.Handshake(t)
	testkit.WaitMonolithUp(t, r.p, r.m.ID(), 2)
	c, j := testkit.JoinRoom(t, r.addr, "one", "again", link)
	link.RoomMsg(t, "one", j.Client, `"back"`)
	c.Expect(t, `"back"`)
	metrics := r.p.MetricsAddr(t)
	testkit.ExpectMetric(t, metrics, 2, "dispatch_rooms_unmapped_total", "reason", "monolith_lost")
	testkit.ExpectMetric(t, metrics, 2, "dispatch_rooms_monolith_attempts_total", "outcome", "connected")
}

// A Monolith that dies: connections are refused and retried, counted and
// logged once; when it comes back at the same address it is linked again.
func TestRoomsMonolithDiesAndComesBack(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{}, "DISPATCH_ROOMS_RECONNECT_DELAY=50ms",
		"DISPATCH_ROOMS_CONNECT_RETRY=100ms", "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	c, _ := testkit.JoinRoom(t, r.addr, "room", "t", r.link)
	addr := r.m.Addr()
	r.m.Close()
	c.ExpectClose(t, 1000)
	metrics := r.p.MetricsAddr(t)
	testkit.ExpectMetricAtLeast(t, metrics, 3, "dispatch_rooms_monolith_attempts_total", "outcome", "connect_failed")
	if _, err := testkit.TryDialRoom(r.addr, "room"); err == nil {
		t.Fatal("a client was upgraded with no Monolith")
	}

	back := testkit.StartMonolith(t, testkit.MonolithOptions{Addr: addr})
	link, _ := back.Handshake(t)
	testkit.WaitMonolithUp(t, r.p, back.ID(), 1)
	testkit.JoinRoom(t, r.addr, "room", "t", link)
	if n := testkit.CountLines(r.p.Logs(), "cannot connect to Monolith"); n != 1 {
		t.Errorf("%d log lines for one episode of failed connections, want 1", n)
	}
	if n := testkit.CountLines(r.p.Logs(), "Monolith reachable again"); n != 1 {
		t.Errorf("%d recovery lines, want 1", n)
	}
}

// A handshake that fails is retried, unlike the original, which gives up
// on that Monolith for good: no init in time closes 4000, a first message
// that is not init closes 1002.
func TestRoomsFailedHandshakeIsRetried(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, init string
		code       int
	}{
		{"no init", "-", 4000},
		{"not init", `{"type":"loaded","payload":{"room":{"name":"x"},"load_epoch":1}}`, 1002},
		{"bad init", `{"type":"init","payload":{"id":"x"}}`, 1002},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			m := testkit.StartMonolith(t, testkit.MonolithOptions{Init: c.init})
			testkit.StartRooms(t, "DISPATCH_ROOMS_MONOLITHS="+m.Addr(), "DISPATCH_ROOMS_INIT_TIMEOUT=300ms", "DISPATCH_ROOMS_CONNECT_RETRY=100ms")
			// Two attempts that got as far as the balancer's init, each
			// closed for its handshake. (On a loaded machine an attempt can
			// also run out of time before the WebSocket handshake is done:
			// that one ends without init, and is retried just the same.)
			for attempt, seen := 1, 0; seen < 2; attempt++ {
				if attempt > 10 {
					t.Fatalf("%d attempts, %d of them with a handshake", attempt-1, seen)
				}
				link := m.NextLink(t)
				select {
				case e, ok := <-link.Messages():
					if !ok {
						continue // ended before the balancer's init
					}
					if e.Type != "init" {
						t.Fatalf("first message %s", e.Raw)
					}
				case <-time.After(testkit.EventTimeout):
					t.Fatal("no init")
				}
				seen++
				if got := closeCode(link.WaitEnded(t)); got != c.code {
					t.Fatalf("attempt %d: link closed with %d, want %d", attempt, got, c.code)
				}
			}
		})
	}
}

// The shared init token goes out in the balancer's init and must come
// back in the Monolith's; a Monolith without it is refused (1008) and
// retried; the token never reaches the logs.
func TestRoomsInitToken(t *testing.T) {
	t.Parallel()
	const token = "init-token-0123456789"
	wrong := testkit.StartMonolith(t, testkit.MonolithOptions{Token: "not-it"})
	right := testkit.StartMonolith(t, testkit.MonolithOptions{Token: token})
	p, addr := testkit.StartRooms(t, "DISPATCH_ROOMS_MONOLITHS="+wrong.Addr()+","+right.Addr(),
		"DISPATCH_ROOMS_INIT_TOKEN="+token, "DISPATCH_ROOMS_CONNECT_RETRY=100ms")

	for attempt := 1; attempt <= 2; attempt++ {
		link, init := wrong.Handshake(t)
		if init["token"] != token {
			t.Fatalf("balancer init %v: want the token", init)
		}
		if got := closeCode(link.WaitEnded(t)); got != 1008 {
			t.Fatalf("wrong token, attempt %d: closed with %d, want 1008", attempt, got)
		}
	}
	link, _ := right.Handshake(t)
	testkit.WaitMonolithUp(t, p, right.ID(), 1)
	testkit.JoinRoom(t, addr, "room", "t", link)
	if strings.Contains(p.Logs(), token) {
		t.Fatal("the init token is in the logs")
	}
}

// Messages from one Monolith are applied in the order it sent them (the
// original spawns a task per message): a burst of unicasts arrives in
// order, and a kick right behind them closes the client only after them.
func TestRoomsMonolithMessagesInOrder(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{})
	c, j := testkit.JoinRoom(t, r.addr, "order", "t", r.link)
	const n = 2000
	for i := range n {
		if i%2 == 0 {
			r.link.RoomMsg(t, "order", j.Client, strconv.Itoa(i))
		} else {
			r.link.RoomMsg(t, "order", "", strconv.Itoa(i))
		}
	}
	r.link.Kick(t, j.Client, 4005)
	for i := range n {
		c.Expect(t, strconv.Itoa(i))
	}
	c.ExpectClose(t, 4005)
}

// DNS discovery: the name's A records are Monoliths at the given port,
// resolved again every interval: one that appears is dialled, one that
// disappears is dropped (its rooms unmapped, its clients closed 1000).
func TestRoomsDNSDiscovery(t *testing.T) {
	t.Parallel()
	port, ms := sharedPortMonoliths(t, "127.0.0.1", "127.0.0.2")
	dns := testkit.StartDNS(t)
	dns.SetA("127.0.0.1")
	p, addr := testkit.StartRooms(t, "DISPATCH_ROOMS_DNS=monoliths.rooms.test:"+strconv.Itoa(port),
		"DISPATCH_ROOMS_DNS_SERVER="+dns.Addr(), "DISPATCH_ROOMS_DNS_INTERVAL=100ms")
	first, _ := ms[0].Handshake(t)
	testkit.WaitMonolithUp(t, p, ms[0].ID(), 1)
	c, _ := testkit.JoinRoom(t, addr, "on-first", "t", first)

	dns.SetA("127.0.0.1", "127.0.0.2")
	ms[1].Handshake(t)
	testkit.WaitMonolithUp(t, p, ms[1].ID(), 1)

	dns.SetA("127.0.0.2")
	c.ExpectClose(t, 1000)
	first.WaitEnded(t)
}

// sharedPortMonoliths starts a Monolith on each address, all on one port.
func sharedPortMonoliths(t *testing.T, hosts ...string) (int, []*testkit.Monolith) {
	t.Helper()
	for range 20 {
		port := testkit.FreeTCPPort(t)
		ok := true
		for _, h := range hosts {
			ln, err := net.Listen("tcp", net.JoinHostPort(h, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			ln.Close()
		}
		if !ok {
			continue
		}
		var ms []*testkit.Monolith
		for _, h := range hosts {
			ms = append(ms, testkit.StartMonolith(t, testkit.MonolithOptions{Host: h, Addr: net.JoinHostPort(h, strconv.Itoa(port))}))
		}
		return port, ms
	}
	t.Fatalf("no port free on %v", hosts)
	return 0, nil
}

// SIGTERM: clients and Monolith links are closed with 1001.
func TestRoomsShutdownClosesEveryone(t *testing.T) {
	t.Parallel()
	r := startRoomsRig(t, testkit.MonolithOptions{})
	c, _ := testkit.JoinRoom(t, r.addr, "room", "t", r.link)
	r.p.Stop()
	c.ExpectClose(t, 1001)
	if got := closeCode(r.link.WaitEnded(t)); got != 1001 {
		t.Fatalf("link closed with %d, want 1001", got)
	}
}
