package groups_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/inproc"
	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
	"github.com/placeos-gnet/dispatch/loop/groups"
)

func TestGroupTCPMembersHearEachOtherButNotThemselves(t *testing.T) {
	s := groupServer(t, nil)
	a1, a2, a3 := joinMember(t, s, "alpha"), joinMember(t, s, "alpha"), joinMember(t, s, "alpha")
	b1, b2 := joinMember(t, s, "beta"), joinMember(t, s, "beta")
	waitMembers(t, s, "tcp", "alpha", 3)
	waitMembers(t, s, "tcp", "beta", 2)

	send(t, a1, "one")
	expectRead(t, a2, "one")
	expectRead(t, a3, "one")
	send(t, a2, "two")
	expectRead(t, a1, "two") // a1's first bytes: its own "one" was not echoed
	expectRead(t, a3, "two")

	send(t, b1, "bee")
	expectRead(t, b2, "bee") // nothing from alpha reached beta
	send(t, b2, "buzz")
	expectRead(t, b1, "buzz")
}

func TestGroupTCPBytesAfterTheJoinLineAreTheFirstPayload(t *testing.T) {
	s := groupServer(t, nil)
	first := joinMember(t, s, "g")
	waitMembers(t, s, "tcp", "g", 1)
	second := dialGroup(t, s, "127.0.0.1")
	send(t, second, testPrefix+"g\r\nfirst payload")
	expectRead(t, first, "first payload")
	send(t, first, "reply")
	expectRead(t, second, "reply")
}

func TestGroupTCPStreamArrivesWholeAndInOrder(t *testing.T) {
	s := groupServer(t, nil)
	sender := joinMember(t, s, "stream")
	receivers := []*net.TCPConn{joinMember(t, s, "stream"), joinMember(t, s, "stream")}
	waitMembers(t, s, "tcp", "stream", 3)

	stream := make([]byte, 2<<20)
	for i := range stream {
		stream[i] = byte(i * 7 / 3)
	}
	go func() {
		for rest := stream; len(rest) > 0; {
			n := min(len(rest), 1+len(rest)%70000) // uneven writes
			if _, err := sender.Write(rest[:n]); err != nil {
				return
			}
			rest = rest[n:]
		}
	}()
	for _, r := range receivers {
		expectRead(t, r, string(stream))
	}
}

func TestGroupTCPJoinWithoutNewlineCompletesAtTheDeadline(t *testing.T) {
	s := groupServer(t, func(c *groups.Config) { c.JoinTimeout = 200 * time.Millisecond })
	first := joinMember(t, s, "legacy")
	waitMembers(t, s, "tcp", "legacy", 1)
	// The original protocol: the join message is the first read, no newline.
	second := dialGroup(t, s, "127.0.0.1")
	send(t, second, testPrefix+"legacy")
	waitMembers(t, s, "tcp", "legacy", 2)

	send(t, first, "hi")
	expectRead(t, second, "hi")
	send(t, second, "later")
	expectRead(t, first, "later")
	eventually(t, eventTimeout, "both joins counted", func() bool { return s.Groups.Counters().Joins == 2 })
	if c := s.Groups.Counters(); c.JoinsRefused != 0 {
		t.Fatalf("%d joins refused", c.JoinsRefused)
	}
}

