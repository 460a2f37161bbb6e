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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/internal/inproc"
	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
	"github.com/placeos-gnet/dispatch/loop/groups"
)

func TestGroupTCPMembersHearEachOtherButNotThemselves(t *testing.T) {
	s := groupServer(t, nil)
	a1, a2, a3 := testkit.Join(t, s, "127.0.0.1", "alpha"),
		testkit.Join(t, s, "127.0.0.1", "alpha"),
		testkit.Join(t, s, "127.0.0.1", "alpha")
	b1, b2 := testkit.Join(t, s, "127.0.0.1", "beta"), testkit.Join(t, s, "127.0.0.1", "beta")
	testkit.WaitGroupMembers(t, s, "tcp", "alpha", 3)
	testkit.WaitGroupMembers(t, s, "tcp", "beta", 2)

	testkit.Send(t, a1, []byte("one"))
	testkit.ExpectReceives(t, a2, []byte("one"))
	testkit.ExpectReceives(t, a3, []byte("one"))
	testkit.Send(t, a2, []byte("two"))
	testkit.ExpectReceives(t, a1, []byte("two")) // a1's first bytes: its own "one" was not echoed
	testkit.ExpectReceives(t, a3, []byte("two"))

	testkit.Send(t, b1, []byte("bee"))
	testkit.ExpectReceives(t, b2, []byte("bee")) // nothing from alpha reached beta
	testkit.Send(t, b2, []byte("buzz"))
	testkit.ExpectReceives(t, b1, []byte("buzz"))
}

func TestGroupTCPBytesAfterTheJoinLineAreTheFirstPayload(t *testing.T) {
	s := groupServer(t, nil)
	first := testkit.Join(t, s, "127.0.0.1", "g")
	testkit.WaitGroupMembers(t, s, "tcp", "g", 1)
	second := testkit.DialMember(t, s, "127.0.0.1")
	testkit.Send(t, second, []byte(testkit.GroupPrefix+"g\r\nfirst payload"))
	testkit.ExpectReceives(t, first, []byte("first payload"))
	testkit.Send(t, first, []byte("reply"))
	testkit.ExpectReceives(t, second, []byte("reply"))
}

func TestGroupTCPStreamArrivesWholeAndInOrder(t *testing.T) {
	s := groupServer(t, nil)
	sender := testkit.Join(t, s, "127.0.0.1", "stream")
	receivers := []*net.TCPConn{testkit.Join(t, s, "127.0.0.1", "stream"), testkit.Join(t, s, "127.0.0.1", "stream")}
	testkit.WaitGroupMembers(t, s, "tcp", "stream", 3)

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
		testkit.ExpectReceives(t, r, stream)
	}
}

func TestGroupTCPJoinWithoutNewlineCompletesAtTheDeadline(t *testing.T) {
	s := groupServer(t, func(c *groups.Config) { c.JoinTimeout = 200 * time.Millisecond })
	first := testkit.Join(t, s, "127.0.0.1", "legacy")
	testkit.WaitGroupMembers(t, s, "tcp", "legacy", 1)
	// The original protocol: the join message is the first read, no newline.
	second := testkit.DialMember(t, s, "127.0.0.1")
	testkit.Send(t, second, []byte(testkit.GroupPrefix+"legacy"))
	testkit.WaitGroupMembers(t, s, "tcp", "legacy", 2)

	testkit.Send(t, first, []byte("hi"))
	testkit.ExpectReceives(t, second, []byte("hi"))
	testkit.Send(t, second, []byte("later"))
	testkit.ExpectReceives(t, first, []byte("later"))
	testkit.Eventually(t, testkit.EventTimeout, "both joins counted", func() bool { return s.Groups.Counters().Joins == 2 })
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
		"id too long":           testkit.GroupPrefix + "123456789\n",
		"empty id":              testkit.GroupPrefix + "\r\n",
		"too long, no newline":  testkit.GroupPrefix + strings.Repeat("x", 100),
		"invalid UTF-8 id":      testkit.GroupPrefix + "\xff\xfe\n",
		"prefix case differs":   strings.ToLower(testkit.GroupPrefix) + "g\n",
		"prefix after a space ": " " + testkit.GroupPrefix + "g\n",
	}
	for name, first := range bad {
		conn := testkit.DialMember(t, s, "127.0.0.1")
		testkit.Send(t, conn, []byte(first))
		t.Run(name, func(t *testing.T) { testkit.ExpectDisconnected(t, conn) })
	}
	silent := testkit.DialMember(t, s, "127.0.0.1")
	testkit.ExpectDisconnected(t, silent)

	want := uint64(len(bad) + 1)
	testkit.Eventually(t, testkit.EventTimeout, "refusals counted", func() bool {
		c := s.Groups.Counters()
		return c.JoinsRefused == want && c.JoinTimeouts == 1
	})
	if tcp := testkit.GroupsOf(t, s, "tcp"); len(tcp) != 0 {
		t.Fatalf("refused joins left groups behind: %+v", tcp)
	}
}

