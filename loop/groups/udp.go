package groups

// The UDP socket group: one group per UDP group port. A datagram
// "<prefix><port>" registers source-ip:<port> as a member; any other
// datagram from a member (identified by its source address) goes to every
// other member, from the group port, with a non-blocking sendto. Members
// that stay silent for UDPIdle are forgotten; preconfigured members never
// are.

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
)

// udpMember is a registered (or preconfigured) UDP peer of the group.
type udpMember struct {
	loop.Member
	g         *group
	addr      netip.AddrPort
	sa        unix.Sockaddr // built once: sendto then allocates nothing
	lastSeen  time.Time     // last datagram from it, registration included
	checkAt   time.Time     // when the expiry sweep next looks at it
	permanent bool          // preconfigured: never expires
}

// udpRole receives the group port's datagrams.
type udpRole struct {
	g        *group
	port     *loop.UDPPort
	stranger loop.Member // the sender of a datagram from a non-member, in open mode
}

func (k *Kind) udpPort() *loop.UDPPort { return k.udp.role.port }

// openUDPGroup binds the UDP group port and adds the preconfigured members.
func (k *Kind) openUDPGroup(addr string) error {
	h := k.hub
	g := &group{k: k, udp: true, udpMembers: make(map[netip.AddrPort]*udpMember)}
	role := &udpRole{g: g}
	role.stranger.Transient = true
	g.role = role
	port, err := h.OpenUDP(addr, k.cfg.UDPQueueBytes, &k.udpCounters, role)
	if err != nil {
		return err
	}
	role.port = port
	g.id = strconv.Itoa(port.LocalAddr().Port)
	ch, err := h.OpenChannel(loop.Key{Kind: KindName, Name: "udp:" + g.id}, policy, g, 0)
	if err != nil {
		port.Close()
		return err
	}
	g.ch = ch
	k.udp, k.udpAddr = g, port.LocalAddr()
	for _, a := range k.cfg.UDPPreconfig {
		if g.udpMembers[a] != nil {
			continue
		}
		if g.addUDPMember(a, true) == nil {
			ch.Close()
			port.Close()
			k.udp, k.udpAddr = nil, nil
			return fmt.Errorf("preconfigured member %s cannot be reached from %s", a, port.LocalAddr())
		}
	}
	return nil
}

// Datagram runs on the loop for each datagram on the group port.
func (r *udpRole) Datagram(_ *loop.UDPPort, from netip.AddrPort, data []byte) {
	g := r.g
	k := g.k
	if bytes.HasPrefix(data, k.prefix) {
		g.registerUDPMember(from, data[len(k.prefix):])
		return
	}
	sender := g.udpMembers[from]
	var m *loop.Member
	switch {
	case sender != nil:
		sender.lastSeen = k.hub.Now()
		m = &sender.Member
	case k.cfg.UDPOpen:
		m = &r.stranger
		m.ID, m.IP = uint64(from.Port()), from.Addr()
		m.IPText = m.IP.AppendTo(m.IPText[:0])
	default:
		k.c.DatagramsUnregistered++
		if k.unregisteredLog.Due(k.hub.Now()) {
			k.hub.Log().Info("dropping datagrams from senders that are not socket group members", "group", g.id,
				"last_peer", from.String(), "count", k.unregisteredLog.Take())
		}
		return
	}
	k.c.ChunksForwarded++
	k.c.BytesForwarded += uint64(len(data))
	g.bytesForwarded += uint64(len(data))
	g.ch.Publish(loop.MemberData, m, false, data)
}