func TestGroupTCPBadJoinsAreClosedAndCounted(t *testing.T) {
	s := groupServer(t, func(c *groups.Config) {
		c.JoinTimeout = 200 * time.Millisecond
		c.IDMaxLen = 8
	})
	bad := map[string]string{
		"wrong prefix":          "HELLO:group\n",
		"not a join at all":     "GET / HTTP/1.1\r\n",
		"id too long":           testPrefix + "123456789\n",
		"empty id":              testPrefix + "\r\n",
		"too long, no newline":  testPrefix + strings.Repeat("x", 100),
		"invalid UTF-8 id":      testPrefix + "\xff\xfe\n",
		"prefix case differs":   strings.ToLower(testPrefix) + "g\n",
		"prefix after a space ": " " + testPrefix + "g\n",
	}
	for name, first := range bad {
		conn := dialGroup(t, s, "127.0.0.1")
		send(t, conn, first)
		t.Run(name, func(t *testing.T) { expectClosed(t, conn) })
	}
	silent := dialGroup(t, s, "127.0.0.1")
	expectClosed(t, silent)

	want := uint64(len(bad) + 1)
	eventually(t, eventTimeout, "refusals counted", func() bool {
		c := s.Groups.Counters()
		return c.JoinsRefused == want && c.JoinTimeouts == 1
	})
	if doc := groupsOf(t, s); len(doc.TCP) != 0 {
		t.Fatalf("refused joins left groups behind: %+v", doc.TCP)
	}
}

func TestGroupIDsAreExactStrings(t *testing.T) {
	s := groupServer(t, nil)
	room1, room2 := joinMember(t, s, "room"), joinMember(t, s, "room")
	upper := joinMember(t, s, "Room")
	spaced := joinMember(t, s, "room ")
	waitMembers(t, s, "tcp", "room", 2)
	waitMembers(t, s, "tcp", "Room", 1)
	waitMembers(t, s, "tcp", "room ", 1)
	send(t, room1, "only room")
	expectRead(t, room2, "only room")

	partner := joinMember(t, s, "Room")
	waitMembers(t, s, "tcp", "Room", 2)
	send(t, partner, "for Room")
	expectRead(t, upper, "for Room") // its first bytes: nothing from "room"
	other := joinMember(t, s, "room ")
	waitMembers(t, s, "tcp", "room ", 2)
	send(t, other, "for room-space")
	expectRead(t, spaced, "for room-space")
}

func TestGroupTCPPreconfiguredHostJoinsWithoutPrefix(t *testing.T) {
	s := groupServer(t, func(c *groups.Config) {
		c.TCPPreconfig = []groups.Host{{Group: "pre", Host: netip.MustParseAddr("127.0.0.2")}}
	})
	joined := joinMember(t, s, "pre")
	waitMembers(t, s, "tcp", "pre", 1)
	pre := dialGroup(t, s, "127.0.0.2")
	waitMembers(t, s, "tcp", "pre", 2)
	send(t, pre, testPrefix+"not a join: payload")
	expectRead(t, joined, testPrefix+"not a join: payload")
	send(t, joined, "back")
	expectRead(t, pre, "back")
}

func TestGroupUDPMembersHearEachOtherAndStrangersAreDropped(t *testing.T) {
	s := groupServer(t, nil)
	id := udpGroupID(s)
	p1, p2, p3 := udpMemberPeer(t), udpMemberPeer(t), udpMemberPeer(t)
	for _, p := range []*net.UDPConn{p1, p2, p3} {
		register(t, s, p)
	}
	waitMembers(t, s, "udp", id, 3)

	sendTo(t, p1, s, "d1")
	expectDatagramFrom(t, p2, s, "d1")
	expectDatagramFrom(t, p3, s, "d1")
	sendTo(t, p2, s, "d2")
	expectDatagramFrom(t, p1, s, "d2") // p1's first datagram: "d1" was not echoed
	expectDatagramFrom(t, p3, s, "d2")

	stranger := udpMemberPeer(t)
	sendTo(t, stranger, s, "nope")
	eventually(t, eventTimeout, "stranger's datagram counted", func() bool {
		return s.Groups.Counters().DatagramsUnregistered == 1
	})
	sendTo(t, p3, s, "d3")
	expectDatagramFrom(t, p1, s, "d3") // not "nope"
	expectDatagramFrom(t, p2, s, "d3")

	sendTo(t, stranger, s, testPrefix+"0")
	sendTo(t, stranger, s, testPrefix+"http")
	eventually(t, eventTimeout, "bad registrations refused", func() bool {
		return s.Groups.Counters().JoinsRefused == 2
	})
	waitMembers(t, s, "udp", id, 3)
}

