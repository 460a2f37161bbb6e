// Package cluster makes replicas of the server act as one over NATS: the
// spanning channels of every kind (loop.Hub.SpanKind) carry their events to
// the replicas that want them, and what upstreams there send back comes
// home. It implements loop.Bus (the seam in loop/span.go) and is a
// loop.Kind of its own for ticks and metrics. Nothing here runs unless the
// binary is started with a cluster flag.
//
// Subjects, under the prefix P (--cluster-name):
//
//	P.all          every replica: heartbeats, hello, bye, interest, queries
//	P.node.N       replica N only: members' payloads and closes, snapshots, answers
//	P.ev.KIND.NAME a channel's member events, subscribed by the replicas that want them
//	P.claim.N      who holds node number N (request/reply, at start)
//
// Each replica is the only authority on what it holds: its members and
// its interest. It announces its interest when it changes and in full
// when a replica says hello; an owner answers new interest with a snapshot
// of its members. Liveness is the heartbeat on P.all: a replica silent for
// the peer timeout is gone, and so is everything it held.
package cluster

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/stats"
)

// Config is the cluster's configuration.
type Config struct {
	URLs        string        // external NATS servers, comma-separated; "" with Embedded
	Embedded    bool          // run a NATS server in the process
	Route       string        // embedded: host:port the server accepts routes on
	Peers       string        // embedded: the other replicas' route addresses, comma-separated host:port
	Name        string        // subject prefix and NATS cluster name
	Node        int           // node number, or -1 to claim one
	PeerTimeout time.Duration // a replica silent this long is gone
	QueueBytes  int           // bytes queued toward NATS before dropping
	// ParseFilter reads an upstream filter another replica sent as text
	// (its String); nil, or an error, admits every member.
	ParseFilter func(text string) (loop.Filter, error)
	Logger      *slog.Logger
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{Route: "127.0.0.1:6222", Name: "dispatch", Node: -1, PeerTimeout: 3 * time.Second, QueueBytes: 32 << 20}
}

// Enabled reports whether a cluster is configured.
func (c *Config) Enabled() bool { return c.URLs != "" || c.Embedded }

// Check validates the settings.
func (c *Config) Check() error {
	switch {
	case c.URLs != "" && c.Embedded:
		return errors.New("an external NATS and an embedded one exclude each other")
	case !validToken(c.Name):
		return errors.New("cluster name must be letters, digits, '-' or '_'")
	case c.Node < -1 || c.Node > loop.MaxNode:
		return fmt.Errorf("node must be -1 (claim one) or 0-%d", loop.MaxNode)
	case c.PeerTimeout < 300*time.Millisecond:
		return errors.New("peer timeout must be at least 300ms")
	case c.QueueBytes < 1<<20:
		return errors.New("queue bytes must be at least 1 MiB")
	}
	return nil
}

var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func validToken(s string) bool { return tokenRE.MatchString(s) }

// inQueue is how many NATS messages may wait for the loop; NATS drops what
// does not fit (a slow consumer, counted and answered by a resync). Messages
// are batched up to maxMessage, so it holds about 128 MiB at the very most.
const inQueue = 2048

// gatherTimeout bounds a cluster-wide answer (stats); it stays well inside
// the handshake deadline that bounds the request.
const gatherTimeout = 2 * time.Second

// Bus is one replica's end of the cluster.
type Bus struct {
	cfg      Config
	log      *slog.Logger
	node     int
	instance uint64
	prefix   string
	ns       *server.Server // embedded NATS, or nil
	nc       *nats.Conn
	out      *outQueue
	in       chan *nats.Msg
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
	inDrops  dropCounter // messages NATS dropped for us (slow consumer), counted off the loop

	ready atomic.Pointer[loop.Hub] // set by Start: posting to the loop works

	// Owned by the loop.
	hub          *loop.Hub
	connected    bool
	peers        map[uint16]*peer
	interest     map[loop.Key]map[uint16]*interest // what every other replica wants
	spans        map[loop.Key]*span
	dirty        []*span // spans whose own interest may have changed
	pending      []outMsg
	flushPosted  bool
	flushFn      func()
	queries      map[uint64]*gather
	nodeSubjects map[uint16]string
	nextQuery    uint64
	lastBeat     time.Time
	c            Counters
	dropLog      loop.RateLog
	frame        Frame
	scratch      []byte
	published    Counters // last Collect, for tests
	publishedMu  sync.Mutex
}