// registerUDPMember handles "<prefix><port>": the sender's IP with that
// port (the member's own receiving port) becomes a member, or an existing
// member is kept alive.
func (g *group) registerUDPMember(from netip.AddrPort, arg []byte) {
	k := g.k
	port, ok := parsePort(bytes.TrimRight(arg, "\r\n"))
	if !ok {
		k.refuseJoin(from, "bad port in UDP join message")
		return
	}
	addr := netip.AddrPortFrom(from.Addr(), port)
	if m := g.udpMembers[addr]; m != nil {
		m.lastSeen = k.hub.Now()
		return
	}
	if len(g.udpMembers) >= k.cfg.MaxMembers {
		k.refuseJoin(from, "UDP member cap reached")
		return
	}
	if g.addUDPMember(addr, false) == nil {
		k.refuseJoin(from, "address family not reachable from the group port")
	}
}

// addUDPMember adds a member and announces it; nil means the socket cannot
// send to that address family.
func (g *group) addUDPMember(addr netip.AddrPort, permanent bool) *udpMember {
	k := g.k
	sa, ok := g.role.port.Sockaddr(addr)
	if !ok {
		return nil
	}
	now := k.hub.Now()
	m := &udpMember{g: g, addr: addr, sa: sa, lastSeen: now, permanent: permanent}
	m.ID, m.IP, m.IPText, m.Recv = uint64(addr.Port()), addr.Addr(), []byte(addr.Addr().String()), m
	g.udpMembers[addr] = m
	if !permanent {
		m.checkAt = now.Add(k.cfg.UDPIdle)
		k.expiring.Push(m)
	}
	k.c.Joins++
	k.hub.Log().Debug("socket group UDP member registered", "group", g.id, "member", addr.String(), "preconfigured", permanent)
	g.ch.Join(&m.Member)
	return m
}

// Receive sends one datagram to the member from the group port. A full
// socket buffer drops it (counted): a blocking send would stall the loop.
func (m *udpMember) Receive(data []byte) {
	k := m.g.k
	if err := m.g.role.port.SendTo(m.sa, data); err != nil {
		k.c.DatagramsOutDropped++
		if k.sendFailedLog.Due(k.hub.Now()) {
			k.hub.Log().Warn("socket group datagrams not sent", "group", m.g.id, "last_member", m.addr.String(),
				"err", err, "count", k.sendFailedLog.Take())
		}
		return
	}
	k.c.DatagramsOut++
}

// expireUDPMembers runs every tick. Each member is queued once, by the time
// it could next be idle; one that spoke since is queued again for its new
// time, so a sweep costs the members due, not all of them.
func (k *Kind) expireUDPMembers() {
	q := &k.expiring
	now := k.hub.Now()
	for m, ok := q.Front(); ok && !m.checkAt.After(now); m, ok = q.Front() {
		q.Pop()
		g := m.g
		if g.udpMembers[m.addr] != m {
			continue // gone with its group
		}
		if due := m.lastSeen.Add(k.cfg.UDPIdle); due.After(now) {
			m.checkAt = due
			q.Push(m)
			continue
		}
		delete(g.udpMembers, m.addr)
		k.c.UDPMembersExpired++
		k.hub.Log().Debug("socket group UDP member expired", "group", g.id, "member", m.addr.String())
		g.ch.Leave(&m.Member)
	}
}

// writeToUDPMember carries a driver's WRITE to one member of the UDP group.
func (g *group) writeToUDPMember(d *driver.Driver, ipText []byte, port uint64, data []byte) {
	k := g.k
	ip, err := netip.ParseAddr(string(ipText))
	if err != nil || port < 1 || port > 65535 {
		k.c.DatagramsOutDropped++
		if !d.WarnedBadWrite {
			d.WarnedBadWrite = true
			k.hub.Log().Warn("ignoring UDP group WRITE with an unusable destination", "peer", d.Conn.Peer,
				"ip", string(ipText), "dest_port", port)
		}
		return
	}
	m := g.udpMembers[netip.AddrPortFrom(ip.Unmap().WithZone(""), uint16(port))]
	if m == nil {
		if r := g.ch.Remote(port, ipText); r != nil {
			k.hub.Send(r, false, data) // a member of the group on another replica
		}
		return
	}
	k.c.BytesFromDrivers += uint64(len(data))
	m.Receive(data)
}