func TestGroupUDPOpenForwardsStrangers(t *testing.T) {
	s := groupServer(t, func(c *groups.Config) { c.UDPOpen = true })
	member := udpMemberPeer(t)
	register(t, s, member)
	waitMembers(t, s, "udp", udpGroupID(s), 1)
	sendTo(t, udpMemberPeer(t), s, "open door")
	expectDatagramFrom(t, member, s, "open door")
}

func TestGroupUDPIdleMembersExpirePreconfiguredStay(t *testing.T) {
	pre := udpMemberPeer(t)
	s := groupServer(t, func(c *groups.Config) {
		c.UDPIdle = 200 * time.Millisecond
		c.UDPPreconfig = []netip.AddrPort{pre.LocalAddr().(*net.UDPAddr).AddrPort()}
	})
	id := udpGroupID(s)
	member := udpMemberPeer(t)
	register(t, s, member)
	waitMembers(t, s, "udp", id, 2)
	sendTo(t, member, s, "to the preconfigured peer")
	expectDatagramFrom(t, pre, s, "to the preconfigured peer")

	waitMembers(t, s, "udp", id, 1) // member fell silent; pre stays
	eventually(t, eventTimeout, "expiry counted", func() bool { return s.Groups.Counters().UDPMembersExpired == 1 })
	sendTo(t, member, s, "too late")
	eventually(t, eventTimeout, "expired member's datagram dropped", func() bool {
		return s.Groups.Counters().DatagramsUnregistered == 1
	})
	sendTo(t, pre, s, "still here")
	register(t, s, member)
	waitMembers(t, s, "udp", id, 2)
	sendTo(t, pre, s, "welcome back")
	expectDatagramFrom(t, member, s, "welcome back")
}

