package main

// The socket-group side of the churn soak (soak_test.go): members that join
// in every way a member may, residents that stay all along, hostile joiners,
// members that never read, and the check that every member of an anchored
// group receives exactly what the others sent, in the order the anchor
// heard it.

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// groupLog is what the anchor of a group heard, in order. The server
// handles a group's events one at a time, on one loop, and queues each
// for the members and the drivers together; so a member must receive the
// RECEIVED payloads of the other members exactly in this order, from its
// own OPENED to its own CLOSED, with whatever drivers WRITE to it between
// them.
type groupLog struct {
	mu       sync.Mutex
	entries  []logEntry
	openedAt map[tcpKey]int    // index of each member's OPENED
	keyOf    map[uint64]tcpKey // members by the uid their stream starts with
}

type logEntry struct {
	typ codec.MsgType
	key tcpKey
	// RECEIVED: n bytes of the member's stream from off; raw holds them
	// while the member is not yet identified by its stream.
	uid uint64
	off int64
	n   int
	raw []byte
}

func (e *logEntry) data() []byte {
	if e.raw != nil {
		return e.raw
	}
	return soakStream(e.uid, e.off, e.n)
}

func newGroupLog() *groupLog {
	return &groupLog{openedAt: map[tcpKey]int{}, keyOf: map[uint64]tcpKey{}}
}

// event records an OPENED or CLOSED the anchor heard.
func (l *groupLog) event(typ codec.MsgType, key tcpKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if typ == codec.Opened {
		l.openedAt[key] = len(l.entries)
	}
	l.entries = append(l.entries, logEntry{typ: typ, key: key})
}

// received records a RECEIVED the anchor heard, at offset off of the
// member's stream (an anchor hears every member from its start), once the
// anchor's own check (feed) has seen it.
func (l *groupLog) received(key tcpKey, st *keyState, off int64, data []byte) {
	e := logEntry{typ: codec.Received, key: key, off: off, n: len(data)}
	if st.dev != nil && st.dev.uid != 0 {
		e.uid = st.dev.uid
	} else {
		e.raw = bytes.Clone(data)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, e)
	if e.uid != 0 {
		l.keyOf[e.uid] = key
	}
}

// memberCheck follows one member's received bytes through its group's log.
type memberCheck struct {
	log     *groupLog
	uid     uint64
	key     tcpKey
	started bool   // the anchor has identified the member: key is known
	pos     int    // the log entry the next bytes belong to
	part    int    // bytes of that entry already matched
	pending []byte // received, not matched yet
	ended   bool   // reached the member's own CLOSED
	problem string // the first mismatch, after which checking stops
	matched int64  // bytes of other members matched
	records int    // WRITE records received
}

func (l *groupLog) newMemberCheck(uid uint64) *memberCheck {
	return &memberCheck{log: l, uid: uid}
}

// feed takes bytes the member received and matches what the log allows.
func (m *memberCheck) feed(data []byte) {
	m.log.mu.Lock()
	defer m.log.mu.Unlock()
	m.pending = append(m.pending, data...)
	m.advance(false)
}

// isRecordPrefix reports whether b can be the start of a WRITE record.
func isRecordPrefix(b []byte) bool {
	return len(b) < 16 && (len(b) < 1 || b[0] == 'W') && (len(b) < 2 || b[1] == 'R')
}

// skip moves pos past the entries that carry nothing for the member:
// OPENED and CLOSED of others, and its own bytes, which are not echoed.
func (m *memberCheck) skip() {
	for m.part == 0 && m.pos < len(m.log.entries) {
		e := &m.log.entries[m.pos]
		if e.key == m.key && e.typ == codec.Closed {
			m.ended = true
			return
		}
		if e.typ == codec.Received && e.key != m.key {
			return
		}
		m.pos++
	}
}

