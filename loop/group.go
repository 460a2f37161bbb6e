package loop

// Socket groups re-implement the SocketForwarder on the same loop as
// dispatch: a group is a channel whose policy is toMembers, so a member's
// payload is encoded once into the outbox arena and queued for every other
// member (and, as a RECEIVED message, for the drivers attached to the
// group). Members are raw TCP sockets that joined with a prefix line, or
// UDP peers that registered with a prefix datagram (group_udp.go). Output
// to TCP members goes through the outbox like driver output, so one slow
// member is cut at its own bound and never stalls the group.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/stats"
)

// GroupHost is a preconfigured TCP member: every connection from Host joins
// Group at once, without sending the join prefix.
type GroupHost struct {
	Group string
	Host  netip.Addr
}

func (g GroupHost) String() string {
	if g.Host.Is6() {
		return g.Group + ":[" + g.Host.String() + "]"
	}
	return g.Group + ":" + g.Host.String()
}

// ParseGroupHosts parses comma-separated group:host entries; an IPv6 host
// is written in brackets (group:[::1]). Whitespace around an entry is
// dropped; the group id is everything before the host's colon.
func ParseGroupHosts(s string) ([]GroupHost, error) {
	var hosts []GroupHost
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		var group, host string
		if strings.HasSuffix(entry, "]") {
			i := strings.LastIndex(entry, ":[")
			if i < 0 {
				return nil, fmt.Errorf("group host %q: want group:host", entry)
			}
			group, host = entry[:i], entry[i+2:len(entry)-1]
		} else {
			i := strings.LastIndexByte(entry, ':')
			if i < 0 {
				return nil, fmt.Errorf("group host %q: want group:host", entry)
			}
			group, host = entry[:i], entry[i+1:]
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return nil, fmt.Errorf("group host %q: %w", entry, err)
		}
		hosts = append(hosts, GroupHost{Group: group, Host: ip.Unmap().WithZone("")})
	}
	return hosts, nil
}

// ParseUDPMembers parses comma-separated host:port entries ([v6]:port).
func ParseUDPMembers(s string) ([]netip.AddrPort, error) {
	var members []netip.AddrPort
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(entry)
		if err != nil {
			return nil, fmt.Errorf("udp member %q: %w", entry, err)
		}
		members = append(members, netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()))
	}
	return members, nil
}

// maxGroupIDLen caps GroupIDMaxLen: a join line is buffered whole.
const maxGroupIDLen = 4096

// checkGroups validates the socket-group settings and turns a bare port
// into an address on DeviceHost.
func (cfg *Config) checkGroups() error {
	switch {
	case cfg.MaxMemberPending < 64<<10:
		return errors.New("max member pending must be at least 64 KiB")
	case cfg.GroupPrefix == "" || strings.ContainsAny(cfg.GroupPrefix, "\r\n"):
		return errors.New("group prefix must be one non-empty line")
	case cfg.GroupJoinTimeout <= 0:
		return errors.New("group join timeout must be positive")
	case cfg.GroupIDMaxLen < 1 || cfg.GroupIDMaxLen > maxGroupIDLen:
		return fmt.Errorf("group id max length must be in 1-%d", maxGroupIDLen)
	case cfg.GroupUDPIdle <= 0:
		return errors.New("group UDP idle time must be positive")
	}
	cfg.GroupTCPAddr = groupListenAddr(cfg.GroupTCPAddr, cfg.DeviceHost)
	cfg.GroupUDPAddr = groupListenAddr(cfg.GroupUDPAddr, cfg.DeviceHost)
	hosts := make(map[netip.Addr]string, len(cfg.GroupTCPPreconfig))
	for _, h := range cfg.GroupTCPPreconfig {
		if problem := groupIDProblem(h.Group, cfg.GroupIDMaxLen); problem != "" {
			return fmt.Errorf("preconfigured TCP group member %s: %s", h, problem)
		}
		if !h.Host.IsValid() {
			return fmt.Errorf("preconfigured TCP group member %s: no host", h)
		}
		if other, dup := hosts[h.Host]; dup && other != h.Group {
			return fmt.Errorf("preconfigured TCP host %s is listed for groups %q and %q", h.Host, other, h.Group)
		}
		hosts[h.Host] = h.Group
	}
	for _, a := range cfg.GroupUDPPreconfig {
		if !a.IsValid() || a.Port() == 0 {
			return fmt.Errorf("preconfigured UDP group member %q: want ip:port", a.String())
		}
	}
	return nil
}