// A group of 200 members in which one stops reading: the group is held back
// (the sender is not read) until the stalled member has drained nothing for
// the stall timeout; it is then cut alone, and the other 198 receivers get
// every byte in order.
func TestGroupStalledMemberIsCutWhileTheOthersGetEverything(t *testing.T) {
	const (
		members   = 200
		chunkSize = 16 << 10
		window    = 4    // chunks a reader may lag before the sender waits for it
		maxChunks = 4096 // 64 MiB: far more than the stalled member can absorb
		afterCut  = 32   // chunks sent once the cut is seen
	)
	s := groupServerWith(t, func(c *loop.Config) { c.StallTimeout = time.Second }, func(c *groups.Config) {
		c.MaxMemberPending = 256 << 10
	})
	sender := joinMember(t, s, "big")
	// A small receive buffer, set before connecting, keeps the kernel from
	// absorbing much on the stalled member's behalf.
	stalled := dialGroupWith(t, s, net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}})
	send(t, stalled, testPrefix+"big\n")
	readers := make([]*net.TCPConn, members-2)
	for i := range readers {
		readers[i] = joinMember(t, s, "big")
	}
	waitMembers(t, s, "tcp", "big", members)

	chunk := func(i int) []byte {
		b := make([]byte, chunkSize)
		binary.BigEndian.PutUint64(b, uint64(i))
		for j := 8; j < len(b); j++ {
			b[j] = byte(i*31 + j*7)
		}
		return b
	}
	// remaining[i] counts the readers still missing chunk i; done[i] closes
	// when every reader has it (readers read in order, so all before it too).
	var remaining [maxChunks]atomic.Int32
	var done [maxChunks]chan struct{}
	for i := range done {
		remaining[i].Store(int32(len(readers)))
		done[i] = make(chan struct{})
	}
	var finished atomic.Bool
	var wg sync.WaitGroup
	for r, conn := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunkSize)
			for i := 0; ; i++ {
				_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				if _, err := io.ReadFull(conn, buf); err != nil {
					if !finished.Load() {
						t.Errorf("reader %d: chunk %d: %v", r, i, err)
					}
					return
				}
				if !bytes.Equal(buf, chunk(i)) {
					t.Errorf("reader %d: chunk %d out of order or corrupt (starts with chunk %d)", r, i, binary.BigEndian.Uint64(buf))
					return
				}
				if remaining[i].Add(-1) == 0 {
					close(done[i])
				}
			}
		}()
	}
	t.Cleanup(func() {
		finished.Store(true)
		for _, c := range readers {
			c.Close()
		}
		wg.Wait()
	})
	waitChunk := func(i int) {
		t.Helper()
		select {
		case <-done[i]:
		case <-time.After(30 * time.Second):
			t.Fatalf("readers did not all receive chunk %d", i)
		}
	}

	slowCuts := func() uint64 {
		snap := s.Snapshot()
		ends := snap.Class(groups.KindName, "member").Ends
		return ends[loop.EndSlow] + ends[loop.EndStalled]
	}
	total, cutAt := 0, -1
	for i := 0; i < maxChunks && (cutAt < 0 || i < cutAt+afterCut); i++ {
		if i >= window {
			waitChunk(i - window)
		}
		_ = sender.SetWriteDeadline(time.Now().Add(eventTimeout))
		if _, err := sender.Write(chunk(i)); err != nil {
			t.Fatalf("sender: chunk %d: %v", i, err)
		}
		total = i + 1
		if cutAt < 0 && slowCuts() > 0 {
			cutAt = i
		}
	}
	if cutAt < 0 {
		t.Fatalf("the stalled member was not cut after %d chunks", total)
	}
	waitChunk(total - 1)
	finished.Store(true)

	if n := slowCuts(); n != 1 {
		t.Fatalf("%d members cut, want only the stalled one", n)
	}
	waitMembers(t, s, "tcp", "big", members-1)
	// What the stalled member did get is a prefix of the stream, then the end.
	_ = stalled.SetReadDeadline(time.Now().Add(eventTimeout))
	got, err := io.ReadAll(stalled)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("stalled member: %v after %d bytes", err, len(got))
	}
	for i := 0; len(got) > 0; i++ {
		want := chunk(i)[:min(chunkSize, len(got))]
		if !bytes.Equal(got[:len(want)], want) {
			t.Fatalf("stalled member: chunk %d corrupt", i)
		}
		got = got[len(want):]
	}
	t.Logf("sent %d chunks of %d bytes; the stalled member was cut by chunk %d", total, chunkSize, cutAt)
}

func TestGroupDriverHearsTCPMembersWritesAndCloses(t *testing.T) {
	s := groupServer(t, nil)
	m1 := joinMember(t, s, "mix")
	waitMembers(t, s, "tcp", "mix", 1)
	drv := dialGroupDriver(t, s, "/api/server/group_dispatch?group=mix") // legacy base, no accept
	expectMsg(t, drv, codec.Opened, "127.0.0.1", 0, "")                  // members already there are announced
	m2 := joinMember(t, s, "mix")
	expectMsg(t, drv, codec.Opened, "127.0.0.1", 1, "")

	send(t, m1, "abc")
	expectRead(t, m2, "abc")
	expectMsg(t, drv, codec.Received, "127.0.0.1", 0, "abc")

	drv.send(codec.Write, "127.0.0.1", 1, []byte("to two"))
	expectRead(t, m2, "to two")
	send(t, m2, "y")
	expectRead(t, m1, "y") // the driver's WRITE was not forwarded to m1
	expectMsg(t, drv, codec.Received, "127.0.0.1", 1, "y")
	drv.send(codec.Write, "127.0.0.1", 99, []byte("nobody")) // unknown member: a no-op

	drv.send(codec.Close, "127.0.0.1", 0, nil)
	expectMsg(t, drv, codec.Closed, "127.0.0.1", 0, "")
	expectClosed(t, m1)

	// A driver that admits only 127.0.0.2 hears nothing of 127.0.0.1.
	picky := dialGroupDriver(t, s, "/api/dispatch/v1/group_dispatch?group=mix&accept=127.0.0.2")
	m3 := dialGroup(t, s, "127.0.0.2")
	send(t, m3, testPrefix+"mix\n")
	expectMsg(t, picky, codec.Opened, "127.0.0.2", 2, "")
	expectMsg(t, drv, codec.Opened, "127.0.0.2", 2, "")

	// The group outlives its drivers.
	drv.conn.Close()
	picky.conn.Close()
	eventually(t, eventTimeout, "drivers gone", func() bool { return groupsOf(t, s).TCP["mix"].Upstreams == 0 })
	send(t, m3, "still grouped")
	expectRead(t, m2, "still grouped")
	if doc := groupsOf(t, s); doc.TCP["mix"].Members != 2 {
		t.Fatalf("group after its drivers left: %+v", doc.TCP["mix"])
	}
}