// advance matches pending bytes against the log, with log.mu held. final
// says the member's connection has ended and the log is complete: what
// is left may be the start of a unit cut short, and no more will come.
func (m *memberCheck) advance(final bool) {
	if m.problem != "" {
		m.pending = nil
		return
	}
	if !m.started {
		key, ok := m.log.keyOf[m.uid]
		if !ok {
			return
		}
		m.key, m.pos, m.started = key, m.log.openedAt[key]+1, true
	}
	for len(m.pending) > 0 {
		// A WRITE record, whole, may arrive between two other units.
		if m.part == 0 && len(m.pending) >= 16 && writeRecordValid(m.pending[:16]) {
			m.pending = m.pending[16:]
			m.records++
			continue
		}
		m.skip()
		if m.ended || m.pos == len(m.log.entries) {
			// Past the member's own CLOSED, or past what the anchor has
			// heard so far: only a WRITE record can come, and a cut one
			// only at the very end.
			switch {
			case isRecordPrefix(m.pending) && !final:
				return // the rest of a record, or the anchor catching up
			case isRecordPrefix(m.pending):
				m.pending = nil
			case !m.ended && !final:
				return // the anchor has not heard it yet
			default:
				m.problem = fmt.Sprintf("%d bytes (% x…) it received are no other member's and no WRITE record (log entry %d of %d, own CLOSED reached %v)",
					len(m.pending), m.pending[:min(len(m.pending), 16)], m.pos, len(m.log.entries), m.ended)
				m.pending = nil
			}
			return
		}
		e := &m.log.entries[m.pos]
		want := e.data()[m.part:]
		n := min(len(want), len(m.pending))
		if m.part == 0 && n < min(len(want), 16) && !final {
			return // too few bytes yet to tell another member's bytes from a WRITE record
		}
		if !bytes.Equal(want[:n], m.pending[:n]) {
			if m.part == 0 && isRecordPrefix(m.pending) && (final || len(m.pending) < 16) {
				if final {
					m.pending = nil // a record cut short by the end
				}
				return
			}
			m.problem = fmt.Sprintf("at log entry %d (%s id %d, %d bytes from offset %d), byte %d: received % x…, the anchor heard % x…",
				m.pos, e.key.ip, e.key.id, e.n, e.off, m.part, m.pending[:min(n, 16)], want[:min(n, 16)])
			m.pending = nil
			return
		}
		m.pending = m.pending[n:]
		m.part += n
		m.matched += int64(n)
		if m.part == e.n {
			m.pos++
			m.part = 0
		}
	}
}

// caughtUp reports whether the member has received everything the anchor
// heard from the others so far.
func (m *memberCheck) caughtUp() bool {
	m.log.mu.Lock()
	defer m.log.mu.Unlock()
	m.advance(false)
	if !m.started || m.problem != "" {
		return m.problem != ""
	}
	m.skip()
	return len(m.pending) == 0 && m.part == 0 && (m.ended || m.pos == len(m.log.entries))
}

// finish matches what is left once the member's connection has ended and
// the log is complete, and returns the problem, if any.
func (m *memberCheck) finish() string {
	m.log.mu.Lock()
	defer m.log.mu.Unlock()
	m.advance(true)
	if !m.started && len(m.pending) > 0 {
		return "" // it never sent enough to be told apart: nothing to check against
	}
	return m.problem
}

// ---------------------------------------------------------------------------
// Members.

// joinGroup connects a producer to its group and joins it in one of the
// ways the protocol allows: the line alone, the line and the first records
// in one write, or the line in pieces at the member's own pace.
func (k *soak) joinGroup(dv *soakDevice, rng *rand.Rand) (*net.TCPConn, error) {
	conn, err := testkit.TryDialMember(k.s, dv.ip, testkit.ReuseAddr())
	if err != nil {
		return nil, err
	}
	line := testkit.JoinLine(dv.ch.ch.group)
	var pieces [][]byte
	switch rng.IntN(4) {
	case 0:
		cut := 1 + rng.IntN(len(line)-1)
		pieces = [][]byte{line[:cut], line[cut:]}
	case 1:
		first := min(dv.total, 16+rng.Int64N(64))
		pieces = [][]byte{append(line, soakStream(dv.uid, 0, int(first))...)}
		dv.sent = first
		k.bytesSent.Add(first)
	default:
		pieces = [][]byte{line}
	}
	for i, p := range pieces {
		if i > 0 {
			time.Sleep(time.Duration(rng.IntN(4)) * time.Millisecond) // the member's own pace, far inside the join deadline
		}
		_ = conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
		if _, err := conn.Write(p); err != nil {
			conn.Close()
			return nil, err
		}
	}
	return conn, nil
}

