package main

// Robustness, part four: churn and shutdown under load.
//
// TestSoakChurn runs for SOAK_DURATION (default 60 s; `make soak` sets
// 10m), split evenly between the channel kinds (kinds_test.go). For
// dispatch, drivers register and leave across 10 TCP and 10 UDP ports and
// devices connect, stream and disconnect; for socket groups, drivers attach
// to and leave 8 groups and members join, stream, hear each other and
// leave. A share of the peers misbehave. Every byte any driver or member
// receives is checked against what was sent; at the end the server must be
// back where it started: no ports or groups, no leaked descriptors or
// goroutines, memory back within a bound.
//
// How delivery is checked. A producer's stream (a device's, a member's) is
// a sequence of 16-byte records [uid][record index], so any stretch of it
// names its producer and its offset. For each (ip, id) a driver hears, the
// bytes must be one contiguous, in-order stretch of that producer's stream,
// starting at 0 if the driver saw OPENED for a producer that connected
// after it attached, and ending at the stream's end if it saw CLOSED for a
// producer that finished cleanly. Half the channels have an "anchor" driver
// that stays for the whole soak and hears every producer: there the server
// never closes a producer on its own (save a group member that stops
// reading), so every producer finishes cleanly, and every driver attached
// before a producer connected and still attached after its close must have
// heard its whole stream, OPENED to CLOSED. On an anchored group the anchor
// also records the order in which it heard the members: every member must
// receive exactly the others' bytes in that order from its own OPENED on,
// with whatever drivers WRITE to it (self-checking records) between them,
// and members that stay all along must receive all of it (soak_groups_test.go).
// UDP datagrams carry [uid][seq] and are checked whole, in order per
// sender, and complete on the anchored ports.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// soakDuration is SOAK_DURATION, 60 s by default (10 s with -short), for
// all kinds together.
func soakDuration(t *testing.T) time.Duration {
	t.Helper()
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("SOAK_DURATION=%q: want a positive duration such as 60s or 10m", v)
		}
		return d
	}
	if testing.Short() {
		return 10 * time.Second
	}
	return 60 * time.Second
}

const (
	soakListedIPs    = 8 // producers come from 127.0.0.1 ... 127.0.0.8 ...
	soakUnlistedBase = 100
	soakUnlistedIPs  = 20 // ... or from 127.0.0.100 ... 127.0.0.119, which no churn driver ever lists
	soakAnchorAccept = "127.0.0.0/28"
	soakMaxMessage   = 64 << 10
)

// soakPlan is how the soak exercises one kind: its channels, settings and
// actors.
type soakPlan struct {
	tcp, udp, anchored int      // channels of each protocol; how many of each have an anchor
	env                []string // settings beyond the soak's own
	actors             map[string]int
	residents          int // members per anchored group that stay all along
}

var soakPlans = map[string]soakPlan{
	"dispatch": {tcp: 10, udp: 10, anchored: 5,
		actors: map[string]int{"driver": 12, "producer": 10, "udp": 4, "http": 2}},
	"group": {tcp: 8, anchored: 4, residents: 2,
		// A short join deadline for hostile joiners; a small member bound
		// so that members that stop reading are cut within the soak.
		env:    []string{"DISPATCH_GROUP_JOIN_TIMEOUT=1s", "DISPATCH_MAX_MEMBER_PENDING=" + strconv.Itoa(256<<10)},
		actors: map[string]int{"driver": 12, "producer": 10, "http": 1, "joiner": 2, "deaf": 2}},
}

func TestSoakChurn(t *testing.T) {
	perKind := soakDuration(t) / time.Duration(len(kinds))
	for _, kind := range kinds {
		t.Run(kind.String(), func(t *testing.T) { runSoak(t, kind, perKind) })
	}
}