// Counters are the bus's counts.
type Counters struct {
	MessagesOut, BytesOut uint64 // NATS messages published
	MessagesIn, BytesIn   uint64
	EventsOut, EventsIn   uint64 // member events carried
	HeardForgotten        uint64 // datagram sources whose replica was forgotten at maxHeard
	DroppedOut            uint64 // not published: queue full or NATS away
	DroppedIn             uint64 // dropped by NATS before we read them
	Malformed             uint64
	Outages               uint64
	PeersLost             uint64 // replicas that went silent
	NodeConflicts         uint64
	Peers                 int
	Connected             bool
}

// peer is another replica.
type peer struct {
	node     uint16
	instance uint64
	lastSeen time.Time
	// resetting holds the keys named in a full interest announcement under
	// way; nil otherwise.
	resetting map[loop.Key]bool
}

// interest is what one other replica wants of a channel.
type interest struct {
	flags  uint8
	filter string
	parsed loop.Filter
}

// New checks cfg and connects: to the external NATS, or to a NATS server
// it starts in the process with routes to the peers. It then claims a node
// number. Attach it with Server.AttachBus and Server.Register before Start.
func New(cfg Config) (*Bus, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b := &Bus{
		cfg:          cfg,
		log:          cfg.Logger,
		prefix:       cfg.Name,
		instance:     randomUint64(),
		in:           make(chan *nats.Msg, inQueue),
		stop:         make(chan struct{}),
		peers:        make(map[uint16]*peer),
		interest:     make(map[loop.Key]map[uint16]*interest),
		spans:        make(map[loop.Key]*span),
		queries:      make(map[uint64]*gather),
		nodeSubjects: make(map[uint16]string),
	}
	b.flushFn = b.flush
	b.out = newOutQueue(cfg.QueueBytes)
	if err := b.connect(); err != nil {
		b.shutdownNATS()
		return nil, err
	}
	if err := b.claimNode(); err != nil {
		b.shutdownNATS()
		return nil, err
	}
	return b, nil
}

func randomUint64() uint64 {
	var x [8]byte
	_, _ = rand.Read(x[:])
	return binary.BigEndian.Uint64(x[:]) | 1
}

func (b *Bus) connect() error {
	opts := []nats.Option{
		nats.Name("dispatch"),
		nats.NoEcho(),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, 100*time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.PingInterval(time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ReconnectBufSize(-1), // publish nothing stale: the loop counts what NATS could not take
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { b.post(func() { b.disconnected(err) }) }),
		nats.ReconnectHandler(func(*nats.Conn) { b.post(b.reconnected) }),
		nats.ConnectHandler(func(*nats.Conn) { b.post(b.reconnected) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrSlowConsumer) {
				b.inDrops.add(1)
			}
		}),
	}
	url := b.cfg.URLs
	if b.cfg.Embedded {
		ns, err := b.startEmbedded()
		if err != nil {
			return err
		}
		b.ns = ns
		url = ns.ClientURL()
		opts = append(opts, nats.InProcessServer(ns))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	b.nc = nc
	return nil
}

