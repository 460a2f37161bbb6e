// Package groups re-implements the SocketForwarder on the loop: raw sockets
// that join a group and hear each other. A group is a channel whose policy
// sends a member's payload to every other member and, as RECEIVED, to the
// drivers attached to the group. Members are raw TCP sockets that joined
// with a prefix line (member.go), or UDP peers that registered with a prefix
// datagram (udp.go). Output to TCP members goes through the outbox, so one
// slow member is cut at its own bound and never stalls the group.
package groups

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
	"github.com/placeos-gnet/dispatch/stats"
)

// KindName is the kind's name in channel keys and metrics.
const KindName = "groups"

// Kind serves socket groups.
type Kind struct {
	cfg  Config
	drv  *driver.Config
	auth driver.Auth
	hub  *loop.Hub

	prefix   []byte
	tcpLn    net.Listener          // nil while off or closed
	tcp      map[string]*group     // TCP groups by id, while they have members or drivers
	udp      *group                // the UDP group, when configured
	hosts    map[netip.Addr]string // preconfigured TCP hosts and their group
	conns    int                   // TCP group connections, joining or joined
	nextID   uint64                // TCP member ids, unique across groups and never reused
	joining  queue[*member]        // by join deadline; entries that have joined since are skipped
	expiring queue[*udpMember]     // UDP members by the time their idleness is next checked

	refusedLog      loop.RateLog // joins refused
	unregisteredLog loop.RateLog // datagrams from non-members dropped
	sendFailedLog   loop.RateLog // datagrams to members the socket would not take

	members, drivers *loop.Class
	c                Counters
	udpCounters      loop.UDPCounters
	published        atomic.Pointer[Counters]
	tcpAddr, udpAddr net.Addr // bound listeners, set by Start
}

// Counters are the kind's own counts, beyond its classes'.
type Counters struct {
	Joins                 uint64 // TCP members joined, UDP members registered
	JoinsRefused          uint64 // bad prefix, bad or too long group id, join deadline missed, caps
	JoinTimeouts          uint64 // of those refused: nothing usable before the join deadline
	MembersLeft           uint64 // joined TCP members closed, whichever side closed them
	ChunksForwarded       uint64 // member reads and datagrams forwarded to their group
	BytesForwarded        uint64 // their bytes, counted once however many members hear them
	BytesFromDrivers      uint64 // WRITE payload from group drivers to members
	DatagramsUnregistered uint64 // datagrams from senders that are not members, dropped
	DatagramsOut          uint64 // datagrams sent to UDP members
	DatagramsOutDropped   uint64 // datagrams to UDP members the socket could not take
	UDPMembersExpired     uint64 // UDP members silent for the idle time, forgotten
}

// group is a socket group: its channel and its members by address.
type group struct {
	k              *Kind
	id             string // the UDP group's id is its port in decimal
	udp            bool
	ch             *loop.Channel
	members        map[uint64]*member            // TCP: joined members by id
	udpMembers     map[netip.AddrPort]*udpMember // UDP: members by address
	role           *udpRole                      // UDP: the port's role
	bytesForwarded uint64                        // member payload, counted once per chunk
}

var policy = loop.Policy{ToUpstreams: true, ToMembers: true, Announce: true}

// Register adds the socket-group kind and its routes to s.
func Register(s *loop.Server, cfg Config, drv *driver.Config) (*Kind, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if err := drv.Check(); err != nil {
		return nil, err
	}
	k := &Kind{cfg: cfg, drv: drv, auth: driver.NewAuth(drv.Secret), tcp: make(map[string]*group)}
	k.published.Store(&Counters{})
	s.Register(k)
	for _, base := range []string{"/api/dispatch/v1", "/api/server"} {
		s.Handle(base+"/group_dispatch", k.attachDriver)
		s.Handle(base+"/groups", k.serveGroups)
	}
	return k, nil
}

// Name implements loop.Kind.
func (k *Kind) Name() string { return KindName }

// Resolution implements loop.Resolver: join deadlines are kept to within a
// quarter of the join timeout.
func (k *Kind) Resolution() time.Duration { return k.cfg.JoinTimeout }