func runSoak(t *testing.T, kind channelKind, duration time.Duration) {
	plan := soakPlans[kind.String()]
	seed := uint64(time.Now().UnixNano())
	t.Logf("soak: %v, seed %d", duration, seed)

	s := startRobustServer(t, kind, append([]string{
		"LOG_LEVEL=info",
		"DISPATCH_HANDSHAKE_TIMEOUT=1s",
		"DISPATCH_MAX_MESSAGE_BYTES=" + strconv.Itoa(soakMaxMessage)}, plan.env...)...)
	metrics := s.MetricsAddr(t)

	k := &soak{
		t:       t,
		s:       s,
		kind:    kind,
		seed:    seed,
		devices: map[uint64]*soakDevice{},
		senders: map[uint64]*soakSender{},
		deaf:    map[string]bool{},
	}
	for i := range plan.tcp {
		c := &soakChannel{kind: kind, ch: kind.newChannel(t), anchored: i < plan.anchored}
		if c.anchored && kind.producersHear() {
			c.log = newGroupLog()
		}
		k.tcp = append(k.tcp, c)
	}
	for i := range plan.udp {
		k.udp = append(k.udp, &soakChannel{udpPort: testkit.FreeUDPPort(t), anchored: i < plan.anchored})
	}

	// Baseline, before any port is open.
	base := k.sample(t, metrics)
	t.Logf("baseline: VmRSS %s, %d descriptors, %d goroutines", testkit.MiB(base.rss), base.fds, base.goroutines)

	// Anchors stay for the whole soak; on groups they hear every member, and
	// resident members stay too.
	var anchors []*soakDriver
	for _, c := range append(slices.Clone(k.tcp), k.udp...) {
		if !c.anchored {
			continue
		}
		accept := soakAnchorAccept
		if c.isGroup() {
			accept = "" // every member: the anchor's order is what every member must hear
		}
		d, err := k.dialDriver(c, accept, true, rand.New(rand.NewPCG(seed, uint64(len(anchors)))))
		if err != nil {
			t.Fatalf("anchor on %s: %v", c, err)
		}
		d.anchor = true
		anchors = append(anchors, d)
	}
	k.deadline = time.Now().Add(duration)
	var residents []*resident
	for _, c := range k.tcp {
		for i := 0; c.log != nil && i < plan.residents; i++ {
			residents = append(residents, k.startResident(c, rand.New(rand.NewPCG(seed, uint64(1000+len(residents))))))
		}
	}

	// The load.
	actors := map[string]func(*rand.Rand){
		"driver": k.churnDriver, "producer": k.producer, "udp": k.udpSender, "http": k.hostileHTTP,
		"joiner": k.hostileJoiner, "deaf": k.deafMember,
	}
	var wg sync.WaitGroup
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for name := range plan.actors {
			if !yield(name) {
				return
			}
		}
	}) {
		for range plan.actors[name] {
			rng := rand.New(rand.NewPCG(seed, k.actorSeq.Add(1)))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(k.deadline) {
					actors[name](rng)
				}
			}()
		}
	}

	// Watch while it runs: the server answers, and resources are sampled.
	peak := base
	watchTick := time.NewTicker(time.Second)
	for time.Now().Before(k.deadline) {
		<-watchTick.C
		cur := k.sample(t, metrics)
		peak = peak.max(cur)
		if s.HasExited() {
			t.Fatalf("the server exited during the soak:\n%s", s.LogTail(8192))
		}
	}
	watchTick.Stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("soak actors did not finish within 60 s of the deadline: something is wedged")
	}

	// UDP anchors catch up with what was sent to them, and residents with
	// what their anchor heard.
	k.awaitUDPAnchors(anchors)
	k.awaitResidents(residents)
	// Anchors leave politely; everything they heard is now final. Then the
	// residents leave.
	for _, d := range anchors {
		d.tLeave = time.Now()
		_ = d.conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
		_ = wsutil.WriteClientMessage(d.conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
		d.expectClose = ws.StatusNormalClosure
	}
	for _, d := range anchors {
		d.finish(testkit.EventTimeout)
	}
	for _, r := range residents {
		r.leave()
	}
	k.verify(metrics)

	// Back to the start.
	kind.waitIdle(t, s)
	var end soakSample
	settled := testkit.Poll(15*time.Second, func() bool {
		end = k.sample(t, metrics)
		return end.fds <= base.fds+2 && end.goroutines <= base.goroutines+4
	})
	t.Logf("resources: VmRSS baseline %s, peak %s, end %s; descriptors %d / %d / %d; goroutines %d / %d / %d",
		testkit.MiB(base.rss), testkit.MiB(peak.rss), testkit.MiB(end.rss), base.fds, peak.fds, end.fds, base.goroutines, peak.goroutines, end.goroutines)
	t.Logf("load: %s", k.summary())
	if !settled {
		t.Errorf("leak: %d descriptors (baseline %d) and %d goroutines (baseline %d) after the soak",
			end.fds, base.fds, end.goroutines, base.goroutines)
	}
	// Memory: bounded throughout, and back near the start (the Go runtime
	// returns freed pages lazily, hence the slack).
	if bound := base.rss + 128<<20; peak.rss > bound {
		t.Errorf("VmRSS peaked at %s during the soak, over the bound %s (baseline %s)", testkit.MiB(peak.rss), testkit.MiB(bound), testkit.MiB(base.rss))
	}
	if bound := base.rss + 64<<20; end.rss > bound {
		t.Errorf("VmRSS %s after the soak, over the bound %s (baseline %s)", testkit.MiB(end.rss), testkit.MiB(bound), testkit.MiB(base.rss))
	}
	// No driver read promptly enough to be called slow, and nothing broke.
	// Producers that read are never cut: devices never, group members only
	// if they are the deaf ones (checked by verify).
	testkit.ExpectMetric(t, metrics, 0, "dispatch_forced_disconnects_total", "kind", "slow_driver")
	testkit.ExpectMetric(t, metrics, 0, "dispatch_forced_disconnects_total", "kind", "slow_device")
	logs := s.Logs()
	for _, bad := range []string{"panic", "fatal error", "level=ERROR"} {
		if n := testkit.CountLines(logs, bad); n > 0 {
			t.Errorf("%d log lines with %q: %s", n, bad, testkit.LinesContaining(logs, bad))
		}
	}
	// And it still serves.
	w := newWitness(t, s, kind)
	w.check(t)
}

// ---------------------------------------------------------------------------
// The soak's bookkeeping.

// soakChannel is a channel of the soak's kind (a dispatch TCP port, a TCP
// socket group), or a dispatch UDP port.
type soakChannel struct {
	kind     channelKind // nil for a UDP port
	ch       *channel    // nil for a UDP port
	udpPort  int
	anchored bool      // it has an anchor driver all along
	log      *groupLog // anchored groups: the order the anchor heard the members in
}

func (c *soakChannel) udp() bool { return c.kind == nil }

// isGroup says whether producers join it as socket-group members: with a
// line, in any of the shapes the soak tries, admitted whatever their IP,
// and the channel lives on without drivers. A dispatch port admits devices
// only from IPs a driver on it lists, and is closed while it has no driver.
func (c *soakChannel) isGroup() bool { return c.ch != nil && c.ch.group != "" }

func (c *soakChannel) String() string {
	switch {
	case c.udp():
		return "udp/" + strconv.Itoa(c.udpPort)
	case c.isGroup():
		return "group/" + c.ch.group
	}
	return "tcp/" + strconv.Itoa(c.ch.port)
}

// target is the upgrade target of a driver admitting accept ("": everyone,
// groups only; spaces are sent escaped).
func (c *soakChannel) target(accept string) string {
	accept = strings.ReplaceAll(accept, " ", "%20")
	if c.udp() {
		return testkit.DispatchTarget(testkit.BasePath, "udp", c.udpPort, accept)
	}
	return c.kind.target(c.ch, accept)
}

type soak struct {
	t        *testing.T
	s        *testkit.Process
	kind     channelKind
	seed     uint64
	deadline time.Time
	actorSeq atomic.Uint64
	tcp      []*soakChannel // dispatch TCP ports or groups
	udp      []*soakChannel // dispatch UDP ports

	mu      sync.Mutex
	devices map[uint64]*soakDevice // TCP producers by uid
	senders map[uint64]*soakSender // UDP senders by uid
	drivers []*soakDriver
	deaf    map[string]bool // local addresses of group members that never read

	vmu        sync.Mutex
	violations []string
	nViolation int

	nDrivers, nConflicts, nHostileDrivers, nDrops       atomic.Int64
	nDevices, nDevicesRefused, nDevicesUnlisted, nAbort atomic.Int64
	nDatagrams, nHostileHTTP, nWrites, nCloses          atomic.Int64
	nJoiners, nSilent, nDeaf                            atomic.Int64
	bytesSent, bytesChecked, dgramsChecked              atomic.Int64
	bytesHeard                                          atomic.Int64 // group members' bytes checked at other members
}

func (k *soak) violate(format string, args ...any) {
	k.vmu.Lock()
	defer k.vmu.Unlock()
	k.nViolation++
	if len(k.violations) < 40 {
		k.violations = append(k.violations, fmt.Sprintf(format, args...))
	}
}

func (k *soak) summary() string {
	s := fmt.Sprintf("%d driver sessions (%d hostile, %d dropped, %d port conflicts), %d producer connections "+
		"(%d more found their port closed, %d came from unlisted IPs, %d aborted mid-stream), "+
		"%d datagrams, %d WRITEs, %d CLOSEs, %d hostile HTTP clients; %.1f MiB sent by producers, %.1f MiB and %d datagrams checked at drivers",
		k.nDrivers.Load(), k.nHostileDrivers.Load(), k.nDrops.Load(), k.nConflicts.Load(), k.nDevices.Load(),
		k.nDevicesRefused.Load(), k.nDevicesUnlisted.Load(), k.nAbort.Load(), k.nDatagrams.Load(), k.nWrites.Load(),
		k.nCloses.Load(), k.nHostileHTTP.Load(), float64(k.bytesSent.Load())/(1<<20),
		float64(k.bytesChecked.Load())/(1<<20), k.dgramsChecked.Load())
	if k.kind.producersHear() {
		s += fmt.Sprintf("; %d hostile joiners, %d deaf members, %.1f MiB checked at members",
			k.nJoiners.Load(), k.nDeaf.Load(), float64(k.bytesHeard.Load())/(1<<20))
	}
	return s
}

