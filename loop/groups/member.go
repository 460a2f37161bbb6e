package groups

import (
	"bytes"
	"time"

	"github.com/placeos-gnet/dispatch/internal/fifo"
	"github.com/placeos-gnet/dispatch/loop"
)

// memberState is where a TCP group connection is in its life.
type memberState uint8

const (
	memberJoining memberState = iota // admitted, waiting for its join line
	memberJoined                     // in a group
	memberGone
)

// member is a TCP connection to the group listener: joining, then a member
// of one group.
type member struct {
	loop.Member
	k     *Kind
	c     *loop.TCPConn
	state memberState
	g     *group // its group, once joined

	deadline  time.Time // to join by
	firstRead int       // bytes of the first read: the join message when no newline comes
}

// Open admits a connection to the group listener: a preconfigured host
// joins its group at once, anyone else has until the join deadline to send
// a join line.
func (m *member) Open(c *loop.TCPConn) bool {
	k := m.k
	h := k.hub
	m.c = c
	m.IP, m.IPText, m.Conn = c.IP, c.IPText, &c.Endpoint
	switch {
	case k.tcpLn == nil:
		k.refuseJoin(c.Peer, "listener closed")
		return false
	case h.AtConnCap() || k.conns >= k.cfg.MaxMembers:
		k.refuseJoin(c.Peer, "connection cap reached")
		return false
	}
	k.conns++
	if id, ok := k.hosts[m.IP]; ok {
		if !m.join(id) {
			k.conns--
			k.refuseJoin(c.Peer, "too many socket groups")
			return false
		}
		return true
	}
	m.state = memberJoining
	m.deadline = h.Now().Add(k.cfg.JoinTimeout)
	k.joining.Push(m)
	return true
}

// Data forwards a joined member's reads; a joining member's are searched
// for the join line (gnet keeps what is not consumed for the next call).
func (m *member) Data(_ *loop.TCPConn, data []byte) int {
	if m.state == memberJoined {
		m.forward(data)
		return len(data)
	}
	if m.state != memberJoining {
		return len(data)
	}
	if m.firstRead == 0 {
		m.firstRead = len(data)
	}
	k := m.k
	maxLine := len(k.prefix) + k.cfg.IDMaxLen + 1 // room for a CR before the LF
	if i := bytes.IndexByte(data[:min(len(data), maxLine+1)], '\n'); i >= 0 {
		return m.completeJoin(data, data[:i], i+1)
	}
	if len(data) > maxLine {
		// No newline can end a valid join line any more: the join message is
		// the first read, as the original SocketForwarder reads it.
		return m.completeJoin(data, data[:m.firstRead], m.firstRead)
	}
	if n := min(len(data), len(k.prefix)); !bytes.Equal(data[:n], k.prefix[:n]) {
		m.refuse("bad prefix")
		return 0
	}
	return 0 // the rest of the line, or the deadline, will tell
}

// completeJoin joins the group the line names and forwards whatever the
// member sent after it (from offset next) as its first payload. It returns
// what it consumed.
func (m *member) completeJoin(data, line []byte, next int) int {
	k := m.k
	line = bytes.TrimRight(line, "\r\n")
	if !bytes.HasPrefix(line, k.prefix) {
		m.refuse("bad prefix")
		return 0
	}
	if len(line)-len(k.prefix) > k.cfg.IDMaxLen {
		m.refuse("group id too long")
		return 0
	}
	id := string(line[len(k.prefix):]) // copied before the buffer is discarded
	if problem := idProblem(id, k.cfg.IDMaxLen); problem != "" {
		m.refuse(problem)
		return 0
	}
	if !m.join(id) {
		m.refuse("too many socket groups")
		return 0
	}
	if rest := data[next:]; len(rest) > 0 {
		m.forward(rest)
	}
	return len(data)
}

// refuse ends a joining member; the end's own log line says why.
func (m *member) refuse(reason string) {
	m.k.c.JoinsRefused++
	m.c.End(loop.EndRefused, reason)
}

// join makes the member part of group id; false when the cap on groups
// keeps the group from opening.
func (m *member) join(id string) bool {
	k := m.k
	g := k.tcpGroup(id)
	if g == nil {
		return false
	}
	m.state, m.g = memberJoined, g
	m.ID = k.hub.IDBase() | k.nextID // the node number keeps ids unique across replicas
	k.nextID++
	g.members[m.ID] = m
	k.c.Joins++
	k.hub.Log().Debug("socket group member joined", "group", id, "member", m.ID, "peer", m.c.Peer)
	g.ch.Join(&m.Member)
	return true
}

// forward publishes one read to the group: every other member hears it,
// and the drivers that admit the sender hear it as RECEIVED.
func (m *member) forward(data []byte) {
	g := m.g
	k := m.k
	k.c.ChunksForwarded++
	k.c.BytesForwarded += uint64(len(data))
	g.bytesForwarded += uint64(len(data))
	g.ch.Publish(loop.MemberData, &m.Member, false, data)
}

// Ended runs when a group connection ends, whichever side closed it.
func (m *member) Ended(*loop.TCPConn, loop.EndReason) {
	k := m.k
	was := m.state
	m.state = memberGone
	k.conns--
	if was != memberJoined {
		return
	}
	g := m.g
	delete(g.members, m.ID)
	k.c.MembersLeft++
	k.hub.Log().Debug("socket group member left", "group", g.id, "member", m.ID, "peer", m.c.Peer)
	g.ch.Leave(&m.Member)
	g.forgetIfIdle()
}

// expireJoins runs every tick. Joining members are queued in deadline
// order, so it only looks at those whose deadline has passed.
func (k *Kind) expireJoins() {
	q := &k.joining
	now := k.hub.Now()
	for m, ok := q.Front(); ok && !m.deadline.After(now); m, ok = q.Front() {
		q.Pop()
		if m.state != memberJoining {
			continue
		}
		if m.firstRead == 0 {
			k.c.JoinTimeouts++
			k.c.JoinsRefused++
			m.c.End(loop.EndTimeout, "no join message before the deadline")
			continue
		}
		// No newline came: the join message is the first read.
		gc := m.c.Conn()
		buf, _ := gc.Peek(-1)
		if n := m.completeJoin(buf, buf[:m.firstRead], m.firstRead); n > 0 {
			_, _ = gc.Discard(n)
		}
	}
}

// queue is a FIFO that reuses its backing array.
type queue[T any] = fifo.Queue[T]