// resident is a member of an anchored group that stays all along, sends
// now and then and must receive everything the others send.
type resident struct {
	k        *soak
	dv       *soakDevice
	conn     *net.TCPConn
	sendDone chan struct{}
	readDone chan error
}

func (k *soak) startResident(c *soakChannel, rng *rand.Rand) *resident {
	t := k.t
	dv := &soakDevice{uid: k.newUID(rng), ch: c, ip: listedIP(rng.IntN(soakListedIPs)), total: 1 << 40}
	k.register(dv)
	conn, err := k.joinGroup(dv, rng)
	if err != nil {
		t.Fatalf("resident of %s: %v", c, err)
	}
	t.Cleanup(func() { conn.Close() })
	r := &resident{k: k, dv: dv, conn: conn, sendDone: make(chan struct{}), readDone: make(chan error, 1)}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
			n, err := conn.Read(buf)
			dv.heard.feed(buf[:n])
			if err != nil {
				r.readDone <- err
				return
			}
		}
	}()
	go func() {
		defer close(r.sendDone)
		for time.Now().Before(k.deadline) {
			time.Sleep(time.Duration(50+rng.IntN(200)) * time.Millisecond) // the resident's own pace
			n := 1 + rng.IntN(2048)
			_ = conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
			m, err := conn.Write(soakStream(dv.uid, dv.sent, n))
			dv.sent += int64(m)
			k.bytesSent.Add(int64(m))
			if err != nil {
				k.violate("resident %s of %s: writing: %v", dv.ip, c, err)
				return
			}
		}
	}()
	return r
}

// awaitResidents waits until every resident has received everything its
// anchor heard from the others.
func (k *soak) awaitResidents(residents []*resident) {
	for _, r := range residents {
		<-r.sendDone
	}
	for _, r := range residents {
		if !testkit.Poll(testkit.EventTimeout, r.dv.heard.caughtUp) {
			m := r.dv.heard
			m.log.mu.Lock()
			k.violate("resident %s of %s (uid %x) never caught up: at log entry %d of %d, %d bytes unmatched, %d matched",
				r.dv.ip, r.dv.ch, r.dv.uid, m.pos, len(m.log.entries), len(m.pending), m.matched)
			m.log.mu.Unlock()
		}
	}
}

// leave half-closes the resident's connection and waits for the server's close.
func (r *resident) leave() {
	if err := r.conn.CloseWrite(); err != nil {
		r.k.violate("resident %s of %s: %v", r.dv.ip, r.dv.ch, err)
	}
	select {
	case err := <-r.readDone:
		if err != io.EOF {
			r.k.violate("resident %s of %s: %v instead of the server's end of file", r.dv.ip, r.dv.ch, err)
		}
	case <-time.After(testkit.EventTimeout):
		r.k.violate("resident %s of %s: the server never closed it after its FIN", r.dv.ip, r.dv.ch)
	}
	r.conn.Close()
	r.dv.finished.Store(true)
}