func TestGroupIDsAreExactStrings(t *testing.T) {
	s := groupServer(t, nil)
	room1, room2 := testkit.Join(t, s, "127.0.0.1", "room"), testkit.Join(t, s, "127.0.0.1", "room")
	upper := testkit.Join(t, s, "127.0.0.1", "Room")
	spaced := testkit.Join(t, s, "127.0.0.1", "room ")
	testkit.WaitGroupMembers(t, s, "tcp", "room", 2)
	testkit.WaitGroupMembers(t, s, "tcp", "Room", 1)
	testkit.WaitGroupMembers(t, s, "tcp", "room ", 1)
	testkit.Send(t, room1, []byte("only room"))
	testkit.ExpectReceives(t, room2, []byte("only room"))

	partner := testkit.Join(t, s, "127.0.0.1", "Room")
	testkit.WaitGroupMembers(t, s, "tcp", "Room", 2)
	testkit.Send(t, partner, []byte("for Room"))
	testkit.ExpectReceives(t, upper, []byte("for Room")) // its first bytes: nothing from "room"
	other := testkit.Join(t, s, "127.0.0.1", "room ")
	testkit.WaitGroupMembers(t, s, "tcp", "room ", 2)
	testkit.Send(t, other, []byte("for room-space"))
	testkit.ExpectReceives(t, spaced, []byte("for room-space"))
}

func TestGroupTCPPreconfiguredHostJoinsWithoutPrefix(t *testing.T) {
	s := groupServer(t, func(c *groups.Config) {
		c.TCPPreconfig = []groups.Host{{Group: "pre", Host: netip.MustParseAddr("127.0.0.2")}}
	})
	joined := testkit.Join(t, s, "127.0.0.1", "pre")
	testkit.WaitGroupMembers(t, s, "tcp", "pre", 1)
	pre := testkit.DialMember(t, s, "127.0.0.2")
	testkit.WaitGroupMembers(t, s, "tcp", "pre", 2)
	testkit.Send(t, pre, []byte(testkit.GroupPrefix+"not a join: payload"))
	testkit.ExpectReceives(t, joined, []byte(testkit.GroupPrefix+"not a join: payload"))
	testkit.Send(t, joined, []byte("back"))
	testkit.ExpectReceives(t, pre, []byte("back"))
}