func TestGroupDriverOnTheUDPGroup(t *testing.T) {
	s := groupServer(t, nil)
	id := udpGroupID(s)
	drv := dialGroupDriver(t, s, "/api/dispatch/v1/group_dispatch?proto=udp&group="+id)
	p1, p2 := udpMemberPeer(t), udpMemberPeer(t)
	register(t, s, p1)
	expectMsg(t, drv, codec.Opened, "127.0.0.1", uint64(portOf(p1)), "")
	register(t, s, p2)
	expectMsg(t, drv, codec.Opened, "127.0.0.1", uint64(portOf(p2)), "")

	sendTo(t, p1, s, "u1")
	expectDatagramFrom(t, p2, s, "u1")
	expectMsg(t, drv, codec.Received, "127.0.0.1", uint64(portOf(p1)), "u1")

	drv.send(codec.Write, "127.0.0.1", uint64(portOf(p2)), []byte("w"))
	expectDatagramFrom(t, p2, s, "w")
	sendTo(t, p2, s, "u2")
	expectDatagramFrom(t, p1, s, "u2") // the WRITE to p2 was not forwarded to p1
	expectMsg(t, drv, codec.Received, "127.0.0.1", uint64(portOf(p2)), "u2")

	eventually(t, eventTimeout, "driver bytes counted", func() bool { return s.Groups.Counters().BytesFromDrivers == 1 })
}

func TestGroupDriverRouteRefusals(t *testing.T) {
	s := groupServer(t, func(c *groups.Config) { c.IDMaxLen = 8 })
	base := "/api/dispatch/v1/group_dispatch"
	for _, tc := range []struct {
		target string
		token  bool
		status int
		body   string
	}{
		{base + "?group=g", false, http.StatusUnauthorized, `{"error":"invalid authorisation token"}`},
		{base, true, http.StatusUnprocessableEntity, `{"error":"missing required parameter 'group'","parameter":"group"}`},
		{base + "?group=g&proto=sctp", true, http.StatusBadRequest, `{"error":"invalid parameter value for 'proto'","parameter":"proto"}`},
		{base + "?group=g&accept=nonsense", true, http.StatusBadRequest, `{"error":"invalid parameter value for 'accept'","parameter":"accept"}`},
		{base + "?group=123456789", true, http.StatusBadRequest, `{"error":"invalid parameter value for 'group'","parameter":"group"}`},
		{base + "?group=", true, http.StatusBadRequest, `{"error":"invalid parameter value for 'group'","parameter":"group"}`},
		{base + "?group=1&proto=udp", true, http.StatusNotFound, `{"error":"no such UDP group","parameter":"group"}`},
	} {
		status, body := upgradeAnswer(t, s, tc.target, tc.token)
		if status != tc.status || body != tc.body {
			t.Errorf("%s: %d %s, want %d %s", tc.target, status, body, tc.status, tc.body)
		}
	}
	if doc := groupsOf(t, s); len(doc.TCP) != 0 {
		t.Fatalf("refused drivers created groups: %+v", doc.TCP)
	}

	plain := inproc.Start(t, inproc.Options{}) // the group listeners are off
	if status, body := upgradeAnswer(t, plain, base+"?group=g", true); status != http.StatusNotFound {
		t.Fatalf("groups off: %d %s, want 404", status, body)
	}
}