// TCPAddr is the bound TCP group listener, or nil when it is off.
func (k *Kind) TCPAddr() net.Addr { return k.tcpAddr }

// UDPAddr is the bound UDP group port, or nil when it is off.
func (k *Kind) UDPAddr() net.Addr { return k.udpAddr }

// Counters returns the kind's counts as last published.
func (k *Kind) Counters() Counters { return *k.published.Load() }

// Start binds the configured group listeners; on failure nothing stays open.
func (k *Kind) Start(h *loop.Hub) error {
	k.hub = h
	k.members = h.NewClass(KindName, "member").
		Say(loop.EndSlow, "socket group member not keeping up, closing it").
		Say(loop.EndStalled, "socket group member not keeping up, closing it").
		Say(loop.EndRefused, "refused socket group join").
		Say(loop.EndTimeout, "refused socket group join")
	k.drivers = driver.NewClass(h, KindName)
	// In a cluster members on every replica hear each other; groups open
	// on local activity only, and the groups document counts every replica.
	h.SpanKind(KindName, nil)
	h.Answer(groupsTopic, func() []byte { doc := k.document(); return doc.AppendJSON(nil) })
	k.prefix = []byte(k.cfg.Prefix)
	k.hosts = make(map[netip.Addr]string, len(k.cfg.TCPPreconfig))
	for _, host := range k.cfg.TCPPreconfig {
		k.hosts[host.Host] = host.Group
	}
	if addr := k.cfg.TCPAddr; addr != "" {
		out := loop.Output{Format: loop.Raw, Limit: k.cfg.MaxMemberPending, OnFull: loop.PauseWhenFull}
		ln, err := h.Listen(addr, "group", func(c net.Conn) *loop.TCPConn {
			return h.NewTCPConn(c, k.members, out, &member{k: k})
		})
		if err != nil {
			return fmt.Errorf("socket group TCP listener on %s: %w", addr, err)
		}
		k.tcpLn, k.tcpAddr = ln, ln.Addr()
		h.Log().Info("group listening", "proto", "tcp", "addr", k.tcpAddr.String())
	}
	if addr := k.cfg.UDPAddr; addr != "" {
		if err := k.openUDPGroup(addr); err != nil {
			k.closeTCPListener()
			return fmt.Errorf("socket group UDP port on %s: %w", addr, err)
		}
		h.Log().Info("group listening", "proto", "udp", "addr", k.udpAddr.String())
	}
	return nil
}

func (k *Kind) closeTCPListener() {
	if k.tcpLn != nil {
		_ = k.tcpLn.Close()
		k.tcpLn = nil
	}
}

// Tick expires join deadlines and idle UDP members.
func (k *Kind) Tick(*loop.Hub) {
	k.expireJoins()
	k.expireUDPMembers()
}

// Shutdown closes the group listeners and every group; members are closed.
func (k *Kind) Shutdown(*loop.Hub) {
	k.closeTCPListener()
	for m, ok := k.joining.Front(); ok; m, ok = k.joining.Front() {
		k.joining.Pop()
		if m.state == memberJoining {
			m.c.End(loop.EndShutdown, "")
		}
	}
	for _, g := range k.tcp {
		g.ch.Close()
	}
	if g := k.udp; g != nil {
		g.ch.Close()
		k.udpPort().Close()
	}
}

// tcpGroup returns the TCP group with this id, creating it; nil when the
// cap on groups is reached.
func (k *Kind) tcpGroup(id string) *group {
	if g := k.tcp[id]; g != nil {
		return g
	}
	g := &group{k: k, id: id, members: make(map[uint64]*member)}
	ch, err := k.hub.OpenChannel(loop.Key{Kind: KindName, Name: "tcp:" + id}, policy, g, k.cfg.MaxGroups)
	if err != nil {
		return nil
	}
	g.ch = ch
	k.tcp[id] = g
	return g
}

// Detached implements loop.Owner: a group outlives its drivers, but an
// empty TCP group is forgotten.
func (g *group) Detached(*loop.Channel, *loop.Upstream) { g.forgetIfIdle() }