func TestGroupUDPMembersHearEachOtherAndStrangersAreDropped(t *testing.T) {
	s := groupServer(t, nil)
	port := testkit.GroupUDPPort(t, s)
	id := strconv.Itoa(port)
	p1, p2, p3 := testkit.UDPPeer(t, "127.0.0.1"), testkit.UDPPeer(t, "127.0.0.1"), testkit.UDPPeer(t, "127.0.0.1")
	for _, p := range []*net.UDPConn{p1, p2, p3} {
		testkit.RegisterUDPMember(t, s, p)
	}
	testkit.WaitGroupMembers(t, s, "udp", id, 3)

	testkit.SendDatagram(t, p1, port, []byte("d1"))
	testkit.ExpectDatagramFrom(t, p2, port, []byte("d1"))
	testkit.ExpectDatagramFrom(t, p3, port, []byte("d1"))
	testkit.SendDatagram(t, p2, port, []byte("d2"))
	testkit.ExpectDatagramFrom(t, p1, port, []byte("d2")) // p1's first datagram: "d1" was not echoed
	testkit.ExpectDatagramFrom(t, p3, port, []byte("d2"))

	stranger := testkit.UDPPeer(t, "127.0.0.1")
	testkit.SendDatagram(t, stranger, port, []byte("nope"))
	testkit.Eventually(t, testkit.EventTimeout, "stranger's datagram counted", func() bool {
		return s.Groups.Counters().DatagramsUnregistered == 1
	})
	testkit.SendDatagram(t, p3, port, []byte("d3"))
	testkit.ExpectDatagramFrom(t, p1, port, []byte("d3")) // not "nope"
	testkit.ExpectDatagramFrom(t, p2, port, []byte("d3"))

	testkit.SendDatagram(t, stranger, port, []byte(testkit.GroupPrefix+"0"))
	testkit.SendDatagram(t, stranger, port, []byte(testkit.GroupPrefix+"http"))
	testkit.Eventually(t, testkit.EventTimeout, "bad registrations refused", func() bool {
		return s.Groups.Counters().JoinsRefused == 2
	})
	testkit.WaitGroupMembers(t, s, "udp", id, 3)
}

func TestGroupUDPOpenForwardsStrangers(t *testing.T) {
	s := groupServer(t, func(c *groups.Config) { c.UDPOpen = true })
	port := testkit.GroupUDPPort(t, s)
	member := testkit.UDPPeer(t, "127.0.0.1")
	testkit.RegisterUDPMember(t, s, member)
	testkit.WaitGroupMembers(t, s, "udp", strconv.Itoa(port), 1)
	testkit.SendDatagram(t, testkit.UDPPeer(t, "127.0.0.1"), port, []byte("open door"))
	testkit.ExpectDatagramFrom(t, member, port, []byte("open door"))
}