// startEmbedded runs a NATS server that this process connects to
// in-process, accepting routes on cfg.Route and routing to the peers.
func (b *Bus) startEmbedded() (*server.Server, error) {
	host, portText, err := splitHostPort(b.cfg.Route)
	if err != nil {
		return nil, fmt.Errorf("cluster route address: %w", err)
	}
	port, _ := strconv.Atoi(portText)
	opts := &server.Options{
		ServerName: fmt.Sprintf("%s-%x", b.cfg.Name, b.instance),
		// This process connects in-process; the client port exists only
		// because routing waits for it, so it is loopback and random.
		Host:    "127.0.0.1",
		Port:    server.RANDOM_PORT,
		NoSigs:  true,
		NoLog:   true,
		Cluster: server.ClusterOpts{Name: b.cfg.Name, Host: host, Port: port},
	}
	var routes []string
	for _, p := range strings.Split(b.cfg.Peers, ",") {
		if p = strings.TrimSpace(p); p != "" {
			if !strings.Contains(p, "://") {
				p = "nats-route://" + p
			}
			routes = append(routes, p)
		}
	}
	if len(routes) > 0 {
		opts.Routes = server.RoutesFromStr(strings.Join(routes, ","))
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	lastErr := &lastNATSError{}
	ns.SetLogger(lastErr, false, false)
	ns.Start()
	deadline := time.Now().Add(10 * time.Second)
	for !ns.ReadyForConnections(100 * time.Millisecond) {
		if msg, fatal := lastErr.get(); fatal || time.Now().After(deadline) {
			ns.Shutdown()
			return nil, fmt.Errorf("embedded NATS did not start (its last error: %s)", msg)
		}
	}
	b.log.Info("embedded NATS started", "route", b.cfg.Route, "peers", len(routes))
	if len(routes) > 0 {
		// A number claimed before any route is up could be taken already.
		deadline := time.Now().Add(3 * time.Second)
		for ns.NumRoutes() == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // polling the route count, bounded by the deadline
		}
	}
	return ns, nil
}

func splitHostPort(addr string) (string, string, error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", "", fmt.Errorf("want host:port, got %q", addr)
	}
	host := strings.Trim(addr[:i], "[]")
	if host == "" {
		host = "0.0.0.0"
	}
	if n, err := strconv.Atoi(addr[i+1:]); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("want a port of 1-65535, got %q", addr)
	}
	return host, addr[i+1:], nil
}

var ordinalRE = regexp.MustCompile(`-(\d+)$`)

// claimNode settles the node number: the configured one, or the first
// free one from the host name's ordinal (a StatefulSet's pod-N) or a random
// start. A number is taken when a replica that holds or is claiming it
// answers on P.claim.N; of two claiming at once, the lower instance wins.
func (b *Bus) claimNode() error {
	start := int(b.instance>>20) % (loop.MaxNode + 1)
	if b.cfg.Node >= 0 {
		start = b.cfg.Node
	} else if host, err := os.Hostname(); err == nil {
		if m := ordinalRE.FindStringSubmatch(host); m != nil {
			if n, err := strconv.Atoi(m[1]); err == nil && n <= loop.MaxNode {
				start = n
			}
		}
	}
	if !b.waitConnected(5 * time.Second) {
		if b.cfg.Node < 0 {
			b.log.Warn("NATS not reachable: node number taken without a claim", "node", start)
		}
		b.node = start
		return b.holdClaim()
	}
	for i := 0; i <= loop.MaxNode; i++ {
		n := (start + i) % (loop.MaxNode + 1)
		taken, err := b.tryClaim(n)
		if err != nil {
			return err
		}
		if !taken {
			b.node = n
			return b.holdClaim()
		}
		if b.cfg.Node >= 0 {
			return fmt.Errorf("node number %d is held by another replica", n)
		}
	}
	return errors.New("no free node number")
}

func (b *Bus) waitConnected(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !b.nc.IsConnected() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond) // polling the connection state, bounded by the deadline
	}
	return true
}

func (b *Bus) tryClaim(n int) (taken bool, err error) {
	subject := b.prefix + ".claim." + strconv.Itoa(n)
	var me [8]byte
	binary.BigEndian.PutUint64(me[:], b.instance)
	// While asking, answer others claiming the same number.
	sub, err := b.nc.Subscribe(subject, func(m *nats.Msg) {
		_ = m.Respond(me[:])
	})
	if err != nil {
		return false, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.nc.Flush(); err != nil {
		return false, err
	}
	reply, err := b.nc.Request(subject, me[:], 500*time.Millisecond)
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrTimeout):
		return false, nil
	case err != nil:
		return false, err
	}
	if len(reply.Data) == 8 && binary.BigEndian.Uint64(reply.Data) > b.instance {
		return false, nil // a claimant that yields to us
	}
	return true, nil
}

