package loop

// The UDP socket group: one group per UDP group port. A datagram
// "<prefix><port>" registers source-ip:<port> as a member; any other
// datagram from a member (identified by its source address) goes to every
// other member, from the group port, with a non-blocking sendto. Members
// that stay silent for GroupUDPIdle are forgotten; preconfigured members
// never are. The socket, its reader goroutine and its bounded queue are
// the ones dispatch UDP ports use (udp.go).

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/codec"
)

// udpMember is a registered (or preconfigured) UDP peer of the group.
type udpMember struct {
	addr      netip.AddrPort
	ipText    []byte        // the IP as the dispatch protocol carries it
	sa        unix.Sockaddr // built once: sendto then allocates nothing
	lastSeen  time.Time     // last datagram from it, registration included
	checkAt   time.Time     // when the expiry sweep next looks at it
	permanent bool          // preconfigured: never expires
}

// openUDPGroup binds the UDP group port and adds the preconfigured members.
func (st *state) openUDPGroup(addr string) (*channel, error) {
	port := 0 // for the reader's log lines; the bound port is the group id
	if ua, err := net.ResolveUDPAddr("udp", addr); err == nil {
		port = ua.Port
	}
	ch := &channel{
		proto:   protoUDP,
		port:    port,
		policy:  toMembers,
		version: 1,
		group:   &socketGroup{udpMembers: make(map[netip.AddrPort]*udpMember)},
	}
	u, err := st.openUDP(ch, addr)
	if err != nil {
		return nil, err
	}
	ch.udp = u
	ch.group.id = strconv.Itoa(u.conn.LocalAddr().(*net.UDPAddr).Port)
	for _, a := range st.cfg.GroupUDPPreconfig {
		if ch.group.udpMembers[a] != nil {
			continue
		}
		if st.addUDPMember(ch, a, true) == nil {
			st.closeUDP(u)
			return nil, fmt.Errorf("preconfigured member %s cannot be reached from %s", a, u.conn.LocalAddr())
		}
	}
	return ch, nil
}

// forwardGroupDatagram runs on the loop for each datagram on the group port.
func (st *state) forwardGroupDatagram(u *udpPort, dg datagram) {
	ch := u.ch
	g := ch.group
	from := netip.AddrPortFrom(dg.from.Addr().Unmap().WithZone(""), dg.from.Port())
	data := dg.buf.B
	if bytes.HasPrefix(data, st.groups.prefix) {
		st.registerUDPMember(ch, from, data[len(st.groups.prefix):])
		return
	}
	sender := g.udpMembers[from]
	if sender == nil && !st.cfg.GroupUDPOpen {
		st.c.GroupDatagramsUnregistered++
		if st.groups.unregistered.due(st.now) {
			st.log.Info("dropping datagrams from senders that are not socket group members", "group", g.id,
				"last_peer", from.String(), "count", st.groups.unregistered.take())
		}
		return
	}
	if sender != nil {
		sender.lastSeen = st.now
	}
	st.c.GroupChunksForwarded++
	st.c.GroupBytesForwarded += uint64(len(data))
	g.bytesForwarded += uint64(len(data))
	for _, m := range g.udpMembers {
		if m != sender {
			st.sendToUDPMember(u, m, data)
		}
	}
	var text [64]byte
	ip := from.Addr()
	st.queueGroupEvent(ch, codec.Received, ip.AppendTo(text[:0]), ip, uint64(from.Port()), data)
}

// registerUDPMember handles "<prefix><port>": the sender's IP with that
// port becomes a member, or an existing member is kept alive.
func (st *state) registerUDPMember(ch *channel, from netip.AddrPort, arg []byte) {
	port, ok := parsePort(bytes.TrimRight(arg, "\r\n"))
	if !ok {
		st.refuseJoin(from, "bad port in UDP join message")
		return
	}
	addr := netip.AddrPortFrom(from.Addr(), port)
	if m := ch.group.udpMembers[addr]; m != nil {
		m.lastSeen = st.now
		return
	}
	if len(ch.group.udpMembers) >= st.cfg.MaxPortConns {
		st.refuseJoin(from, "UDP member cap reached")
		return
	}
	if st.addUDPMember(ch, addr, false) == nil {
		st.refuseJoin(from, "address family not reachable from the group port")
	}
}