func TestGroupUDPIdleMembersExpirePreconfiguredStay(t *testing.T) {
	pre := testkit.UDPPeer(t, "127.0.0.1")
	s := groupServer(t, func(c *groups.Config) {
		c.UDPIdle = 200 * time.Millisecond
		c.UDPPreconfig = []netip.AddrPort{pre.LocalAddr().(*net.UDPAddr).AddrPort()}
	})
	port := testkit.GroupUDPPort(t, s)
	id := strconv.Itoa(port)
	member := testkit.UDPPeer(t, "127.0.0.1")
	testkit.RegisterUDPMember(t, s, member)
	testkit.WaitGroupMembers(t, s, "udp", id, 2)
	testkit.SendDatagram(t, member, port, []byte("to the preconfigured peer"))
	testkit.ExpectDatagramFrom(t, pre, port, []byte("to the preconfigured peer"))

	testkit.WaitGroupMembers(t, s, "udp", id, 1) // member fell silent; pre stays
	testkit.Eventually(t, testkit.EventTimeout, "expiry counted", func() bool { return s.Groups.Counters().UDPMembersExpired == 1 })
	testkit.SendDatagram(t, member, port, []byte("too late"))
	testkit.Eventually(t, testkit.EventTimeout, "expired member's datagram dropped", func() bool {
		return s.Groups.Counters().DatagramsUnregistered == 1
	})
	testkit.SendDatagram(t, pre, port, []byte("still here"))
	testkit.RegisterUDPMember(t, s, member)
	testkit.WaitGroupMembers(t, s, "udp", id, 2)
	testkit.SendDatagram(t, pre, port, []byte("welcome back"))
	testkit.ExpectDatagramFrom(t, member, port, []byte("welcome back"))
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
	sender := testkit.Join(t, s, "127.0.0.1", "big")
	// A small receive buffer, set before connecting, keeps the kernel from
	// absorbing much on the stalled member's behalf.
	stalled := testkit.Join(t, s, "127.0.0.1", "big", testkit.ReceiveBuffer(4096))
	readers := make([]*net.TCPConn, members-2)
	for i := range readers {
		readers[i] = testkit.Join(t, s, "127.0.0.1", "big")
	}
	testkit.WaitGroupMembers(t, s, "tcp", "big", members)

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
		testkit.Send(t, sender, chunk(i))
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
	testkit.WaitGroupMembers(t, s, "tcp", "big", members-1)
	// What the stalled member did get is a prefix of the stream, then the end.
	_ = stalled.SetReadDeadline(time.Now().Add(testkit.EventTimeout))
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
	m1 := testkit.Join(t, s, "127.0.0.1", "mix")
	testkit.WaitGroupMembers(t, s, "tcp", "mix", 1)
	// On the legacy base, admitting every member: those already there are announced.
	drv := testkit.MustDialDriver(t, s, testkit.GroupTarget(testkit.LegacyBasePath, "mix", ""))
	drv.ExpectOpened("127.0.0.1", 0)
	m2 := testkit.Join(t, s, "127.0.0.1", "mix")
	drv.ExpectOpened("127.0.0.1", 1)

	testkit.Send(t, m1, []byte("abc"))
	testkit.ExpectReceives(t, m2, []byte("abc"))
	drv.ExpectReceived("127.0.0.1", 0, []byte("abc"))

	drv.Write("127.0.0.1", 1, []byte("to two"))
	testkit.ExpectReceives(t, m2, []byte("to two"))
	testkit.Send(t, m2, []byte("y"))
	testkit.ExpectReceives(t, m1, []byte("y")) // the driver's WRITE was not forwarded to m1
	drv.ExpectReceived("127.0.0.1", 1, []byte("y"))
	drv.Write("127.0.0.1", 99, []byte("nobody")) // unknown member: a no-op

	drv.CloseClient("127.0.0.1", 0)
	drv.ExpectClosed("127.0.0.1", 0)
	testkit.ExpectDisconnected(t, m1)

	// A driver that admits only 127.0.0.2 hears nothing of 127.0.0.1.
	picky := testkit.MustDialDriver(t, s, testkit.GroupTarget(testkit.BasePath, "mix", "127.0.0.2"))
	m3 := testkit.Join(t, s, "127.0.0.2", "mix")
	picky.ExpectOpened("127.0.0.2", 2)
	drv.ExpectOpened("127.0.0.2", 2)

	// The group outlives its drivers.
	drv.Drop()
	picky.Drop()
	testkit.Eventually(t, testkit.EventTimeout, "drivers gone", func() bool {
		return testkit.GroupCountsOf(t, s, "tcp", "mix").Upstreams == 0
	})
	testkit.Send(t, m3, []byte("still grouped"))
	testkit.ExpectReceives(t, m2, []byte("still grouped"))
	if mix := testkit.GroupCountsOf(t, s, "tcp", "mix"); mix.Members != 2 {
		t.Fatalf("group after its drivers left: %+v", mix)
	}
}

func TestGroupDriverOnTheUDPGroup(t *testing.T) {
	s := groupServer(t, nil)
	port := testkit.GroupUDPPort(t, s)
	drv := testkit.MustDialDriver(t, s, testkit.BasePath+"/group_dispatch?proto=udp&group="+strconv.Itoa(port))
	p1, p2 := testkit.UDPPeer(t, "127.0.0.1"), testkit.UDPPeer(t, "127.0.0.1")
	testkit.RegisterUDPMember(t, s, p1)
	drv.ExpectOpened("127.0.0.1", testkit.UDPPort(p1))
	testkit.RegisterUDPMember(t, s, p2)
	drv.ExpectOpened("127.0.0.1", testkit.UDPPort(p2))

	testkit.SendDatagram(t, p1, port, []byte("u1"))
	testkit.ExpectDatagramFrom(t, p2, port, []byte("u1"))
	drv.ExpectReceived("127.0.0.1", testkit.UDPPort(p1), []byte("u1"))

	drv.Write("127.0.0.1", testkit.UDPPort(p2), []byte("w"))
	testkit.ExpectDatagramFrom(t, p2, port, []byte("w"))
	testkit.SendDatagram(t, p2, port, []byte("u2"))
	testkit.ExpectDatagramFrom(t, p1, port, []byte("u2")) // the WRITE to p2 was not forwarded to p1
	drv.ExpectReceived("127.0.0.1", testkit.UDPPort(p2), []byte("u2"))

	testkit.Eventually(t, testkit.EventTimeout, "driver bytes counted", func() bool {
		return s.Groups.Counters().BytesFromDrivers == 1
	})
}

