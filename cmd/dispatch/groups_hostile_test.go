package main

// Robustness, part five: hostile socket-group members. The driver side of
// a group runs the hostile suite with dispatch (kinds_test.go); these are
// the member side's own: joiners that stall, trickle, flood or send
// garbage, joiners that leave at once, and a member that never reads. Each
// is dealt with alone while the group's other members and drivers, and
// every other group, carry on.

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestGroupJoinersThatStallTrickleOrMisbehaveAreDealtWithAlone(t *testing.T) {
	t.Parallel()
	const (
		maxIDLen = 16
		silent   = 32 // joiners that never send a byte
	)
	k := groupKind{}
	s := startRobustServer(t, k, "DISPATCH_GROUP_JOIN_TIMEOUT=2s", "DISPATCH_GROUP_ID_MAX_LEN="+strconv.Itoa(maxIDLen))
	metrics := s.MetricsAddr(t)
	w := newWitness(t, s, k)

	// Group "t" has a driver that hears every member and a resident member
	// that hears what the others send.
	ch := &channel{group: "t"}
	watcher := attach(t, s, k, ch, "")
	resident := connect(t, s, k, ch, testkit.Localhost)
	expectOpened(t, k, watcher, ch, testkit.Localhost)

	// Joiners that are refused, whatever their pace: each is closed without
	// a byte, and none joins any group.
	refused := 0
	refuse := func(what string, conn net.Conn) {
		t.Helper()
		refused++
		testkit.ExpectClosedWithoutAnswer(t, what, conn, testkit.EventTimeout)
	}
	var quiet []net.Conn
	for range silent {
		quiet = append(quiet, testkit.DialMember(t, s, testkit.Localhost))
	}
	// Nothing but a prefix of the prefix, at the joiner's own slow pace: at
	// the deadline its first read is the join message, and no id is in it.
	slowNoID := testkit.DialMember(t, s, testkit.Localhost)
	for _, piece := range []string{"SOCKET", "FORWARDER", "-NEW:"} {
		testkit.Send(t, slowNoID, []byte(piece))
		time.Sleep(20 * time.Millisecond) // the joiner's pace, well inside the deadline
	}
	// A trickle that leaves the prefix: refused as soon as it does.
	diverging := testkit.DialMember(t, s, testkit.Localhost)
	testkit.Send(t, diverging, []byte("SOCKETFORWARDER"))
	time.Sleep(20 * time.Millisecond) // the joiner's pace
	testkit.Send(t, diverging, []byte("+OLD:t\n"))
	refuse("diverging trickle", diverging)
	// Garbage before a valid line.
	garbage := testkit.DialMember(t, s, testkit.Localhost)
	testkit.Send(t, garbage, []byte("\x00\x01\xff"+testkit.GroupPrefix+"t\n"))
	refuse("garbage before the join line", garbage)
	// A mebibyte with no newline: past the longest join line, the first
	// read is taken as the join message, and its id is too long.
	flood := testkit.DialMember(t, s, testkit.Localhost)
	_ = flood.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
	if _, err := flood.Write(append([]byte(testkit.GroupPrefix), strings.Repeat("x", 1<<20)...)); err != nil && !testkit.IsConnGone(err) {
		t.Fatalf("flooding joiner: %v", err)
	}
	refuse("a mebibyte without a newline", flood)
	// An id one byte too long, with its newline.
	long := testkit.DialMember(t, s, testkit.Localhost)
	testkit.Send(t, long, testkit.JoinLine(strings.Repeat("i", maxIDLen+1)))
	refuse("an id one byte too long", long)

	// Joiners that make it: a line trickled in pieces inside the deadline,
	// a join with a payload and an end of file in one write, a join and an
	// end of file. The watcher sees each as OPENED, RECEIVED…, CLOSED; the
	// resident hears the payloads.
	trickled := testkit.DialMember(t, s, testkit.Localhost)
	for _, piece := range []string{"SOCKET", "FORWARDER-", "NEW:", "t", "\n"} {
		testkit.Send(t, trickled, []byte(piece))
		time.Sleep(20 * time.Millisecond) // the joiner's pace, well inside the deadline
	}
	trickledID := expectOpened(t, k, watcher, ch, testkit.Localhost)
	testkit.Send(t, trickled, []byte("trickled in"))
	watcher.ExpectReceived(testkit.Localhost, trickledID, []byte("trickled in"))
	testkit.ExpectReceives(t, resident, []byte("trickled in"))

	hitAndRun := testkit.DialMember(t, s, testkit.Localhost)
	testkit.Send(t, hitAndRun, append(testkit.JoinLine("t"), "last words"...))
	if err := hitAndRun.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	hitID := expectOpened(t, k, watcher, ch, testkit.Localhost)
	watcher.ExpectReceived(testkit.Localhost, hitID, []byte("last words"))
	watcher.ExpectClosed(testkit.Localhost, hitID)
	testkit.ExpectReceives(t, resident, []byte("last words"))
	testkit.ExpectDisconnected(t, hitAndRun)

	joinAndGo := testkit.DialMember(t, s, testkit.Localhost)
	testkit.Send(t, joinAndGo, testkit.JoinLine("t"))
	if err := joinAndGo.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	goneID := expectOpened(t, k, watcher, ch, testkit.Localhost)
	watcher.ExpectClosed(testkit.Localhost, goneID)

	// The stalled ones go at the deadline, silently.
	w.check(t)
	refuse("a prefix of the prefix, slowly", slowNoID)
	for _, c := range quiet {
		refuse("silent", c)
	}
	w.check(t)

	// None of the refused joined "t": the watcher's next OPENED is for a
	// member joining now, and the resident heard nothing more.
	late := connect(t, s, k, ch, testkit.Localhost)
	lateID := expectOpened(t, k, watcher, ch, testkit.Localhost)
	testkit.Send(t, late, []byte("last of all"))
	watcher.ExpectReceived(testkit.Localhost, lateID, []byte("last of all"))
	testkit.ExpectReceives(t, resident, []byte("last of all"))

	// Counted, and no group left behind by a refused join.
	testkit.ExpectMetric(t, metrics, float64(refused), "dispatch_group_joins_refused_total", "reason", "any")
	testkit.ExpectMetric(t, metrics, silent, "dispatch_group_joins_refused_total", "reason", "timeout")
	var doc struct {
		TCP map[string]testkit.GroupCounts
	}
	if body := testkit.GroupsDocument(t, s); json.Unmarshal([]byte(body), &doc) != nil || len(doc.TCP) != 2 ||
		doc.TCP["t"] != (testkit.GroupCounts{Members: 3, Upstreams: 1}) {
		t.Errorf("groups document %s: want the witness's group and \"t\" with 3 members and 1 driver", body)
	}
}

