package loop

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/placeos-gnet/dispatch/stats"
)

// proto names a device port's transport: TCP and UDP ports are separate
// namespaces.
type proto uint8

const (
	protoTCP proto = iota
	protoUDP
)

func (p proto) String() string {
	if p == protoUDP {
		return "udp"
	}
	return "tcp"
}

// policy says where a channel's member payload goes.
type policy uint8

const (
	// toUpstreams: a dispatch port; members are heard by the drivers that admit them.
	toUpstreams policy = iota
	// toMembers: a socket group; members are heard by every other member and
	// by the drivers that admit them.
	toMembers
)

// channel is a fan-out set: a device port whose members (device connections
// or UDP peers) produce payloads and whose upstreams (driver sessions) hear
// the members their accept list admits. A dispatch port exists exactly while
// it has at least one upstream; a socket group outlives its upstreams.
type channel struct {
	proto     proto
	port      int
	policy    policy
	group     *socketGroup // socket groups only
	upstreams []*driver
	// version changes whenever upstreams change, so cached per-member
	// routing can tell it is stale.
	version uint64
	closed  bool

	// TCP
	ln      net.Listener
	members map[uint64]*device
	nextID  uint64
	refused refusalLog

	// UDP
	udp *udpPort
}

func (st *state) portMap(p proto) map[int]*channel {
	if p == protoUDP {
		return st.udp
	}
	return st.tcp
}

// channelFor returns the open channel for a port, opening (binding) it if
// this is its first session.
func (st *state) channelFor(p proto, port int) (*channel, error) {
	if ch, ok := st.portMap(p)[port]; ok {
		return ch, nil
	}
	if st.s.stopping.Load() {
		return nil, errors.New("server shutting down")
	}
	addr := net.JoinHostPort(st.cfg.DeviceHost, fmt.Sprint(port))
	ch := &channel{proto: p, port: port, version: 1}
	if p == protoUDP {
		u, err := st.openUDP(ch, addr)
		if err != nil {
			return nil, err
		}
		ch.udp = u
	} else {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		ch.ln = ln
		ch.members = make(map[uint64]*device)
		st.s.acceptWG.Add(1)
		go st.s.acceptLoop(ln, "device", func(c net.Conn) any { return newDevice(ch, c) })
	}
	st.portMap(p)[port] = ch
	st.c.PortsOpened++
	st.log.Info("device port opened", "proto", p.String(), "port", port)
	return ch, nil
}

// closeChannel closes the listener and drops every member.
func (st *state) closeChannel(ch *channel) {
	if ch.closed {
		return
	}
	ch.closed = true
	delete(st.portMap(ch.proto), ch.port)
	switch ch.proto {
	case protoTCP:
		_ = ch.ln.Close()
		for _, dv := range ch.members {
			st.dropDevice(dv)
		}
	case protoUDP:
		st.closeUDP(ch.udp)
	}
	ch.refused.flush(st, ch)
	st.c.PortsClosed++
	st.log.Info("device port closed", "proto", ch.proto.String(), "port", ch.port)
}

func (st *state) registerDriver(d *driver, ch *channel) {
	d.ch = ch
	ch.upstreams = append(ch.upstreams, d)
	ch.version++
	st.drivers[d] = struct{}{}
	st.c.DriversAccepted++
	st.log.Info("driver registered", "proto", ch.proto.String(), "port", ch.port,
		"peer", d.peer, "module", d.module, "accept", d.accept.String())
}