type soakSample struct {
	rss        int64
	fds        int
	goroutines int
}

func (a soakSample) max(b soakSample) soakSample {
	return soakSample{rss: max(a.rss, b.rss), fds: max(a.fds, b.fds), goroutines: max(a.goroutines, b.goroutines)}
}

func (k *soak) sample(t *testing.T, metrics string) soakSample {
	t.Helper()
	rss, err := testkit.ProcStatusBytes(k.s.PID(), "VmRSS")
	if err != nil {
		t.Fatalf("VmRSS: %v", err)
	}
	fds, err := testkit.FDCount(k.s.PID())
	if err != nil {
		t.Fatalf("descriptors: %v", err)
	}
	all, err := testkit.Scrape(metrics)
	if err != nil {
		t.Fatalf("the server stopped answering /metrics: %v", err)
	}
	g, ok := testkit.MetricValue(all, "go_goroutines")
	if !ok {
		t.Fatal("go_goroutines not exported")
	}
	return soakSample{rss: rss, fds: fds, goroutines: int(g)}
}

func listedIP(i int) string   { return fmt.Sprintf("127.0.0.%d", 1+i) }
func unlistedIP(i int) string { return fmt.Sprintf("127.0.0.%d", soakUnlistedBase+i) }

// pickDeviceIP: mostly an IP drivers may list, sometimes one none ever does.
func pickDeviceIP(rng *rand.Rand) (string, bool) {
	if rng.IntN(100) < 12 {
		return unlistedIP(rng.IntN(soakUnlistedIPs)), false
	}
	return listedIP(rng.IntN(soakListedIPs)), true
}

// ---------------------------------------------------------------------------
// TCP producer streams.

// soakStream is n bytes of producer uid's stream from offset off: 16-byte
// records [uid][record index], big-endian.
func soakStream(uid uint64, off int64, n int) []byte {
	out := make([]byte, 0, n+32)
	rec := off / 16
	skip := int(off % 16)
	var b [16]byte
	for len(out) < n+skip {
		binary.BigEndian.PutUint64(b[:8], uid)
		binary.BigEndian.PutUint64(b[8:], uint64(rec))
		out = append(out, b[:]...)
		rec++
	}
	return out[skip : skip+n]
}

// soakDevice is a TCP producer: a device on a dispatch port or a group member.
type soakDevice struct {
	uid   uint64
	ch    *soakChannel
	ip    string
	total int64 // bytes the producer means to send

	tDial time.Time // before dialling; set before the producer is registered
	// Set by the producer's own goroutine before it is marked finished.
	tEOF     time.Time // when its reader saw the server's end of file
	sent     int64
	clean    bool // sent everything, half-closed, then saw end of file
	aborted  bool // hung up on purpose mid-stream
	finished atomic.Bool

	heard *memberCheck // anchored groups: what it receives, checked against the anchor's order
}

// writeRecord is what drivers WRITE to TCP producers: 16 bytes that check themselves.
func writeRecord(rng *rand.Rand) []byte {
	b := make([]byte, 16)
	b[0], b[1] = 'W', 'R'
	for i := 2; i < 8; i++ {
		b[i] = byte(rng.Uint32())
	}
	h := fnv.New64a()
	h.Write(b[:8])
	binary.BigEndian.PutUint64(b[8:], h.Sum64())
	return b
}

func writeRecordValid(b []byte) bool {
	if b[0] != 'W' || b[1] != 'R' {
		return false
	}
	h := fnv.New64a()
	h.Write(b[:8])
	return binary.BigEndian.Uint64(b[8:]) == h.Sum64()
}

func (k *soak) newUID(rng *rand.Rand) uint64 {
	for {
		uid := rng.Uint64() | 1<<63
		k.mu.Lock()
		_, a := k.devices[uid]
		_, b := k.senders[uid]
		k.mu.Unlock()
		if !a && !b {
			return uid
		}
	}
}

// register records a new producer before it connects.
func (k *soak) register(dv *soakDevice) {
	dv.tDial = time.Now()
	if dv.ch.log != nil {
		dv.heard = dv.ch.log.newMemberCheck(dv.uid)
	}
	k.mu.Lock()
	k.devices[dv.uid] = dv
	k.mu.Unlock()
}

// producer is one producer connection: dial (and join), stream,
// half-close, wait for the server's close; or refused; or aborted
// mid-stream.
func (k *soak) producer(rng *rand.Rand) {
	ch := k.tcp[rng.IntN(len(k.tcp))]
	ip, listed := pickDeviceIP(rng)
	dv := &soakDevice{uid: k.newUID(rng), ch: ch, ip: ip, total: 16 + rng.Int64N(24<<10)}
	if rng.IntN(8) == 0 {
		dv.total = 16 + rng.Int64N(200<<10) // now and then a longer stream
	}
	k.register(dv)
	defer dv.finished.Store(true)

	var conn *net.TCPConn
	var err error
	if ch.isGroup() {
		conn, err = k.joinGroup(dv, rng)
	} else {
		conn, err = ch.kind.dial(k.s, ch.ch, ip, testkit.ReuseAddr())
		if err != nil && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)) {
			// The port is closed (no driver on it right now), or closed
			// while the connection waited in its backlog.
			k.nDevicesRefused.Add(1)
			time.Sleep(time.Duration(5+rng.IntN(20)) * time.Millisecond) // the device's own pace
			return
		}
	}
	if err != nil {
		k.violate("producer %s → %s: dial: %v", ip, ch, err)
		return
	}
	defer conn.Close()
	k.nDevices.Add(1)

	type readResult struct {
		at   time.Time
		err  error
		recv int
	}
	readDone := make(chan readResult, 1)
	go func() {
		buf := make([]byte, 32<<10)
		var pending []byte
		recv := 0
		for {
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			n, err := conn.Read(buf)
			recv += n
			switch {
			case dv.heard != nil:
				dv.heard.feed(buf[:n])
			case ch.kind.producersHear():
				// Unanchored group: the order of the others' bytes is not
				// recorded anywhere; what arrives is only drained.
			default:
				// A device receives what drivers WRITE, and nothing else.
				pending = append(pending, buf[:n]...)
				for len(pending) >= 16 {
					if !writeRecordValid(pending[:16]) {
						k.violate("device %s on %s: received bytes that no driver wrote: % x", ip, ch, pending[:16])
						pending = nil
						break
					}
					pending = pending[16:]
				}
			}
			if err != nil {
				readDone <- readResult{at: time.Now(), err: err, recv: recv}
				return
			}
		}
	}()

	abort := rng.IntN(12) == 0
	abortAt := rng.Int64N(dv.total)
	var writeErr error
	for dv.sent < dv.total && writeErr == nil {
		n := min(int64(1+rng.IntN(4096)), dv.total-dv.sent)
		if abort && dv.sent+n > abortAt {
			break
		}
		_ = conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
		var m int
		m, writeErr = conn.Write(soakStream(dv.uid, dv.sent, int(n)))
		dv.sent += int64(m)
		k.bytesSent.Add(int64(m))
		if rng.IntN(3) == 0 {
			time.Sleep(time.Duration(rng.IntN(8)) * time.Millisecond) // the producer's own pace
		}
	}
	if abort {
		dv.aborted = true
		k.nAbort.Add(1)
		return
	}
	tHalfClose := time.Now()
	if writeErr == nil {
		writeErr = conn.CloseWrite()
	}
	var res readResult
	select {
	case res = <-readDone:
	case <-time.After(20 * time.Second):
		k.violate("producer %s on %s: the server never closed it after its FIN (20 s)", ip, ch)
		return
	}
	dv.tEOF = res.at
	dv.clean = writeErr == nil && errors.Is(res.err, io.EOF) && res.at.After(tHalfClose)
	if !listed {
		k.nDevicesUnlisted.Add(1)
		if res.recv > 0 && !ch.isGroup() {
			k.violate("device from unlisted %s on %s received %d bytes", ip, ch, res.recv)
		}
	}
	// On an anchored channel nothing closes a producer but itself (a
	// group admits every IP; a dispatch anchor lists every listed one).
	if (listed || ch.isGroup()) && ch.anchored && !dv.clean {
		k.violate("producer %s on anchored %s (uid %x) did not finish cleanly: write %v, read %v after %d of %d bytes",
			ip, ch, dv.uid, writeErr, res.err, dv.sent, dv.total)
	}
}