// groupListenAddr makes a bare port mean that port on DeviceHost, where the
// dispatch ports listen too.
func groupListenAddr(addr, deviceHost string) string {
	if _, err := strconv.ParseUint(addr, 10, 16); err == nil {
		return net.JoinHostPort(deviceHost, addr)
	}
	return addr
}

// groupIDProblem says what is wrong with a group id, or "" when nothing is.
// Ids are compared byte for byte; valid UTF-8 keeps them exact as JSON keys.
func groupIDProblem(id string, maxLen int) string {
	switch {
	case id == "":
		return "empty group id"
	case len(id) > maxLen:
		return "group id too long"
	case !utf8.ValidString(id):
		return "group id is not valid UTF-8"
	}
	return ""
}

// groupState is the loop's socket-group bookkeeping.
type groupState struct {
	prefix   []byte
	tcpLn    net.Listener          // nil while off or closed
	tcpPort  int                   // the TCP group listener's port, for logs
	tcp      map[string]*channel   // TCP groups by id, while they have members or drivers
	udp      *channel              // the UDP group, when configured
	hosts    map[netip.Addr]string // preconfigured TCP hosts and their group
	conns    int                   // TCP group connections, joining or joined
	nextID   uint64                // TCP member ids, unique across groups and never reused
	joining  fifo[*groupMember]    // by join deadline; entries that have joined since are skipped
	expiring fifo[*udpMember]      // UDP members by the time their idleness is next checked

	refused      rateLog // joins refused
	unregistered rateLog // datagrams from non-members dropped
	sendFailed   rateLog // datagrams to members the socket would not take
}

// socketGroup is what a channel with policy toMembers holds beyond a
// dispatch port.
type socketGroup struct {
	id             string                        // the UDP group's id is its port in decimal
	members        map[uint64]*groupMember       // TCP group: joined members by id
	udpMembers     map[netip.AddrPort]*udpMember // UDP group: members by address
	bytesForwarded uint64                        // member payload, counted once per chunk
}

// startGroups binds the group listeners on the loop before the server
// reports itself ready.
func (s *Server) startGroups() error {
	if s.cfg.GroupTCPAddr == "" && s.cfg.GroupUDPAddr == "" {
		return nil
	}
	type bound struct {
		tcp, udp net.Addr
		err      error
	}
	done := make(chan bound, 1)
	if !s.post(func() {
		var b bound
		b.tcp, b.udp, b.err = s.st.openGroups()
		done <- b
	}) {
		return errors.New("socket groups: the event loop is not running")
	}
	select {
	case b := <-done:
		s.groupTCPAddr, s.groupUDPAddr = b.tcp, b.udp
		return b.err
	case <-s.loopStopped:
		return errors.New("socket groups: the event loop stopped")
	}
}

// GroupTCPAddr is the bound TCP group listener, or nil when it is off.
func (s *Server) GroupTCPAddr() net.Addr { return s.groupTCPAddr }

// GroupUDPAddr is the bound UDP group port, or nil when it is off.
func (s *Server) GroupUDPAddr() net.Addr { return s.groupUDPAddr }