// hostileJoiner connects to the group listener and misbehaves before
// joining; it must be closed without receiving a byte.
func (k *soak) hostileJoiner(rng *rand.Rand) {
	c := k.tcp[rng.IntN(len(k.tcp))]
	conn, err := testkit.TryDialMember(k.s, listedIP(rng.IntN(soakListedIPs)), testkit.ReuseAddr())
	if err != nil {
		k.violate("hostile joiner: dial: %v", err)
		return
	}
	defer conn.Close()
	k.nJoiners.Add(1)
	var pieces []string
	switch rng.IntN(5) {
	case 0:
		k.nSilent.Add(1) // never sends: the join deadline closes it
	case 1:
		pieces = []string{"\x00garbage\xff\n"}
	case 2:
		pieces = []string{string(testkit.JoinLine(strings.Repeat("x", 129)))} // the longest id is 128 bytes
	case 3:
		pieces = []string{"SOCKETFORWARDER-OLD:" + c.ch.group + "\n"}
	case 4:
		pieces = []string{"SOCKET", "FORWARDER"} // a prefix of the prefix, never finished
	}
	for _, p := range pieces {
		_ = conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
		if _, err := io.WriteString(conn, p); err != nil {
			break // closed already: fine
		}
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond) // the joiner's own pace
	}
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	got, err := io.ReadAll(conn)
	switch {
	case len(got) > 0:
		k.violate("hostile joiner (%q): received %q", pieces, testkit.Abbreviate(got))
	case err != nil && !testkit.IsConnGone(err):
		k.violate("hostile joiner (%q): not closed: %v", pieces, err)
	}
}

// deafMember joins a group with a tiny receive buffer, never reads, and
// leaves after a while, unless the server cuts it first at its bound.
func (k *soak) deafMember(rng *rand.Rand) {
	c := k.tcp[rng.IntN(len(k.tcp))]
	conn, err := testkit.TryDialMember(k.s, listedIP(rng.IntN(soakListedIPs)), testkit.ReceiveBuffer(4096))
	if err != nil {
		k.violate("deaf member: dial: %v", err)
		return
	}
	defer conn.Close()
	k.mu.Lock()
	k.deaf[conn.LocalAddr().String()] = true
	k.mu.Unlock()
	k.nDeaf.Add(1)
	_ = conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
	if _, err := conn.Write(testkit.JoinLine(c.ch.group)); err != nil {
		k.violate("deaf member on %s: joining: %v", c, err)
		return
	}
	time.Sleep(time.Duration(1000+rng.IntN(4000)) * time.Millisecond) // its own lifetime
}

var peerField = regexp.MustCompile(`\speer=(\S+)`)

// verifyMembers finishes the members' checks once the logs are complete,
// and checks that only members that never read were cut.
func (k *soak) verifyMembers(devices []*soakDevice, metrics string) {
	t := k.t
	checked, records := 0, 0
	var matched int64
	for _, dv := range devices {
		if dv.heard == nil || !dv.finished.Load() {
			continue
		}
		if problem := dv.heard.finish(); problem != "" {
			k.violate("member %s of %s (uid %x): %s", dv.ip, dv.ch, dv.uid, problem)
		}
		dv.heard.log.mu.Lock()
		if dv.heard.started {
			checked++
			matched += dv.heard.matched
			records += dv.heard.records
		}
		dv.heard.log.mu.Unlock()
	}
	k.bytesHeard.Store(matched)
	t.Logf("checked what %d members of anchored groups received: %.1f MiB from other members and %d WRITE records, in the anchors' order",
		checked, float64(matched)/(1<<20), records)
	if checked == 0 {
		t.Errorf("no member's reception was checked: the soak proved nothing about members hearing each other")
	}

	// Joiners are refused exactly when they misbehave.
	testkit.ExpectMetric(t, metrics, float64(k.nJoiners.Load()), "dispatch_group_joins_refused_total", "reason", "any")
	testkit.ExpectMetric(t, metrics, float64(k.nSilent.Load()), "dispatch_group_joins_refused_total", "reason", "timeout")
	// Members that read are never cut; deaf ones may be.
	cuts := testkit.LinesContaining(k.s.Logs(), "socket group member not keeping up")
	n := 0
	for _, line := range strings.Split(cuts, "\n") {
		m := peerField.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		n++
		k.mu.Lock()
		deaf := k.deaf[m[1]]
		k.mu.Unlock()
		if !deaf {
			k.violate("a member that reads was cut as slow: %s", line)
		}
	}
	t.Logf("%d of %d deaf members were cut at their bound", n, k.nDeaf.Load())
	testkit.ExpectMetric(t, metrics, float64(n), "dispatch_forced_disconnects_total", "kind", "slow_member")
}