func TestGroupStatsAreServedApartFromDispatchStats(t *testing.T) {
	s := groupServer(t, nil)
	id := udpGroupID(s)
	a, b := joinMember(t, s, "g\"quoted\""), joinMember(t, s, "g\"quoted\"")
	waitMembers(t, s, "tcp", "g\"quoted\"", 2)
	send(t, a, "12345")
	expectRead(t, b, "12345")
	drv := dialGroupDriver(t, s, "/api/dispatch/v1/group_dispatch?group=g%22quoted%22")
	expectMsg(t, drv, codec.Opened, "127.0.0.1", 0, "")
	expectMsg(t, drv, codec.Opened, "127.0.0.1", 1, "")

	want := `{"tcp":{"g\"quoted\"":{"members":2,"upstreams":1,"bytes_forwarded":5}},` +
		`"udp":{"` + id + `":{"members":0,"upstreams":0,"bytes_forwarded":0}}}`
	for _, base := range []string{"/api/dispatch/v1", "/api/server"} {
		if got := groupsBody(t, s, base); got != want {
			t.Fatalf("%s/groups = %s\nwant %s", base, got, want)
		}
	}
	if got := statsOf(t, s); got != `{"udp_listeners":{},"tcp_listeners":{},"tcp_clients":{}}` {
		t.Fatalf("dispatch stats changed by groups: %s", got)
	}
	resp, err := http.Get("http://" + s.Addr().String() + "/api/dispatch/v1/groups")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("groups without a token: %d", resp.StatusCode)
	}
	// The OPENED frames to the driver were counted last: a snapshot that
	// shows them shows everything before them.
	eventually(t, eventTimeout, "driver frames published", func() bool {
		snap := s.Snapshot()
		return snap.Class(groups.KindName, "driver").BytesOut > 0
	})
	snap, c := s.Snapshot(), s.Groups.Counters()
	members, drivers := snap.Class(groups.KindName, "member"), snap.Class(groups.KindName, "driver")
	if c.Joins != 2 || c.ChunksForwarded != 1 || c.BytesForwarded != 5 || members.BytesOut != 5 || drivers.BytesOut == 0 {
		t.Fatalf("counters: %+v; bytes out to members %d, to drivers %d", c, members.BytesOut, drivers.BytesOut)
	}
}

func TestGroupMembersAreClosedOnShutdown(t *testing.T) {
	s := groupServer(t, nil)
	joined, joining := joinMember(t, s, "g"), dialGroup(t, s, "127.0.0.1")
	waitMembers(t, s, "tcp", "g", 1)
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, joined)
	expectClosed(t, joining)
}

func TestGroupListenerThatCannotBindFailsStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	core := loop.DefaultConfig()
	core.HTTPAddr = "127.0.0.1:0"
	core.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := loop.New(core)
	if err != nil {
		t.Fatal(err)
	}
	cfg := groups.DefaultConfig()
	cfg.TCPAddr = taken.Addr().String()
	drv := driver.Config{Secret: inproc.Secret, MaxMessageBytes: 1 << 20, MaxPending: 16 << 20}
	if _, err := groups.Register(s, cfg, &drv); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil || !strings.Contains(err.Error(), "socket group TCP listener") {
		t.Fatalf("Start with the group port taken: %v", err)
	}
}