// openGroups binds the configured group listeners; on failure nothing
// stays open.
func (st *state) openGroups() (tcpAddr, udpAddr net.Addr, err error) {
	gs := &st.groups
	gs.prefix = []byte(st.cfg.GroupPrefix)
	gs.tcp = make(map[string]*channel)
	gs.hosts = make(map[netip.Addr]string, len(st.cfg.GroupTCPPreconfig))
	for _, h := range st.cfg.GroupTCPPreconfig {
		gs.hosts[h.Host] = h.Group
	}
	if addr := st.cfg.GroupTCPAddr; addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("socket group TCP listener on %s: %w", addr, err)
		}
		gs.tcpLn, gs.tcpPort = ln, ln.Addr().(*net.TCPAddr).Port
		tcpAddr = ln.Addr()
		st.s.acceptWG.Add(1)
		go st.s.acceptLoop(ln, "group", func(c net.Conn) any { return newGroupMember(c) })
		st.log.Info("group listening", "proto", "tcp", "addr", tcpAddr.String())
	}
	if addr := st.cfg.GroupUDPAddr; addr != "" {
		ch, err := st.openUDPGroup(addr)
		if err != nil {
			if gs.tcpLn != nil {
				_ = gs.tcpLn.Close()
				gs.tcpLn = nil
			}
			return nil, nil, fmt.Errorf("socket group UDP port on %s: %w", addr, err)
		}
		gs.udp = ch
		udpAddr = ch.udp.conn.LocalAddr()
		st.log.Info("group listening", "proto", "udp", "addr", udpAddr.String())
	}
	return tcpAddr, udpAddr, nil
}

// closeGroups closes the group listeners and every TCP member, on shutdown.
func (st *state) closeGroups() {
	gs := &st.groups
	if gs.tcpLn != nil {
		_ = gs.tcpLn.Close()
		gs.tcpLn = nil
	}
	for m, ok := gs.joining.front(); ok; m, ok = gs.joining.front() {
		gs.joining.pop()
		st.dropMember(m)
	}
	for _, ch := range gs.tcp {
		for _, m := range ch.group.members {
			st.dropMember(m) // its OnClose deletes it from the map: allowed while ranging
		}
	}
	if ch := gs.udp; ch != nil && !ch.closed {
		ch.closed = true
		st.closeUDP(ch.udp)
	}
}

// tcpGroup returns the TCP group with this id, creating it.
func (st *state) tcpGroup(id string) *channel {
	if ch := st.groups.tcp[id]; ch != nil {
		return ch
	}
	ch := &channel{
		proto:   protoTCP,
		port:    st.groups.tcpPort,
		policy:  toMembers,
		version: 1,
		group:   &socketGroup{id: id, members: make(map[uint64]*groupMember)},
	}
	st.groups.tcp[id] = ch
	return ch
}

// forgetIdleGroup drops a TCP group that has neither members nor drivers:
// any id can name a group, so empty ones must not accumulate. The UDP group
// lives as long as its port.
func (st *state) forgetIdleGroup(ch *channel) {
	if ch.proto != protoTCP || ch.closed || len(ch.group.members) > 0 || len(ch.upstreams) > 0 {
		return
	}
	ch.closed = true
	delete(st.groups.tcp, ch.group.id)
}

// memberState is where a TCP group connection is in its life.
type memberState uint8

const (
	memberNew     memberState = iota // not admitted (refused in OnOpen): never counted
	memberJoining                    // admitted, waiting for its join line
	memberJoined                     // in a group
	memberClosed
)

// groupMember is a TCP connection to the group listener: joining, then a
// member of one group. It is an outlet: what other members send reaches it
// through the outbox, under MaxMemberPending.
type groupMember struct {
	sink
	ip     netip.Addr
	ipText []byte // the peer IP as the dispatch protocol carries it
	peer   string
	state  memberState
	ch     *channel // its group, once joined
	id     uint64

	deadline  time.Time // to join by
	firstRead int       // bytes of the first read: the join message when no newline comes
}

// newGroupMember runs on the accept goroutine: it only reads immutable data.
func newGroupMember(c net.Conn) *groupMember {
	ip := peerIP(c)
	return &groupMember{ip: ip, ipText: []byte(ip.String()), peer: c.RemoteAddr().String()}
}