// ---------------------------------------------------------------------------
// UDP senders.

type soakSender struct {
	uid     uint64
	port    int
	ip      string
	srcPort uint64
	sent    atomic.Int64 // datagrams sent, seq 0 .. sent-1
	done    atomic.Bool
}

func datagramFor(uid uint64, seq int64) []byte {
	n := 16 + int((uid^uint64(seq)*0x9e3779b97f4a7c15)%1184)
	b := make([]byte, n)
	binary.BigEndian.PutUint64(b[:8], uid)
	binary.BigEndian.PutUint64(b[8:16], uint64(seq))
	for i := 16; i < n; i++ {
		b[i] = byte(uint64(i)*31 + uid + uint64(seq))
	}
	return b
}

func (k *soak) udpSender(rng *rand.Rand) {
	port := k.udp[rng.IntN(len(k.udp))].udpPort
	ip, _ := pickDeviceIP(rng)
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		k.violate("udp sender on %s: %v", ip, err)
		return
	}
	defer conn.Close()
	snd := &soakSender{uid: k.newUID(rng), port: port, ip: ip, srcPort: uint64(conn.LocalAddr().(*net.UDPAddr).Port)}
	k.mu.Lock()
	k.senders[snd.uid] = snd
	k.mu.Unlock()
	defer snd.done.Store(true)
	go func() { // drain whatever drivers WRITE back
		buf := make([]byte, 2048)
		for {
			if _, _, err := conn.ReadFromUDP(buf); err != nil {
				return
			}
		}
	}()
	to := &net.UDPAddr{IP: net.ParseIP(testkit.Localhost), Port: port}
	count := 5 + rng.Int64N(40)
	for seq := range count {
		if _, err := conn.WriteToUDP(datagramFor(snd.uid, seq), to); err != nil {
			k.violate("udp sender %s → %d: %v", ip, port, err)
			return
		}
		snd.sent.Add(1)
		k.nDatagrams.Add(1)
		time.Sleep(time.Duration(1+rng.IntN(6)) * time.Millisecond) // the sender's own pace
	}
}

// ---------------------------------------------------------------------------
// Drivers.

type tcpKey struct {
	ip string
	id uint64
}

// keyState is what one driver heard of one TCP producer.
type keyState struct {
	opened, closed bool
	dev            *soakDevice
	start, next    int64
	heard          int64  // bytes heard; for an anchor, the offset in the stream
	pending        []byte // bytes before the producer is identified
}

type soakDriver struct {
	k      *soak
	ch     *soakChannel
	accept acceptSet
	anchor bool
	conn   net.Conn
	br     io.Reader
	rng    *rand.Rand

	tReg, tLeave time.Time
	expectClose  ws.StatusCode // 0: hung up, no close frame expected
	readerDone   chan struct{}
	gotClose     ws.StatusCode
	gotCloseOK   bool
	readErr      error

	mu      sync.Mutex
	keys    map[tcpKey]*keyState
	udpSeq  map[uint64]int64 // last seq per sender uid
	udpSeen map[uint64]int64 // datagrams per sender uid
	opened  []uint64         // OPENED ids in order (anchors check them)
}

// acceptSet mirrors the server's accept-list matching.
type acceptSet struct {
	addrs    []netip.Addr
	prefixes []netip.Prefix
}

func parseAcceptSet(s string) acceptSet {
	var a acceptSet
	for _, e := range strings.Split(s, ",") {
		if p, err := netip.ParsePrefix(e); err == nil {
			a.prefixes = append(a.prefixes, p)
		} else if ip, err := netip.ParseAddr(e); err == nil {
			a.addrs = append(a.addrs, ip)
		}
	}
	return a
}