// holdClaim answers claims of our number from now on.
func (b *Bus) holdClaim() error {
	_, err := b.nc.Subscribe(b.prefix+".claim."+strconv.Itoa(b.node), func(m *nats.Msg) {
		_ = m.Respond([]byte("held"))
	})
	return err
}

// Node implements loop.Bus.
func (b *Bus) Node() int { return b.node }

// Name implements loop.Kind.
func (b *Bus) Name() string { return "cluster" }

// Resolution implements loop.Resolver: the liveness checks run often
// enough to keep the peer timeout.
func (b *Bus) Resolution() time.Duration { return b.cfg.PeerTimeout / 3 }

// Start implements loop.Kind: subscriptions, the pumps, and hello.
func (b *Bus) Start(h *loop.Hub) error {
	b.hub = h
	b.connected = b.nc.IsConnected()
	b.ready.Store(h)
	for _, subject := range []string{b.prefix + ".all", b.prefix + ".node." + strconv.Itoa(b.node)} {
		if _, err := b.nc.ChanSubscribe(subject, b.in); err != nil {
			return fmt.Errorf("cluster: subscribe %s: %w", subject, err)
		}
	}
	b.wg.Add(2)
	go b.sendLoop()
	go b.receiveLoop()
	h.Log().Info("cluster joined", "node", b.node, "name", b.cfg.Name, "embedded", b.cfg.Embedded, "connected", b.connected)
	if b.connected {
		b.hello()
	}
	return nil
}

// Shutdown implements loop.Kind: once every kind has closed its channels
// (their members' CLOSED go out first), say bye and let the sender drain.
func (b *Bus) Shutdown(h *loop.Hub) {
	if !h.Post(b.finish) {
		b.finish()
	}
}

func (b *Bus) finish() {
	if b.connected {
		b.pending = append(b.pending, outMsg{op: opPub, subject: b.prefix + ".all", data: AppendSimple(b.header(), FrameBye)})
	}
	b.flush()
	b.out.close()
	b.stopOnce.Do(func() { close(b.stop) })
}

// Close waits, at most d, for what was queued to reach NATS, then closes
// the connection and the embedded server. Call it once the server stopped.
func (b *Bus) Close(d time.Duration) {
	b.out.close()
	b.stopOnce.Do(func() { close(b.stop) })
	drained := make(chan struct{})
	go func() { b.wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(d):
	}
	b.shutdownNATS()
}

func (b *Bus) shutdownNATS() {
	b.stopOnce.Do(func() { close(b.stop) })
	if b.nc != nil {
		_ = b.nc.FlushTimeout(time.Second)
		b.nc.Close()
	}
	if b.ns != nil {
		b.ns.Shutdown()
	}
}

// post runs fn on the loop, if there is one yet.
func (b *Bus) post(fn func()) {
	if h := b.ready.Load(); h != nil {
		h.Post(fn)
	}
}

// header starts a message from this replica.
func (b *Bus) header() []byte {
	return AppendHeader(make([]byte, 0, 256), Header{Node: uint16(b.node), Instance: b.instance})
}

// disconnected runs on the loop when NATS goes away.
func (b *Bus) disconnected(err error) {
	if !b.connected {
		return
	}
	b.connected = false
	b.c.Outages++
	b.hub.Log().Warn("cluster: NATS connection lost; serving local peers only until it returns", "err", err)
}

// reconnected runs on the loop when NATS is back (or first reached):
// everyone's interest is exchanged again, owners answer with snapshots,
// and replicas that do not speak within the peer timeout are gone.
func (b *Bus) reconnected() {
	if b.connected {
		return
	}
	b.connected = true
	now := time.Now()
	for _, p := range b.peers {
		p.lastSeen = now
	}
	if b.c.Outages > 0 {
		b.hub.Log().Info("cluster: NATS connection back; resynchronising", "outages", b.c.Outages)
	}
	b.hello()
}