func (m *groupMember) output() *sink { return &m.sink }

// cutSlow closes a member whose pending output passed MaxMemberPending.
func (m *groupMember) cutSlow(st *state) {
	if m.closing {
		return
	}
	m.closing = true
	st.c.SlowMemberCuts++
	st.log.Warn("socket group member not keeping up, closing it", "group", m.ch.group.id, "member", m.id,
		"peer", m.peer, "pending_bytes", m.conn.OutboundBuffered(), "limit", st.cfg.MaxMemberPending)
	st.closeConn(m.conn)
}

// openGroupMember admits a connection to the group listener: a
// preconfigured host joins its group at once, anyone else has until the
// join deadline to send a join line.
func (st *state) openGroupMember(c gnet.Conn, m *groupMember) gnet.Action {
	m.conn = c
	m.member = true
	gs := &st.groups
	switch {
	case gs.tcpLn == nil || st.s.stopping.Load():
		st.refuseJoin(m.peer, "listener closed")
		return gnet.Close
	case st.deviceConns >= st.cfg.MaxConns || gs.conns >= st.cfg.MaxPortConns:
		st.refuseJoin(m.peer, "connection cap reached")
		return gnet.Close
	}
	st.deviceConns++
	gs.conns++
	if id, ok := gs.hosts[m.ip]; ok {
		st.joinGroup(m, id)
		return gnet.None
	}
	m.state = memberJoining
	m.deadline = time.Now().Add(st.cfg.GroupJoinTimeout)
	gs.joining.push(m)
	return gnet.None
}

func (st *state) groupMemberTraffic(c gnet.Conn, m *groupMember) gnet.Action {
	switch {
	case m.state == memberJoining:
		return st.joinTraffic(c, m)
	case m.state != memberJoined || m.closing:
		_, _ = c.Discard(-1) // cut off, its close is on the way
		return gnet.None
	}
	st.forwardBuffered(m)
	return gnet.None
}

// joinTraffic looks for the join line in what a joining member has sent so
// far; gnet keeps unconsumed bytes for the next call.
func (st *state) joinTraffic(c gnet.Conn, m *groupMember) gnet.Action {
	buf, _ := c.Peek(-1)
	if m.firstRead == 0 {
		m.firstRead = len(buf)
	}
	prefix := st.groups.prefix
	maxLine := len(prefix) + st.cfg.GroupIDMaxLen + 1 // room for a CR before the LF
	if i := bytes.IndexByte(buf[:min(len(buf), maxLine+1)], '\n'); i >= 0 {
		return st.completeJoin(m, buf[:i], i+1)
	}
	if len(buf) > maxLine {
		// No newline can end a valid join line any more: the join message is
		// the first read, as the original SocketForwarder reads it.
		return st.completeJoin(m, buf[:m.firstRead], m.firstRead)
	}
	if n := min(len(buf), len(prefix)); !bytes.Equal(buf[:n], prefix[:n]) {
		st.refuseJoin(m.peer, "bad prefix")
		return gnet.Close
	}
	return gnet.None // the rest of the line, or the deadline, will tell
}

// completeJoin joins the group the line names and forwards whatever the
// member sent after it (from offset next) as its first payload.
func (st *state) completeJoin(m *groupMember, line []byte, next int) gnet.Action {
	line = bytes.TrimRight(line, "\r\n")
	prefix := st.groups.prefix
	if !bytes.HasPrefix(line, prefix) {
		st.refuseJoin(m.peer, "bad prefix")
		return gnet.Close
	}
	if len(line)-len(prefix) > st.cfg.GroupIDMaxLen {
		st.refuseJoin(m.peer, "group id too long")
		return gnet.Close
	}
	id := string(line[len(prefix):]) // copied before the buffer is discarded
	if problem := groupIDProblem(id, st.cfg.GroupIDMaxLen); problem != "" {
		st.refuseJoin(m.peer, problem)
		return gnet.Close
	}
	_, _ = m.conn.Discard(next)
	st.joinGroup(m, id)
	st.forwardBuffered(m)
	return gnet.None
}