func TestGroupDriverRouteRefusals(t *testing.T) {
	s := groupServer(t, func(c *groups.Config) { c.IDMaxLen = 8 })
	base := testkit.BasePath + "/group_dispatch"
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
		var header []string
		if tc.token {
			header = append(header, testkit.BearerHeader(s))
		}
		if r := testkit.GetUpgrade(t, s, tc.target, header...); r.Status != tc.status || r.Body != tc.body {
			t.Errorf("%s: %d %s, want %d %s", tc.target, r.Status, r.Body, tc.status, tc.body)
		}
	}
	if tcp := testkit.GroupsOf(t, s, "tcp"); len(tcp) != 0 {
		t.Fatalf("refused drivers created groups: %+v", tcp)
	}

	plain := inproc.Start(t, inproc.Options{}) // the group listeners are off
	if r := testkit.GetUpgrade(t, plain, base+"?group=g", testkit.BearerHeader(plain)); r.Status != http.StatusNotFound {
		t.Fatalf("groups off: %d %s, want 404", r.Status, r.Body)
	}
}

func TestGroupStatsAreServedApartFromDispatchStats(t *testing.T) {
	s := groupServer(t, nil)
	id := strconv.Itoa(testkit.GroupUDPPort(t, s))
	a, b := testkit.Join(t, s, "127.0.0.1", "g\"quoted\""), testkit.Join(t, s, "127.0.0.1", "g\"quoted\"")
	testkit.WaitGroupMembers(t, s, "tcp", "g\"quoted\"", 2)
	testkit.Send(t, a, []byte("12345"))
	testkit.ExpectReceives(t, b, []byte("12345"))
	drv := testkit.MustDialDriver(t, s, testkit.GroupTarget(testkit.BasePath, "g%22quoted%22", ""))
	drv.ExpectOpened("127.0.0.1", 0)
	drv.ExpectOpened("127.0.0.1", 1)

	want := `{"tcp":{"g\"quoted\"":{"members":2,"upstreams":1,"bytes_forwarded":5}},` +
		`"udp":{"` + id + `":{"members":0,"upstreams":0,"bytes_forwarded":0}}}`
	for _, base := range []string{testkit.BasePath, testkit.LegacyBasePath} {
		if got := testkit.GroupsDocumentAt(t, s, base); got != want {
			t.Fatalf("%s/groups = %s\nwant %s", base, got, want)
		}
	}
	if got := testkit.StatsBody(t, s, testkit.BasePath); got != testkit.EmptyStats {
		t.Fatalf("dispatch stats changed by groups: %s", got)
	}
	if r := testkit.Get(t, s, testkit.BasePath+"/groups"); r.Status != http.StatusUnauthorized {
		t.Fatalf("groups without a token: %d", r.Status)
	}
	// The OPENED frames to the driver were counted last: a snapshot that
	// shows them shows everything before them.
	testkit.Eventually(t, testkit.EventTimeout, "driver frames published", func() bool {
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
	joined, joining := testkit.Join(t, s, "127.0.0.1", "g"), testkit.DialMember(t, s, "127.0.0.1")
	testkit.WaitGroupMembers(t, s, "tcp", "g", 1)
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	testkit.ExpectDisconnected(t, joined)
	testkit.ExpectDisconnected(t, joining)
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