// hello announces this replica and its whole interest.
func (b *Bus) hello() {
	b.queueAll(AppendSimple(AppendSimple(b.header(), FrameHeartbeat), FrameHello))
	b.lastBeat = b.hub.Now()
	b.announceAll()
}

// Tick implements loop.Kind: heartbeats, silent peers, late answers.
func (b *Bus) Tick(h *loop.Hub) {
	now := time.Now()
	if b.connected && now.Sub(b.lastBeat) >= b.cfg.PeerTimeout/3 {
		b.lastBeat = now
		b.queueAll(AppendSimple(b.header(), FrameHeartbeat))
	}
	if b.connected {
		for _, p := range b.peers {
			if now.Sub(p.lastSeen) > b.cfg.PeerTimeout {
				b.c.PeersLost++
				h.Log().Warn("cluster: replica silent, taking it as gone", "node", p.node, "silent", now.Sub(p.lastSeen).Round(time.Millisecond).String())
				b.peerGone(p.node)
			}
		}
	}
	for id, g := range b.queries {
		if now.After(g.deadline) {
			delete(b.queries, id)
			g.finish()
		}
	}
	if n := b.inDrops.take(); n > 0 {
		b.c.DroppedIn += n
		if b.dropLog.Due(now) {
			h.Log().Warn("cluster: NATS dropped bus messages for this replica (too slow); resynchronising", "count", n)
		}
		b.hello() // what was lost is sent again
	}
}

// queueAll queues a message for every replica.
func (b *Bus) queueAll(msg []byte) { b.publish(b.prefix+".all", msg) }

// publish queues one message toward NATS, at the end of the pass.
func (b *Bus) publish(subject string, msg []byte) {
	if !b.connected {
		b.c.DroppedOut++
		return
	}
	b.pending = append(b.pending, outMsg{op: opPub, subject: subject, data: msg})
	b.scheduleFlush()
}

func (b *Bus) scheduleFlush() {
	if !b.flushPosted {
		b.flushPosted = true
		if !b.hub.Post(b.flushFn) {
			b.flushPosted = false
		}
	}
}

// flush runs once at the end of a pass that produced bus traffic: spans
// whose interest changed announce it, and what was queued goes to the
// sender.
func (b *Bus) flush() {
	b.flushPosted = false
	for _, sp := range b.dirty {
		sp.dirty = false
		sp.reannounce()
	}
	clear(b.dirty)
	b.dirty = b.dirty[:0]
	for i := range b.pending {
		m := &b.pending[i]
		if m.op == opPub {
			b.c.MessagesOut++
			b.c.BytesOut += uint64(len(m.data))
		}
	}
	if dropped := b.out.push(b.pending); dropped > 0 {
		b.c.DroppedOut += dropped
		b.c.MessagesOut -= dropped
		if b.dropLog.Due(b.hub.Now()) {
			b.hub.Log().Warn("cluster: queue toward NATS full, dropping bus messages", "dropped_total", b.c.DroppedOut)
		}
	}
	clear(b.pending)
	b.pending = b.pending[:0]
}