// expireGroupJoins runs every tick. Joining members are queued in deadline
// order, so it only looks at those whose deadline has passed.
func (st *state) expireGroupJoins() {
	q := &st.groups.joining
	for m, ok := q.front(); ok && !m.deadline.After(st.now); m, ok = q.front() {
		q.pop()
		if m.state != memberJoining {
			continue
		}
		if m.firstRead == 0 {
			st.c.GroupJoinTimeouts++
			st.refuseJoin(m.peer, "no join message before the deadline")
			st.closeConn(m.conn)
			continue
		}
		// No newline came: the join message is the first read.
		buf, _ := m.conn.Peek(-1)
		if st.completeJoin(m, buf[:m.firstRead], m.firstRead) == gnet.Close {
			st.closeConn(m.conn)
		}
	}
}

// refuseJoin counts a refused join; the log line is rate-limited because
// anyone can connect.
func (st *state) refuseJoin(peer any, reason string) {
	st.c.GroupJoinsRefused++
	if st.groups.refused.due(st.now) {
		st.log.Info("refused socket group joins", "reason", reason, "last_peer", peer, "count", st.groups.refused.take())
	}
}

func (st *state) joinGroup(m *groupMember, id string) {
	ch := st.tcpGroup(id)
	m.state, m.ch = memberJoined, ch
	m.id = st.groups.nextID
	st.groups.nextID++
	ch.group.members[m.id] = m
	st.c.GroupJoins++
	st.log.Debug("socket group member joined", "group", id, "member", m.id, "peer", m.peer)
	st.queueGroupEvent(ch, codec.Opened, m.ipText, m.ip, m.id, nil)
}

// forwardBuffered forwards everything a joined member has sent so far.
func (st *state) forwardBuffered(m *groupMember) {
	if data, _ := m.conn.Peek(-1); len(data) > 0 {
		st.forwardFromMember(m, data)
	}
	_, _ = m.conn.Discard(-1)
}

// forwardFromMember encodes one read once and queues it for every other
// member of the group and, as RECEIVED, for the drivers that admit the
// sender. Nothing is written here: the outbox writes at the end of the pass.
func (st *state) forwardFromMember(m *groupMember, data []byte) {
	ch := m.ch
	g := ch.group
	st.c.GroupChunksForwarded++
	st.c.GroupBytesForwarded += uint64(len(data))
	g.bytesForwarded += uint64(len(data))
	if len(g.members) > 1 {
		start, end := st.out.appendRaw(data)
		for _, other := range g.members {
			if other != m {
				st.queue(other, start, end)
			}
		}
		st.scheduleFlush()
	}
	st.queueGroupEvent(ch, codec.Received, m.ipText, m.ip, m.id, data)
}

// closeGroupMember runs when a group connection ends, whichever side closed it.
func (st *state) closeGroupMember(m *groupMember) {
	was := m.state
	m.state = memberClosed
	m.closing = true
	m.spans = nil
	if was != memberJoining && was != memberJoined {
		return
	}
	st.deviceConns--
	st.groups.conns--
	if was != memberJoined {
		return
	}
	ch := m.ch
	delete(ch.group.members, m.id)
	st.c.GroupMembersLeft++
	st.log.Debug("socket group member left", "group", ch.group.id, "member", m.id, "peer", m.peer)
	st.queueGroupEvent(ch, codec.Closed, m.ipText, m.ip, m.id, nil)
	st.forgetIdleGroup(ch)
}

// dropMember closes a member from the server side; closeGroupMember follows.
func (st *state) dropMember(m *groupMember) {
	if m.state == memberJoining || m.state == memberJoined {
		st.closeConn(m.conn)
	}
}