// unregisterDriver removes a session from its channel. The last session
// closes the channel; otherwise devices whose IP no session admits any more
// are closed.
func (st *state) unregisterDriver(d *driver) {
	ch := d.ch
	if ch == nil {
		return
	}
	d.ch = nil
	delete(st.drivers, d)
	st.c.DriversClosed++
	i := slices.Index(ch.upstreams, d)
	if i < 0 {
		return
	}
	ch.upstreams = slices.Delete(ch.upstreams, i, i+1)
	ch.version++
	st.log.Info("driver left", "proto", ch.proto.String(), "port", ch.port, "peer", d.peer)
	if ch.closed {
		return
	}
	if ch.policy == toMembers {
		// Members joined the group, not a session: they stay.
		st.forgetIdleGroup(ch)
		return
	}
	if len(ch.upstreams) == 0 {
		st.closeChannel(ch)
		return
	}
	if ch.proto == protoTCP {
		for _, dv := range ch.members {
			if !ch.admits(dv.ip) {
				st.dropDevice(dv)
			}
		}
	}
}

func (ch *channel) admits(ip netip.Addr) bool {
	for _, d := range ch.upstreams {
		if d.accept.contains(ip) {
			return true
		}
	}
	return false
}

// dispatchStats renders the stats document for every open port.
func (st *state) statsJSON() []byte {
	var d stats.Dispatch
	for port, ch := range st.udp {
		d.UDPListeners = append(d.UDPListeners, stats.PortCount{Port: port, Count: len(ch.upstreams)})
	}
	for port, ch := range st.tcp {
		d.TCPListeners = append(d.TCPListeners, stats.PortCount{Port: port, Count: len(ch.upstreams)})
		d.TCPClients = append(d.TCPClients, stats.PortCount{Port: port, Count: len(ch.members)})
	}
	return d.AppendJSON(nil)
}

// peerIP is a connection's remote address as accept lists compare it:
// IPv4-mapped IPv6 as IPv4, without a zone.
func peerIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap().WithZone("")
	}
	return netip.Addr{}
}

// acceptList is a session's set of admitted peer addresses.
type acceptList struct {
	addrs    []netip.Addr
	prefixes []netip.Prefix
}

// parseAcceptList splits on commas; entries are trimmed, empty ones dropped,
// duplicates removed; each is an IP (IPv4-mapped IPv6 is its IPv4 form) or a
// CIDR range.
func parseAcceptList(s string) (acceptList, error) {
	var a acceptList
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		if strings.Contains(entry, "/") {
			p, err := netip.ParsePrefix(entry)
			if err != nil {
				return acceptList{}, err
			}
			if p.Addr().Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			p = p.Masked()
			if !slices.Contains(a.prefixes, p) {
				a.prefixes = append(a.prefixes, p)
			}
			continue
		}
		ip, err := netip.ParseAddr(entry)
		if err != nil {
			return acceptList{}, err
		}
		ip = ip.Unmap().WithZone("")
		if !slices.Contains(a.addrs, ip) {
			a.addrs = append(a.addrs, ip)
		}
	}
	return a, nil
}

func (a *acceptList) contains(ip netip.Addr) bool {
	for _, x := range a.addrs {
		if x == ip {
			return true
		}
	}
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func (a *acceptList) String() string {
	parts := make([]string, 0, len(a.addrs)+len(a.prefixes))
	for _, x := range a.addrs {
		parts = append(parts, x.String())
	}
	for _, p := range a.prefixes {
		parts = append(parts, p.String())
	}
	return strings.Join(parts, ",")
}

// refusalLog rate-limits the log line for refused peers: one line per port
// per interval, carrying the count since the last line.
type refusalLog struct {
	count  int
	last   netip.Addr
	logged int64 // unix seconds of the last line
}

const refusalLogInterval = 10 // seconds

func (r *refusalLog) note(st *state, ch *channel, ip netip.Addr) {
	r.count++
	r.last = ip
	if now := st.now.Unix(); now-r.logged >= refusalLogInterval {
		r.flush(st, ch)
		r.logged = now
	}
}

func (r *refusalLog) flush(st *state, ch *channel) {
	if r.count == 0 {
		return
	}
	st.log.Info("refused peers not on any accept list", "proto", ch.proto.String(), "port", ch.port,
		"count", r.count, "last_peer", r.last.String())
	r.count = 0
}