// Collect implements loop.Kind.
func (b *Bus) Collect(_ *loop.Hub, dst []stats.Sample) []stats.Sample {
	c := b.c
	c.Peers = len(b.peers)
	c.Connected = b.connected
	b.publishedMu.Lock()
	b.published = c
	b.publishedMu.Unlock()
	connected := 0.0
	if c.Connected {
		connected = 1
	}
	return append(dst,
		stats.S(busMessages, float64(c.MessagesOut), "out"),
		stats.S(busMessages, float64(c.MessagesIn), "in"),
		stats.S(busBytes, float64(c.BytesOut), "out"),
		stats.S(busBytes, float64(c.BytesIn), "in"),
		stats.S(busEvents, float64(c.EventsOut), "out"),
		stats.S(busEvents, float64(c.EventsIn), "in"),
		stats.S(busDropped, float64(c.DroppedOut), "out"),
		stats.S(busDropped, float64(c.DroppedIn), "in"),
		stats.S(busDropped, float64(c.Malformed), "malformed"),
		stats.S(clusterHeardForgotten, float64(c.HeardForgotten)),
		stats.S(clusterOutages, float64(c.Outages)),
		stats.S(clusterPeersLost, float64(c.PeersLost)),
		stats.S(clusterConflicts, float64(c.NodeConflicts)),
		stats.S(clusterPeers, float64(c.Peers)),
		stats.S(clusterConnected, connected),
		stats.S(clusterNode, float64(b.node)),
	)
}

// Counters returns the counts as last published.
func (b *Bus) Counters() Counters {
	b.publishedMu.Lock()
	defer b.publishedMu.Unlock()
	return b.published
}

var (
	busMessages           = stats.NewCounter("cluster_messages_total", "NATS messages of the cluster bus.", "direction")
	busBytes              = stats.NewCounter("cluster_bytes_total", "Bytes of NATS messages of the cluster bus.", "direction")
	busEvents             = stats.NewCounter("cluster_events_total", "Member events carried over the cluster bus (each once, however many replicas hear it).", "direction")
	busDropped            = stats.NewCounter("cluster_dropped_total", "Bus messages lost: out (queue full or NATS away), in (NATS dropped them for a slow replica), malformed.", "reason")
	clusterHeardForgotten = stats.NewCounter("cluster_datagram_sources_forgotten_total", "Datagram sources heard by another replica whose replica a channel forgot at its bound (answers to them leave from the answering replica).")
	clusterOutages        = stats.NewCounter("cluster_outages_total", "Times the NATS connection was lost.")
	clusterPeersLost      = stats.NewCounter("cluster_peers_lost_total", "Replicas taken as gone after the peer timeout.")
	clusterConflicts      = stats.NewCounter("cluster_node_conflicts_total", "Heartbeats from another replica with this replica's node number.")
	clusterPeers          = stats.NewGauge("cluster_peers", "Other replicas heard from.")
	clusterConnected      = stats.NewGauge("cluster_connected", "1 while the NATS connection is up.")
	clusterNode           = stats.NewGauge("cluster_node", "This replica's node number.")
)

// dropCounter is counted off the loop.
type dropCounter struct {
	mu sync.Mutex
	n  uint64
}

func (d *dropCounter) add(n uint64) { d.mu.Lock(); d.n += n; d.mu.Unlock() }
func (d *dropCounter) take() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.n
	d.n = 0
	return n
}

// parseIP reads an IP as members carry it.
func parseIP(b []byte) netip.Addr {
	ip, _ := netip.ParseAddr(string(b))
	return ip
}

// lastNATSError keeps the embedded server's last error, to say why it did
// not start (a route port taken, say); a fatal one ends the wait at once.
// Its other lines are dropped: a peer that is down makes it log a failed
// route connection every second.
type lastNATSError struct {
	mu    sync.Mutex
	msg   string
	fatal bool
}

func (l *lastNATSError) set(fatal bool, format string, v ...any) {
	l.mu.Lock()
	l.msg = fmt.Sprintf(format, v...)
	l.fatal = l.fatal || fatal
	l.mu.Unlock()
}

func (l *lastNATSError) get() (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.msg == "" {
		return "none", l.fatal
	}
	return l.msg, l.fatal
}

func (l *lastNATSError) Errorf(format string, v ...any) { l.set(false, format, v...) }
func (l *lastNATSError) Fatalf(format string, v ...any) { l.set(true, format, v...) }
func (l *lastNATSError) Noticef(string, ...any)         {}
func (l *lastNATSError) Warnf(string, ...any)           {}
func (l *lastNATSError) Debugf(string, ...any)          {}
func (l *lastNATSError) Tracef(string, ...any)          {}