// queueGroupEvent encodes one dispatch message once and queues it for every
// driver on the group that admits the member's IP.
func (st *state) queueGroupEvent(ch *channel, t codec.MsgType, ipText []byte, ip netip.Addr, id uint64, data []byte) {
	targets := st.targets[:0]
	for _, d := range ch.upstreams {
		if d.accept.contains(ip) {
			targets = append(targets, d)
		}
	}
	if len(targets) > 0 {
		start, end := st.out.appendDispatchFrame(t, ipText, id, data)
		for _, d := range targets {
			st.queue(d, start, end)
		}
		st.scheduleFlush()
	}
	clear(targets)
	st.targets = targets[:0]
}

// writeToMember carries a driver's WRITE to one TCP member, through the
// outbox and under the member's bound. It is not forwarded to the others.
func (st *state) writeToMember(m *groupMember, data []byte) {
	if len(data) == 0 || m.closing {
		return
	}
	st.c.GroupBytesFromDrivers += uint64(len(data))
	start, end := st.out.appendRaw(data)
	st.queue(m, start, end)
	st.scheduleFlush()
}

// groupDriverMessage handles a driver's WRITE or CLOSE on a group: TCP
// members are addressed by id, UDP members by ip and port. An unknown
// member is a silent no-op, as for dispatch ports.
func (st *state) groupDriverMessage(d *driver, msg codec.Message) {
	ch := d.ch
	switch {
	case msg.Type == codec.Write && ch.proto == protoUDP:
		st.writeToUDPMember(d, msg.IP, msg.ID, msg.Data)
	case msg.Type == codec.Write:
		if m := ch.group.members[msg.ID]; m != nil {
			st.writeToMember(m, msg.Data)
		}
	case msg.Type == codec.Close && ch.proto == protoTCP:
		if m := ch.group.members[msg.ID]; m != nil {
			st.dropMember(m)
		}
	}
}

// everyone is the accept list of a group driver that gives none.
var everyone = acceptList{prefixes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}

// upgradeGroupDriver attaches a driver to a socket group:
// group_dispatch?group=ID[&proto=tcp|udp][&accept=IPS]. The UDP group's id
// is its port. Refusals are answered before the upgrade, as for dispatch.
func (st *state) upgradeGroupDriver(c gnet.Conn, h *httpConn, req *http.Request, head []byte) gnet.Action {
	query, refused := st.upgradeRequest(c, h, req, "group")
	if refused != gnet.None {
		return refused
	}
	ids, ok := query["group"]
	if !ok {
		return st.paramError(c, h, http.StatusUnprocessableEntity, "group", "missing required parameter 'group'")
	}
	id := ids[0]
	p := protoTCP
	switch query.Get("proto") {
	case "", "tcp":
	case "udp":
		p = protoUDP
	default:
		return st.paramError(c, h, http.StatusBadRequest, "proto", "invalid parameter value for 'proto'")
	}
	accept := everyone
	if values, ok := query["accept"]; ok {
		var err error
		if accept, err = parseAcceptList(values[0]); err != nil {
			return st.paramError(c, h, http.StatusBadRequest, "accept", "invalid parameter value for 'accept'")
		}
	}
	gs := &st.groups
	switch {
	case p == protoUDP && (gs.udp == nil || gs.udp.closed || id != gs.udp.group.id):
		return st.paramError(c, h, http.StatusNotFound, "group", "no such UDP group")
	case p == protoTCP && gs.tcpLn == nil:
		return st.paramError(c, h, http.StatusNotFound, "group", "no TCP socket groups")
	case p == protoTCP && groupIDProblem(id, st.cfg.GroupIDMaxLen) != "":
		return st.paramError(c, h, http.StatusBadRequest, "group", "invalid parameter value for 'group'")
	}
	answer, ok := st.websocketAnswer(c, h, head)
	if !ok {
		return gnet.Close
	}
	ch := gs.udp
	if p == protoTCP {
		ch = st.tcpGroup(id)
	}
	d := st.attachDriver(c, h, req, answer, accept, ch)
	st.log.Info("driver attached to socket group", "proto", p.String(), "group", id, "peer", d.peer)
	st.announceMembers(d)
	return gnet.None
}