// forgetIfIdle forgets a TCP group with neither members nor drivers: any
// client can name a group, so empty ones must not accumulate. The UDP group
// lives as long as its port.
func (g *group) forgetIfIdle() {
	if g.udp || g.ch.Closed() || len(g.members) > 0 || g.ch.Upstreams() > 0 {
		return
	}
	g.ch.Close()
	delete(g.k.tcp, g.id)
}

// refuseJoin counts a refused join; the log line is rate-limited because
// anyone can connect.
func (k *Kind) refuseJoin(peer any, reason string) {
	k.c.JoinsRefused++
	if k.refusedLog.Due(k.hub.Now()) {
		k.hub.Log().Info("refused socket group joins", "reason", reason, "last_peer", peer, "count", k.refusedLog.Take())
	}
}

// attachDriver attaches a driver to a socket group:
// group_dispatch?group=ID[&proto=tcp|udp][&accept=IPS]. The UDP group's id
// is its port. Refusals are answered before the upgrade, as for dispatch.
func (k *Kind) attachDriver(r *loop.Request) {
	h := k.hub
	query, ok := k.auth.Preamble(r, h, "group")
	if !ok {
		return
	}
	ids, ok := query["group"]
	if !ok {
		driver.ParamError(r, h, http.StatusUnprocessableEntity, "group", "missing required parameter 'group'")
		return
	}
	id := ids[0]
	udp := false
	switch query.Get("proto") {
	case "", "tcp":
	case "udp":
		udp = true
	default:
		driver.ParamError(r, h, http.StatusBadRequest, "proto", "invalid parameter value for 'proto'")
		return
	}
	accept := driver.Everyone
	if values, ok := query["accept"]; ok {
		var err error
		if accept, err = driver.ParseAcceptList(values[0]); err != nil {
			driver.ParamError(r, h, http.StatusBadRequest, "accept", "invalid parameter value for 'accept'")
			return
		}
	}
	switch {
	case udp && (k.udp == nil || k.udp.ch.Closed() || id != k.udp.id):
		driver.ParamError(r, h, http.StatusNotFound, "group", "no such UDP group")
		return
	case !udp && k.tcpLn == nil:
		driver.ParamError(r, h, http.StatusNotFound, "group", "no TCP socket groups")
		return
	case !udp && idProblem(id, k.cfg.IDMaxLen) != "":
		driver.ParamError(r, h, http.StatusBadRequest, "group", "invalid parameter value for 'group'")
		return
	}
	answer, ok := r.Accept()
	if !ok {
		return
	}
	g := k.udp
	if !udp {
		if g = k.tcpGroup(id); g == nil {
			driver.ParamError(r, h, http.StatusServiceUnavailable, "group", "too many socket groups")
			return
		}
	}
	d := driver.Attach(r, answer, k.drv, k.drivers, g.ch, &accept, g)
	h.Log().Info("driver attached to socket group", "proto", g.proto(), "group", id, "peer", r.Peer, "module", d.Module)
}

func (g *group) proto() string {
	if g.udp {
		return "udp"
	}
	return "tcp"
}

// Write carries a driver's WRITE to one member (TCP by id, UDP by ip and
// port); it is not forwarded to the others. An unknown member is a silent
// no-op, as for dispatch ports.
func (g *group) Write(d *driver.Driver, ip []byte, id uint64, data []byte) {
	if g.udp {
		g.writeToUDPMember(d, ip, id, data)
		return
	}
	if len(data) == 0 {
		return
	}
	if m := g.members[id]; m != nil {
		g.k.c.BytesFromDrivers += uint64(len(data))
		g.k.hub.Send(&m.Member, false, data)
	} else if m := g.ch.Remote(id, ip); m != nil {
		g.k.hub.Send(m, false, data) // to the replica that holds it
	}
}

// Close closes a TCP member.
func (g *group) Close(_ *driver.Driver, ip []byte, id uint64) {
	if g.udp {
		return
	}
	if m := g.members[id]; m != nil {
		m.c.End(loop.EndClosedByUpstream, "")
	} else if m := g.ch.Remote(id, ip); m != nil {
		g.ch.CloseRemote(m)
	}
}

// serveGroups renders the groups document.
func (k *Kind) serveGroups(r *loop.Request) {
	if k.auth.DocumentRequest(r, k.hub) {
		k.hub.Gather(r, groupsTopic, "application/json", stats.Sum[stats.Groups])
	}
}