func (a acceptSet) contains(ip netip.Addr) bool {
	if slices.Contains(a.addrs, ip) {
		return true
	}
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (k *soak) randomAccept(rng *rand.Rand) string {
	var parts []string
	for i := range soakListedIPs {
		if rng.IntN(3) == 0 {
			parts = append(parts, listedIP(i))
		}
	}
	switch rng.IntN(6) {
	case 0:
		parts = append(parts, "127.0.0.4/30")
	case 1:
		parts = append(parts, " "+listedIP(rng.IntN(soakListedIPs))+" ", "") // spaces and an empty entry
	}
	if len(parts) == 0 {
		parts = append(parts, listedIP(rng.IntN(soakListedIPs)))
	}
	return strings.Join(parts, ",")
}

// dialDriver attaches a session to c admitting accept ("" on a group:
// every member) and starts its reader.
func (k *soak) dialDriver(c *soakChannel, accept string, byHeader bool, rng *rand.Rand) (*soakDriver, error) {
	target := c.target(accept)
	header := http.Header{"X-Module-Id": {"soak"}}
	if byHeader {
		header.Set("Authorization", "Bearer "+k.s.Secret())
	} else {
		target += "&bearer_token=" + k.s.Secret()
	}
	session, err := testkit.DialDriver(k.t, k.s, target, header, testkit.ReuseAddr())
	if err != nil {
		return nil, err
	}
	if accept == "" {
		accept = "0.0.0.0/0,::/0"
	}
	d := &soakDriver{
		k: k, ch: c, accept: parseAcceptSet(strings.ReplaceAll(accept, " ", "")), conn: session.Conn, br: session.Reader, rng: rng,
		tReg: time.Now(), readerDone: make(chan struct{}),
		keys: map[tcpKey]*keyState{}, udpSeq: map[uint64]int64{}, udpSeen: map[uint64]int64{},
	}
	k.nDrivers.Add(1)
	k.mu.Lock()
	k.drivers = append(k.drivers, d)
	k.mu.Unlock()
	go d.read()
	return d, nil
}

func (d *soakDriver) where() string {
	role := "driver"
	if d.anchor {
		role = "anchor"
	}
	return fmt.Sprintf("%s on %s (accept %v %v)", role, d.ch, d.accept.addrs, d.accept.prefixes)
}

// read consumes frames until the close frame or the end of the connection.
func (d *soakDriver) read() {
	defer close(d.readerDone)
	for {
		_ = d.conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
		h, err := ws.ReadHeader(d.br)
		if err != nil {
			d.readErr = err
			return
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(d.br, payload); err != nil {
			d.readErr = err
			return
		}
		switch h.OpCode {
		case ws.OpClose:
			d.gotCloseOK = true
			d.gotClose = ws.StatusNoStatusRcvd
			if len(payload) >= 2 {
				d.gotClose = ws.StatusCode(binary.BigEndian.Uint16(payload))
			}
			return
		case ws.OpBinary:
			if !h.Fin {
				d.k.violate("%s: fragmented message from the server", d.where())
			}
			m, err := codec.ParseMessage(payload)
			if err != nil {
				d.k.violate("%s: undecodable message % x", d.where(), payload)
				continue
			}
			d.handle(m)
		default:
			d.k.violate("%s: unexpected %v frame", d.where(), h.OpCode)
		}
	}
}

func (d *soakDriver) handle(m codec.Message) {
	k := d.k
	ip, err := netip.ParseAddr(string(m.IP))
	if err != nil || !d.accept.contains(ip) {
		k.violate("%s: heard %s, which it does not accept", d.where(), testkit.DescribeMessage(m))
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch.udp() {
		d.handleDatagram(m)
		return
	}
	key := tcpKey{string(m.IP), m.ID}
	st := d.keys[key]
	switch m.Type {
	case codec.Opened:
		if st != nil {
			k.violate("%s: OPENED for %s id %d after other messages for it", d.where(), m.IP, m.ID)
			return
		}
		d.keys[key] = &keyState{opened: true}
		d.opened = append(d.opened, m.ID)
	case codec.Received:
		st = d.state(key)
		if st.closed {
			k.violate("%s: RECEIVED for %s id %d after its CLOSED", d.where(), m.IP, m.ID)
			return
		}
		off := st.heard
		st.heard += int64(len(m.Data))
		d.feed(st, key, m.Data)
		if d.anchor && d.ch.log != nil {
			d.ch.log.received(key, st, off, m.Data)
		}
		return
	case codec.Closed:
		st = d.state(key)
		if st.closed {
			k.violate("%s: second CLOSED for %s id %d", d.where(), m.IP, m.ID)
		}
		st.closed = true
	default:
		k.violate("%s: unexpected %s", d.where(), testkit.DescribeMessage(m))
		return
	}
	if d.anchor && d.ch.log != nil {
		d.ch.log.event(m.Type, key)
	}
}

// state is what the driver heard of key so far, created on first use (a
// driver that attached after the producer hears no OPENED on a dispatch port).
func (d *soakDriver) state(key tcpKey) *keyState {
	st := d.keys[key]
	if st == nil {
		st = &keyState{}
		d.keys[key] = st
	}
	return st
}

// feed checks a stretch of a TCP producer's bytes, identifying it first.
func (d *soakDriver) feed(st *keyState, key tcpKey, data []byte) {
	k := d.k
	if st.dev == nil {
		st.pending = append(st.pending, data...)
		// A driver that attached after the producer connected joins its
		// stream midway. On a dispatch port it gets no OPENED for it; on a
		// group it gets OPENED all the same, so there an OPENED stream
		// starts at 0 only if the producer connected after the driver.
		identified := false
		if st.opened {
			if len(st.pending) < 8 {
				return
			}
			dev := k.device(binary.BigEndian.Uint64(st.pending))
			switch {
			case dev != nil && dev.ip == key.ip && dev.ch == d.ch && bytes.Equal(st.pending, soakStream(dev.uid, 0, len(st.pending))):
				st.dev, st.start, identified = dev, 0, true
			case !d.ch.kind.announcesPresent():
				k.violate("%s: the stream of %s id %d starts with % x, not a device of this port and IP", d.where(), key.ip, key.id, st.pending[:8])
				st.pending = nil
				st.dev = &soakDevice{} // stop checking this producer
				return
			}
		}
		if !identified {
			// Joined mid-stream: find the record boundary.
			if len(st.pending) < 32 {
				return
			}
			for o := range 16 {
				dev := k.device(binary.BigEndian.Uint64(st.pending[o:]))
				if dev == nil || dev.ip != key.ip || dev.ch != d.ch {
					continue
				}
				start := int64(binary.BigEndian.Uint64(st.pending[o+8:]))*16 - int64(o)
				if start >= 0 && bytes.Equal(st.pending, soakStream(dev.uid, start, len(st.pending))) {
					st.dev, st.start = dev, start
					break
				}
			}
			if st.dev == nil {
				k.violate("%s: %d bytes from %s id %d match no producer's stream at any offset", d.where(), len(st.pending), key.ip, key.id)
				st.pending = nil
				st.dev = &soakDevice{}
				return
			}
			if st.opened && st.dev.tDial.After(d.tReg) {
				k.violate("%s: %s id %d connected after the driver attached, yet its stream started at %d, not 0",
					d.where(), key.ip, key.id, st.start)
			}
		}
		st.next = st.start
		data, st.pending = st.pending, nil
	}
	if st.dev.uid == 0 {
		return // already reported
	}
	if st.next+int64(len(data)) > st.dev.total {
		k.violate("%s: %s id %d: bytes past the end of the producer's %d-byte stream", d.where(), key.ip, key.id, st.dev.total)
		st.dev = &soakDevice{}
		return
	}
	if !bytes.Equal(data, soakStream(st.dev.uid, st.next, len(data))) {
		k.violate("%s: %s id %d: %d bytes at offset %d are not the producer's (a gap, a repeat or corruption)",
			d.where(), key.ip, key.id, len(data), st.next)
		st.dev = &soakDevice{}
		return
	}
	st.next += int64(len(data))
	k.bytesChecked.Add(int64(len(data)))
}

func (k *soak) device(uid uint64) *soakDevice {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.devices[uid]
}

func (d *soakDriver) handleDatagram(m codec.Message) {
	k := d.k
	if m.Type != codec.Received || len(m.Data) < 16 {
		k.violate("%s: unexpected %s", d.where(), testkit.DescribeMessage(m))
		return
	}
	uid := binary.BigEndian.Uint64(m.Data)
	seq := int64(binary.BigEndian.Uint64(m.Data[8:]))
	k.mu.Lock()
	snd := k.senders[uid]
	k.mu.Unlock()
	switch {
	case snd == nil || snd.port != d.ch.udpPort:
		k.violate("%s: datagram from no sender of this port: %s", d.where(), testkit.DescribeMessage(m))
	case snd.ip != string(m.IP) || snd.srcPort != m.ID:
		k.violate("%s: datagram of sender %s:%d arrived as %s:%d", d.where(), snd.ip, snd.srcPort, m.IP, m.ID)
	case !bytes.Equal(m.Data, datagramFor(uid, seq)):
		k.violate("%s: datagram %d of %s:%d damaged (%d bytes)", d.where(), seq, snd.ip, snd.srcPort, len(m.Data))
	default:
		if last, ok := d.udpSeq[uid]; ok && seq <= last {
			k.violate("%s: datagram %d of %s:%d after %d (out of order or repeated)", d.where(), seq, snd.ip, snd.srcPort, last)
		}
		d.udpSeq[uid] = seq
		d.udpSeen[uid]++
		k.dgramsChecked.Add(1)
	}
}

// finish waits for the reader and checks the session ended as expected.
func (d *soakDriver) finish(within time.Duration) {
	select {
	case <-d.readerDone:
	case <-time.After(within):
		d.k.violate("%s: no close frame within %v of leaving (expected %d)", d.where(), within, d.expectClose)
		d.conn.Close()
		<-d.readerDone
	}
	d.conn.Close()
	switch {
	case d.expectClose == 0:
	case !d.gotCloseOK:
		d.k.violate("%s: connection ended without a close frame (%v), want close %d", d.where(), d.readErr, d.expectClose)
	case d.gotClose != d.expectClose:
		d.k.violate("%s: close code %d, want %d", d.where(), d.gotClose, d.expectClose)
	}
}

// hostileLeaves are the ways a churn driver ends its session badly, and the
// close code each must get.
var hostileLeaves = []struct {
	name  string
	bytes func() []byte
	code  ws.StatusCode
}{
	{"malformed message", func() []byte { return testkit.RawClientFrame(true, 0, ws.OpBinary, true, []byte{3, '1', '2', '7'}) }, ws.StatusInvalidFramePayloadData},
	{"unknown message type", func() []byte {
		return testkit.RawClientFrame(true, 0, ws.OpBinary, true, codec.AppendMessage(nil, 9, []byte(testkit.Localhost), 0, nil))
	}, ws.StatusInvalidFramePayloadData},
	{"oversized frame", func() []byte { return testkit.RawFrameHeader(true, ws.OpBinary, 1<<40) }, ws.StatusMessageTooBig},
	{"oversized message", func() []byte { return testkit.RawFrameHeader(true, ws.OpBinary, soakMaxMessage+1) }, ws.StatusMessageTooBig},
	{"unmasked frame", func() []byte { return testkit.RawClientFrame(true, 0, ws.OpBinary, false, []byte{4}) }, ws.StatusProtocolError},
	{"reserved bits", func() []byte { return testkit.RawClientFrame(true, 2, ws.OpBinary, true, []byte{4}) }, ws.StatusProtocolError},
	{"reserved opcode", func() []byte { return testkit.RawClientFrame(true, 0, 0x5, true, nil) }, ws.StatusProtocolError},
	{"bad UTF-8 close reason", func() []byte {
		return testkit.RawClientFrame(true, 0, ws.OpClose, true, []byte{0x03, 0xe8, 0xc3, 0x28})
	}, ws.StatusInvalidFramePayloadData},
	{"one-byte close", func() []byte { return testkit.RawClientFrame(true, 0, ws.OpClose, true, []byte{1}) }, ws.StatusProtocolError},
}

// churnDriver is one session: attach, live a while writing to and closing
// producers it heard of, then leave politely, hang up, or misbehave.
func (k *soak) churnDriver(rng *rand.Rand) {
	channels := k.tcp
	if len(k.udp) > 0 && rng.IntN(2) == 0 {
		channels = k.udp
	}
	c := channels[rng.IntN(len(channels))]
	d, err := k.dialDriver(c, k.randomAccept(rng), rng.IntN(2) == 0, rng)
	if err != nil {
		var status ws.StatusError
		if errors.As(err, &status) && int(status) == http.StatusConflict && !c.isGroup() {
			k.nConflicts.Add(1) // another process holds the port while it is closed
			time.Sleep(50 * time.Millisecond)
			return
		}
		k.violate("driver on %s: dial: %v", c, err)
		return
	}
	life := time.Duration(50+rng.IntN(1500)) * time.Millisecond
	until := time.Now().Add(life)
	for time.Now().Before(until) {
		time.Sleep(time.Duration(20+rng.IntN(150)) * time.Millisecond) // the driver's own pace
		var msg []byte
		switch {
		case !c.udp():
			key, ok := d.someClient(rng)
			switch {
			case ok && !c.anchored && rng.IntN(10) == 0:
				msg = codec.AppendMessage(nil, codec.Close, []byte(key.ip), key.id, nil)
				k.nCloses.Add(1)
			case ok:
				var payload []byte
				for range 1 + rng.IntN(8) {
					payload = append(payload, writeRecord(rng)...)
				}
				msg = codec.AppendMessage(nil, codec.Write, []byte(key.ip), key.id, payload)
				k.nWrites.Add(1)
			default:
				msg = codec.AppendMessage(nil, codec.Write, []byte(testkit.Localhost), 1<<40, []byte("nobody")) // unknown: a no-op
			}
		default:
			if ip, p, ok := d.someSender(rng); ok && rng.IntN(6) != 0 {
				msg = codec.AppendMessage(nil, codec.Write, []byte(ip), p, []byte("udp reply"))
				k.nWrites.Add(1)
			} else {
				msg = codec.AppendMessage(nil, codec.Write, []byte("not-an-ip"), 70000, []byte("ignored"))
			}
		}
		_ = d.conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
		if err := wsutil.WriteClientBinary(d.conn, msg); err != nil {
			k.violate("%s: writing: %v", d.where(), err)
			break
		}
	}

	d.tLeave = time.Now()
	_ = d.conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
	switch r := rng.IntN(100); {
	case r < 55:
		d.expectClose = ws.StatusNormalClosure
		_ = wsutil.WriteClientMessage(d.conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye"))
	case r < 70:
		k.nDrops.Add(1)
		d.conn.Close()
	default:
		h := hostileLeaves[rng.IntN(len(hostileLeaves))]
		k.nHostileDrivers.Add(1)
		d.expectClose = h.code
		_, _ = d.conn.Write(h.bytes())
	}
	d.finish(10 * time.Second)
}

func (d *soakDriver) someClient(rng *rand.Rand) (tcpKey, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var open []tcpKey
	for key, st := range d.keys {
		if !st.closed {
			open = append(open, key)
		}
	}
	if len(open) == 0 {
		return tcpKey{}, false
	}
	return open[rng.IntN(len(open))], true
}

func (d *soakDriver) someSender(rng *rand.Rand) (string, uint64, bool) {
	d.mu.Lock()
	uids := make([]uint64, 0, len(d.udpSeen))
	for uid := range d.udpSeen {
		uids = append(uids, uid)
	}
	d.mu.Unlock()
	if len(uids) == 0 {
		return "", 0, false
	}
	d.k.mu.Lock()
	snd := d.k.senders[uids[rng.IntN(len(uids))]]
	d.k.mu.Unlock()
	return snd.ip, snd.srcPort, true
}

// ---------------------------------------------------------------------------
// Hostile HTTP clients.

func (k *soak) hostileHTTP(rng *rand.Rand) {
	k.nHostileHTTP.Add(1)
	conn, err := testkit.Dial("", k.s.HTTPAddr(), testkit.ReuseAddr())
	if err != nil {
		k.violate("hostile HTTP: dial: %v", err)
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	junk := make([]byte, 1+rng.IntN(200))
	for i := range junk {
		junk[i] = byte(rng.IntN(256))
	}
	var send string
	want := 0 // 0: closed without an answer is fine too
	switch rng.IntN(6) {
	case 0:
		send, want = "\x16\x03\x01"+string(junk)+"\n", 400
	case 1:
		send, want = "GET "+testkit.BasePath+" HTTP/1.1\r\nX-Pad: "+strings.Repeat("x", 9000)+"\r\n\r\n", 431
	case 2:
		send = "GET " + testkit.BasePath + "/healthz HTTP/1.1\r\nHost: partial\r\n" // never finished: the deadline closes it
	case 3:
		send = strings.ReplaceAll(string(junk), "\n", "") // no line at all
	case 4:
		send, want = "GET "+testkit.BasePath+"/tcp_dispatch?port=1&accept=127.0.0.1 HTTP/1.1\r\nAuthorization: Bearer wrong\r\nUpgrade: websocket\r\n\r\n", 401
	case 5:
		send, want = "BREW /coffee HTTP/1.1\r\n\r\n", 404
	}
	if _, err := io.WriteString(conn, send); err != nil {
		return // closed already: fine
	}
	got, err := io.ReadAll(conn)
	if err != nil && !testkit.IsConnGone(err) {
		k.violate("hostile HTTP (%q…): not closed: %v", testkit.Abbreviate([]byte(send)), err)
		return
	}
	if want != 0 && !bytes.HasPrefix(got, fmt.Appendf(nil, "HTTP/1.1 %d ", want)) {
		k.violate("hostile HTTP (%q…): answered %q, want %d", testkit.Abbreviate([]byte(send)), testkit.Abbreviate(got), want)
	}
}

// ---------------------------------------------------------------------------
// The final checks.

// awaitUDPAnchors waits until every UDP anchor has heard every datagram a
// listed sender sent to its port, or explains the loss.
func (k *soak) awaitUDPAnchors(anchors []*soakDriver) {
	k.mu.Lock()
	senders := make([]*soakSender, 0, len(k.senders))
	for _, snd := range k.senders {
		senders = append(senders, snd)
	}
	k.mu.Unlock()
	for _, a := range anchors {
		if !a.ch.udp() {
			continue
		}
		missing := func() (n int64, from *soakSender) {
			a.mu.Lock()
			defer a.mu.Unlock()
			for _, snd := range senders {
				ip, _ := netip.ParseAddr(snd.ip)
				if snd.port != a.ch.udpPort || !a.accept.contains(ip) {
					continue
				}
				if m := snd.sent.Load() - a.udpSeen[snd.uid]; m > 0 {
					n += m
					from = snd
				}
			}
			return n, from
		}
		if testkit.Poll(testkit.EventTimeout, func() bool { n, _ := missing(); return n == 0 }) {
			continue
		}
		n, snd := missing()
		if drops := udpSocketDrops(a.ch.udpPort); drops > 0 {
			k.t.Logf("anchor on %s: %d datagrams missing; the kernel dropped %d on the server's socket (not the server's doing)", a.ch, n, drops)
			continue
		}
		k.violate("anchor on %s: %d datagrams never delivered (e.g. from %s:%d, sent %d); no socket drops to explain it",
			a.ch, n, snd.ip, snd.srcPort, snd.sent.Load())
	}
}

// udpSocketDrops reads the drop counter of the UDP socket bound to port.
func udpSocketDrops(port int) int64 {
	b, err := os.ReadFile("/proc/net/udp")
	if err != nil {
		return 0
	}
	want := fmt.Sprintf(":%04X", port)
	var total int64
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 13 && strings.HasSuffix(f[1], want) {
			n, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
			total += n
		}
	}
	return total
}

func (k *soak) verify(metrics string) {
	t := k.t
	k.mu.Lock()
	drivers := slices.Clone(k.drivers)
	devices := make([]*soakDevice, 0, len(k.devices))
	for _, dv := range k.devices {
		devices = append(devices, dv)
	}
	k.mu.Unlock()

	checkedStreams, fullLifetime := 0, 0
	for _, d := range drivers {
		d.mu.Lock()
		// A CLOSED stream of a producer that finished cleanly ends at its end.
		for key, st := range d.keys {
			if st.dev == nil || st.dev.uid == 0 {
				continue
			}
			checkedStreams++
			if st.closed && st.dev.finished.Load() && st.dev.clean && d.ch.anchored && st.next != st.dev.total {
				k.violate("%s: %s id %d closed after %d of the producer's %d bytes (from offset %d)",
					d.where(), key.ip, key.id, st.next, st.dev.total, st.start)
			}
		}
		// Anchors hear every admitted producer: on a dispatch port ids 0,
		// 1, 2… in order (refused peers consume no id, ids never repeat);
		// on a group ids that grow (unique per server).
		if d.anchor && !d.ch.udp() {
			ids := &channel{}
			for i, id := range d.opened {
				if err := d.ch.kind.checkID(ids, id); err != nil {
					k.violate("%s: OPENED ids %v…: %v", d.where(), d.opened[:min(len(d.opened), i+3)], err)
					break
				}
			}
		}
		d.mu.Unlock()
	}
	// Every driver attached before a producer connected and still attached
	// after its close heard all of it, OPENED to CLOSED (anchored channels:
	// there the server never cuts a producer short). Producers are indexed
	// per channel by dial time, so each driver only looks at those dialled
	// in its lifetime.
	byChannel := map[*soakChannel][]*soakDevice{}
	for _, dv := range devices {
		if dv.finished.Load() && dv.clean && dv.ch.anchored {
			byChannel[dv.ch] = append(byChannel[dv.ch], dv)
		}
	}
	for _, list := range byChannel {
		slices.SortFunc(list, func(a, b *soakDevice) int { return a.tDial.Compare(b.tDial) })
	}
	for _, d := range drivers {
		list := byChannel[d.ch]
		if d.ch.udp() || d.expectClose == 0 || !d.gotCloseOK || len(list) == 0 {
			continue
		}
		d.mu.Lock()
		heard := make(map[*soakDevice]*keyState, len(d.keys))
		for _, st := range d.keys {
			if st.dev != nil {
				heard[st.dev] = st
			}
		}
		d.mu.Unlock()
		i, _ := slices.BinarySearchFunc(list, d.tReg, func(dv *soakDevice, t time.Time) int { return dv.tDial.Compare(t) })
		for ; i < len(list) && list[i].tDial.Before(d.tLeave); i++ {
			dv := list[i]
			ip, _ := netip.ParseAddr(dv.ip)
			if !d.tReg.Before(dv.tDial) || !d.tLeave.After(dv.tEOF) || !d.accept.contains(ip) {
				continue
			}
			fullLifetime++
			switch found := heard[dv]; {
			case found == nil:
				k.violate("%s heard nothing of producer %s (uid %x, %d bytes), which lived entirely within its session", d.where(), dv.ip, dv.uid, dv.total)
			case !found.opened || !found.closed || found.start != 0 || found.next != dv.total:
				k.violate("%s heard producer %s (uid %x) incompletely: OPENED %v, CLOSED %v, bytes %d–%d of %d",
					d.where(), dv.ip, dv.uid, found.opened, found.closed, found.start, found.next, dv.total)
			}
		}
	}
	t.Logf("checked %d producer streams; %d (driver, producer) pairs where the driver outlived the producer got the whole stream", checkedStreams, fullLifetime)
	if fullLifetime == 0 {
		t.Errorf("no driver outlived a producer: the soak proved nothing about complete delivery")
	}
	if k.kind.producersHear() {
		k.verifyMembers(devices, metrics)
	}

	k.vmu.Lock()
	defer k.vmu.Unlock()
	if k.nViolation > 0 {
		t.Errorf("%d violations; the first %d:\n  %s", k.nViolation, len(k.violations), strings.Join(k.violations, "\n  "))
	}
	testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_parse_errors_total", "kind", "websocket_protocol")
}

// ---------------------------------------------------------------------------
// 7. SIGTERM under load.

func TestShutdownUnderLoadSends1001ToEveryDriverAndExits0(t *testing.T) {
	forEachKind(t, func(t *testing.T, k channelKind) {
		for _, c := range []struct {
			name   string
			rcvbuf int // 0: the kernel's default
		}{
			{"drivers keeping up", 0},
			{"drivers with data in flight", 8 << 10},
		} {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				shutdownUnderLoad(t, k, c.rcvbuf)
			})
		}
	})
}

func shutdownUnderLoad(t *testing.T, k channelKind, rcvbuf int) {
	const (
		channels           = 2
		driversPerChannel  = 3
		producerPerChannel = 3
		perProducer        = 4 << 20 // 12 MiB per channel: under the 16 MiB bound, so nobody is cut as slow
		startAfterBytes    = 512 << 10
		shutdownDeadline   = testkit.ShutdownTimeout
	)
	s := startRobustServer(t, k, "LOG_LEVEL=info")
	type reader struct {
		d        *testkit.Driver
		bytes    atomic.Int64
		code     ws.StatusCode
		gotClose bool
		err      error
		done     chan struct{}
	}
	var opts []testkit.DialOption
	if rcvbuf > 0 {
		opts = append(opts, testkit.ReceiveBuffer(rcvbuf))
	}
	var readers []*reader
	var producers []*net.TCPConn
	bc := testkit.NewBroadcaster()
	for range channels {
		first, ch := k.open(t, s, testkit.Localhost, opts...)
		readers = append(readers, &reader{d: first, done: make(chan struct{})})
		for range driversPerChannel - 1 {
			d, err := testkit.DialDriver(t, s, k.target(ch, testkit.Localhost), testkit.DriverHeader(s), opts...)
			if err != nil {
				t.Fatal(err)
			}
			readers = append(readers, &reader{d: d, done: make(chan struct{})})
		}
		for range producerPerChannel {
			c := connect(t, s, k, ch, testkit.Localhost)
			if k.producersHear() {
				go func() { _, _ = io.Copy(io.Discard, c) }() // what the other members send
			}
			producers = append(producers, c)
		}
	}
	for _, r := range readers {
		go func() {
			defer close(r.done)
			defer bc.Notify()
			code, _, err := r.d.ReadToClose(30*time.Second, func(n int64) { r.bytes.Add(n); bc.Notify() })
			r.code, r.gotClose, r.err = code, err == nil, err
		}()
	}
	// Producers stream as fast as they can.
	for i, c := range producers {
		go func() {
			for off := int64(0); off < perProducer; off += 64 << 10 {
				_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
				if _, err := c.Write(testkit.StreamPattern(i, off, 64<<10)); err != nil {
					return // the server closed us: shutting down
				}
			}
		}()
	}
	if !bc.WaitUntil(30*time.Second, func() bool {
		for _, r := range readers {
			if r.bytes.Load() < startAfterBytes {
				select {
				case <-r.done:
					return true // ended early: reported below
				default:
				}
				return false
			}
		}
		return true
	}) {
		t.Fatal("drivers never got going")
	}
	for _, r := range readers {
		select {
		case <-r.done:
			t.Fatalf("a driver's session ended before the shutdown: code %d, %v", r.code, r.err)
		default:
		}
	}

	sigterm := time.Now()
	if err := s.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Exited():
	case <-time.After(shutdownDeadline):
		t.Fatalf("still running %v after SIGTERM", shutdownDeadline)
	}
	took := time.Since(sigterm)
	if code := s.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	missing := 0
	for i, r := range readers {
		select {
		case <-r.done:
		case <-time.After(testkit.EventTimeout):
			t.Fatalf("driver %d: still reading %v after the server exited", i, testkit.EventTimeout)
		}
		if !r.gotClose {
			missing++
			t.Errorf("driver %d: %d bytes of data, then %v: no close frame 1001", i, r.bytes.Load(), r.err)
		} else if r.code != ws.StatusGoingAway {
			t.Errorf("driver %d: close code %d, want 1001", i, r.code)
		}
	}
	t.Logf("exited %v after SIGTERM; %d of %d drivers got close 1001", took.Round(time.Millisecond), len(readers)-missing, len(readers))
}