// announceMembers sends a newly attached driver OPENED for every current
// member it admits, in id (or address) order, so that it sees every member
// as OPENED, RECEIVED…, CLOSED like a driver that was there first.
func (st *state) announceMembers(d *driver) {
	ch := d.ch
	g := ch.group
	queued := false
	if ch.proto == protoTCP {
		members := make([]*groupMember, 0, len(g.members))
		for _, m := range g.members {
			if !m.closing && d.accept.contains(m.ip) {
				members = append(members, m)
			}
		}
		slices.SortFunc(members, func(a, b *groupMember) int { return cmpUint64(a.id, b.id) })
		for _, m := range members {
			start, end := st.out.appendDispatchFrame(codec.Opened, m.ipText, m.id, nil)
			st.queue(d, start, end)
			queued = true
		}
	} else {
		members := make([]*udpMember, 0, len(g.udpMembers))
		for _, m := range g.udpMembers {
			if d.accept.contains(m.addr.Addr()) {
				members = append(members, m)
			}
		}
		slices.SortFunc(members, func(a, b *udpMember) int { return a.addr.Compare(b.addr) })
		for _, m := range members {
			start, end := st.out.appendDispatchFrame(codec.Opened, m.ipText, uint64(m.addr.Port()), nil)
			st.queue(d, start, end)
			queued = true
		}
	}
	if queued {
		st.scheduleFlush()
	}
}

func cmpUint64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// groupsSnapshot is the groups section of the published state and the body
// of GET .../groups.
func (st *state) groupsSnapshot() stats.Groups {
	var g stats.Groups
	if len(st.groups.tcp) > 0 {
		g.TCP = make([]stats.Group, 0, len(st.groups.tcp))
		for id, ch := range st.groups.tcp {
			g.TCP = append(g.TCP, stats.Group{ID: id, Members: len(ch.group.members),
				Upstreams: len(ch.upstreams), BytesForwarded: ch.group.bytesForwarded})
		}
		slices.SortFunc(g.TCP, stats.ByID)
	}
	if ch := st.groups.udp; ch != nil && !ch.closed {
		g.UDP = []stats.Group{{ID: ch.group.id, Members: len(ch.group.udpMembers),
			Upstreams: len(ch.upstreams), BytesForwarded: ch.group.bytesForwarded}}
	}
	return g
}

func (st *state) groupsJSON() []byte {
	g := st.groupsSnapshot()
	return g.AppendJSON(nil)
}

// rateLog keeps the log lines of a frequent event down to the first one and
// then at most one per interval, each carrying the count since the last.
type rateLog struct {
	count  int
	logged int64 // unix seconds of the last line
}

// due counts one event and reports whether a line is due for it.
func (r *rateLog) due(now time.Time) bool {
	r.count++
	if now.Unix()-r.logged < refusalLogInterval {
		return false
	}
	r.logged = now.Unix()
	return true
}

// take returns the events counted since the last line.
func (r *rateLog) take() int {
	n := r.count
	r.count = 0
	return n
}

// fifo is a queue that reuses its backing array.
type fifo[T any] struct {
	items []T
	head  int
}

func (q *fifo[T]) push(x T) { q.items = append(q.items, x) }

func (q *fifo[T]) front() (T, bool) {
	if q.head == len(q.items) {
		var zero T
		return zero, false
	}
	return q.items[q.head], true
}

// pop drops the front item; the array is compacted once half of it is
// consumed, so each item is moved at most once on average.
func (q *fifo[T]) pop() {
	var zero T
	q.items[q.head] = zero
	q.head++
	switch {
	case q.head == len(q.items):
		q.items, q.head = q.items[:0], 0
	case q.head >= 64 && 2*q.head >= len(q.items):
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
}