// A member that never reads is cut at --max-member-pending while the
// member streaming to the group, the members reading it and the group's
// driver get every byte, in order.
func TestGroupMemberThatNeverReadsIsCutAloneWhileOthersGetEverything(t *testing.T) {
	t.Parallel()
	const (
		pendingLimit = 256 << 10 // --max-member-pending
		stream       = 16 << 20
		chunk        = 32 << 10
		window       = 256 << 10 // bytes the sender may be ahead of the slowest reader
		readers      = 3
	)
	k := groupKind{}
	_, logLine, metricKind := k.slowProducer()
	s := startRobustServer(t, k, "DISPATCH_MAX_MEMBER_PENDING="+strconv.Itoa(pendingLimit), "LOG_LEVEL=info")
	metrics := s.MetricsAddr(t)
	d, ch := k.open(t, s, testkit.Localhost)
	bc := testkit.NewBroadcaster()
	// The driver hears 2+readers members: the sender is producer 0 (stream
	// 0), then the readers and the stuck one, which send nothing.
	heard := newPatternReader(d, testkit.Localhost, 2+readers, bc)
	go heard.run()
	joined := func(p int) {
		t.Helper()
		if !bc.WaitUntil(testkit.EventTimeout, func() bool { return heard.opened[p].Load() || heard.failed() }) || heard.failed() {
			t.Fatalf("the driver never got OPENED for member %d: %v", p, heard.err())
		}
	}
	sender := connect(t, s, k, ch, testkit.Localhost)
	joined(0)
	var members []*streamReader
	for p := 1; p <= readers; p++ {
		members = append(members, newStreamReader(connect(t, s, k, ch, testkit.Localhost), 0, bc))
		joined(p)
	}
	// A tiny receive buffer, set before connecting, keeps the kernel from
	// absorbing much on the stuck member's behalf.
	stuck := connect(t, s, k, ch, testkit.Localhost, testkit.ReceiveBuffer(4096))
	joined(1 + readers)
	for _, m := range members {
		go m.run()
	}

	slowest := func() (got int64, failed bool) {
		got = heard.got[0].Load()
		failed = heard.failed()
		for _, m := range members {
			got = min(got, m.got.Load())
			failed = failed || m.failed()
		}
		return got, failed
	}
	for sent := int64(0); sent < stream; sent += chunk {
		if !bc.WaitUntil(2*testkit.EventTimeout, func() bool {
			got, failed := slowest()
			return failed || sent-got < window
		}) {
			got, _ := slowest()
			t.Fatalf("readers stopped at %d bytes while %d were sent", got, sent)
		}
		if _, failed := slowest(); failed {
			break
		}
		_ = sender.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
		if _, err := sender.Write(testkit.StreamPattern(0, sent, chunk)); err != nil {
			t.Fatalf("sender: %v", err)
		}
	}
	if !bc.WaitUntil(2*testkit.EventTimeout, func() bool {
		got, failed := slowest()
		return failed || got == stream
	}) {
		got, _ := slowest()
		t.Fatalf("the slowest reader got %d of %d bytes", got, stream)
	}
	if heard.failed() {
		t.Fatalf("driver: %v", heard.err())
	}
	for i, m := range members {
		if m.failed() || m.got.Load() != stream {
			t.Fatalf("member %d: %d of %d bytes: %v", i, m.got.Load(), stream, m.err())
		}
	}

	// The stuck member alone was cut: the driver saw it close, it was
	// counted and logged once, and what it got is a prefix of the stream.
	if !bc.WaitUntil(testkit.EventTimeout, func() bool { return heard.closed[1+readers].Load() || heard.failed() }) || heard.failed() {
		t.Fatalf("the driver never saw CLOSED for the stuck member: %v", heard.err())
	}
	k.waitCounts(t, s, ch, 1, 1+readers)
	testkit.ExpectMetric(t, metrics, 1, "dispatch_forced_disconnects_total", "kind", metricKind)
	if n := testkit.CountLines(s.Logs(), logLine); n != 1 {
		t.Errorf("%d log lines %q, want exactly 1", n, logLine)
	}
	_ = stuck.SetReadDeadline(time.Now().Add(testkit.EventTimeout))
	got, err := io.ReadAll(stuck)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("stuck member: %v after %d bytes", err, len(got))
	}
	if !testkit.PatternMatches(0, 0, got) {
		t.Errorf("stuck member: the %d bytes it got are not the start of the stream", len(got))
	}
	t.Logf("the stuck member got %d KiB of %d MiB before it was cut", len(got)>>10, stream>>20)
}