// groupsTopic is the cluster-wide question behind the groups document.
const groupsTopic = "groups.document"

func (k *Kind) document() stats.Groups {
	var doc stats.Groups
	for id, g := range k.tcp {
		doc.TCP = append(doc.TCP, stats.Group{ID: id, Members: len(g.members),
			Upstreams: g.ch.LocalUpstreams(), BytesForwarded: g.bytesForwarded})
	}
	slices.SortFunc(doc.TCP, stats.ByID)
	if g := k.udp; g != nil && !g.ch.Closed() {
		doc.UDP = []stats.Group{{ID: g.id, Members: len(g.udpMembers),
			Upstreams: g.ch.LocalUpstreams(), BytesForwarded: g.bytesForwarded}}
	}
	return doc
}

// Collect implements loop.Kind.
func (k *Kind) Collect(_ *loop.Hub, dst []stats.Sample) []stats.Sample {
	c := k.c
	k.published.Store(&c)
	dst = append(dst,
		stats.S(groupJoins, float64(c.Joins)),
		stats.S(groupJoinsRefused, float64(c.JoinsRefused), "any"),
		stats.S(groupJoinsRefused, float64(c.JoinTimeouts), "timeout"),
		stats.S(groupMembersLeft, float64(c.MembersLeft), "tcp"),
		stats.S(groupMembersLeft, float64(c.UDPMembersExpired), "udp"),
		stats.S(groupPayload, float64(c.BytesForwarded), "in"),
		stats.S(groupPayload, float64(k.members.BytesOut), "out"),
		stats.S(stats.DatagramsDropped, float64(c.DatagramsUnregistered), "not_a_group_member"),
		stats.S(stats.DatagramsDropped, float64(c.DatagramsOutDropped), "group_send_failed"),
		stats.S(stats.DatagramsDropped, float64(k.udpCounters.Dropped.Load()), "group_queue_full"),
	)
	ranked := make([]stats.Ranked, 0, len(k.tcp))
	for id, g := range k.tcp {
		ranked = append(ranked, g.ranked(id, len(g.members)))
	}
	for _, r := range stats.Bounded(ranked, k.cfg.MetricsGroups) {
		dst = appendRanked(dst, r, "tcp")
	}
	if g := k.udp; g != nil && !g.ch.Closed() {
		dst = appendRanked(dst, g.ranked(g.id, len(g.udpMembers)), "udp")
	}
	return dst
}

// ranked is a group's per-group series, ranked by members.
func (g *group) ranked(name string, members int) stats.Ranked {
	return stats.Ranked{Name: name, Rank: float64(members),
		Values: [stats.MaxRanked]float64{float64(members), float64(g.ch.LocalUpstreams()), float64(g.bytesForwarded)}}
}

func appendRanked(dst []stats.Sample, r stats.Ranked, proto string) []stats.Sample {
	return append(dst,
		stats.S(groupMembers, r.Values[0], proto, r.Name),
		stats.S(groupUpstreams, r.Values[1], proto, r.Name),
		stats.S(groupBytes, r.Values[2], proto, r.Name))
}

var (
	groupJoins        = stats.NewCounter("group_joins_total", "Socket group joins: TCP members joined, UDP members registered.")
	groupJoinsRefused = stats.NewCounter("group_joins_refused_total", "Socket group joins refused.", "reason")
	groupMembersLeft  = stats.NewCounter("group_members_left_total", "Socket group members gone: TCP members closed, UDP members expired.", "proto")
	groupPayload      = stats.NewCounter("group_payload_bytes_total", "Socket group payload: sent by members (in, once per chunk), written to TCP members (out).", "direction")
	groupMembers      = stats.NewGauge("group_members", "Members of a socket group (the largest groups; the rest summed as group=\"_other\").", "proto", "group")
	groupUpstreams    = stats.NewGauge("group_upstreams", "Drivers attached to a socket group (largest groups as for group_members).", "proto", "group")
	groupBytes        = stats.NewCounter("group_bytes_forwarded_total",
		"Bytes members sent to a socket group, counted once however many members hear them (largest groups as for group_members).", "proto", "group")
)