// addUDPMember adds a member and announces it; nil means the socket cannot
// send to that address family.
func (st *state) addUDPMember(ch *channel, addr netip.AddrPort, permanent bool) *udpMember {
	sa, ok := udpSockaddr(ch.udp.family, addr)
	if !ok {
		return nil
	}
	m := &udpMember{addr: addr, ipText: []byte(addr.Addr().String()), sa: sa, lastSeen: st.now, permanent: permanent}
	ch.group.udpMembers[addr] = m
	if !permanent {
		m.checkAt = st.now.Add(st.cfg.GroupUDPIdle)
		st.groups.expiring.push(m)
	}
	st.c.GroupJoins++
	st.log.Debug("socket group UDP member registered", "group", ch.group.id, "member", addr.String(), "preconfigured", permanent)
	st.queueGroupEvent(ch, codec.Opened, m.ipText, addr.Addr(), uint64(addr.Port()), nil)
	return m
}

// expireUDPMembers runs every tick. Each member is queued once, by the time
// it could next be idle; one that spoke since is queued again for its new
// time, so a sweep costs the members due, not all of them.
func (st *state) expireUDPMembers() {
	q := &st.groups.expiring
	for m, ok := q.front(); ok && !m.checkAt.After(st.now); m, ok = q.front() {
		q.pop()
		if due := m.lastSeen.Add(st.cfg.GroupUDPIdle); due.After(st.now) {
			m.checkAt = due
			q.push(m)
			continue
		}
		ch := st.groups.udp
		delete(ch.group.udpMembers, m.addr)
		st.c.GroupUDPMembersExpired++
		st.log.Debug("socket group UDP member expired", "group", ch.group.id, "member", m.addr.String())
		st.queueGroupEvent(ch, codec.Closed, m.ipText, m.addr.Addr(), uint64(m.addr.Port()), nil)
	}
}

// sendToUDPMember sends one datagram from the group port. A full socket
// buffer drops it (counted): a blocking send would stall the loop.
func (st *state) sendToUDPMember(u *udpPort, m *udpMember, data []byte) {
	if err := unix.Sendto(u.fd, data, unix.MSG_DONTWAIT, m.sa); err != nil {
		st.c.GroupDatagramsOutDropped++
		if st.groups.sendFailed.due(st.now) {
			st.log.Warn("socket group datagrams not sent", "group", u.ch.group.id, "last_member", m.addr.String(),
				"err", err, "count", st.groups.sendFailed.take())
		}
		return
	}
	st.c.GroupDatagramsOut++
}

// writeToUDPMember carries a driver's WRITE to one member of the UDP group.
func (st *state) writeToUDPMember(d *driver, ipText []byte, port uint64, data []byte) {
	ip, err := netip.ParseAddr(string(ipText))
	if err != nil || port < 1 || port > 65535 {
		st.c.GroupDatagramsOutDropped++
		if !d.warnedBadWrite {
			d.warnedBadWrite = true
			st.log.Warn("ignoring UDP group WRITE with an unusable destination", "peer", d.peer,
				"ip", string(ipText), "dest_port", port)
		}
		return
	}
	m := d.ch.group.udpMembers[netip.AddrPortFrom(ip.Unmap().WithZone(""), uint16(port))]
	if m == nil {
		return
	}
	st.c.GroupBytesFromDrivers += uint64(len(data))
	st.sendToUDPMember(d.ch.udp, m, data)
}

// udpSockaddr is the destination for a member as the socket's family needs
// it; an IPv4 socket cannot reach an IPv6 member.
func udpSockaddr(family int, a netip.AddrPort) (unix.Sockaddr, bool) {
	ip := a.Addr()
	if family == unix.AF_INET {
		if !ip.Is4() {
			return nil, false
		}
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: ip.As4()}, true
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: ip.As16()}, true
}

// parsePort reads a decimal port in 1-65535 without allocating.
func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}
