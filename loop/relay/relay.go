// Package relay is the relay-topics kind: WebSocket clients meet on topics,
// admitted by signed tokens as practable's relay admits them. A client
// POSTs its JWT to the access API and gets a URL with a single-use code;
// it opens a WebSocket there, and from then on every message a client with
// the write scope sends goes, as its own frame with its own opcode, to
// every other client of the topic with the read scope. A topic is a
// channel whose members are those clients (policy ToMembers); output uses
// DropWhenFull, so a slow subscriber loses whole messages and never slows
// the others. A topic may instead name another kind's channel (a dispatch
// port, a socket group): the client then watches it as a driver would
// (loop.Upstream.Watcher, the driver protocol) and, with write, answers
// its members.
//
// The access API runs off the loop, on net/http goroutines of the relay's
// own listener (token checks, the deny list's disk store); it reaches the
// loop's state (codes, connections, the deny list's copy) only by posting
// to it (loop.Server.Do).
//
// With replicas (cluster.go), topics span them, a code is redeemed on any
// replica by asking the one that issued it, and denies and allows reach
// every replica's list and connections.
package relay

import (
	"container/heap"
	"crypto"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/stats"
)

// KindName is the kind's name in channel keys and metrics.
const KindName = "relay"

// Kind serves relay topics.
type Kind struct {
	cfg        Config
	srv        *loop.Server
	listener   *loop.Listener
	accessPath string // path of the access base URL, without a trailing slash
	relayPath  string // path of the relay base URL, likewise
	secret     []byte
	public     crypto.PublicKey
	store      *store // nil: the deny list lives in memory only

	// Set in Start, before the listener serves, and read-only after.
	accessURL, relayURL string
	verifier            *Verifier
	logger              *slog.Logger
	codePrefix          string       // in a cluster: the node number that starts every code issued here
	writer              *storeWriter // writes the verdicts heard from other replicas; nil without a store

	adminMu sync.Mutex // serialises deny and allow: store, then loop

	// Off the loop: counted by the access API's goroutines.
	authFailures map[Reason]*atomic.Uint64
	badRequests  atomic.Uint64
	refusedLog   lockedRateLog
	storeLog     lockedRateLog

	// On the loop.
	hub       *loop.Hub
	topics    map[string]*topic
	conns     map[*conn]struct{}
	expiry    expiryHeap
	codes     map[string]*grant
	codeQueue []*grant // by expiry (codes live CodeTTL from issue, so issue order)
	denied    map[string]time.Time
	allowed   map[string]time.Time
	verdicts  map[string]verdict // the latest deny or allow of each booking, until its expiry
	nextID    uint64
	lastSweep time.Time
	lastPrune time.Time

	clients, watchers *loop.Class
	c                 counters
}

// counters are the kind's own counts on the loop.
type counters struct {
	codesIssued, codesUsed, codesExpired, codesVoided, codesRefused uint64
	bookingsDenied, connsDenied                                     uint64
	messagesIn, bytesIn, deliveries, bytesOut                       uint64
	watcherWrites                                                   uint64
	remoteCodes                                                     [remoteCodeOutcomes]uint64
	replicaVerdicts                                                 [replicaVerdictOutcomes]uint64
}

// Register adds the relay kind and its listener to s; with cfg.Listen
// empty it does nothing and returns nil. It opens the deny list's store
// (disk I/O, before the loop runs).
func Register(s *loop.Server, cfg Config) (*Kind, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	k := &Kind{cfg: cfg, srv: s, secret: []byte(cfg.Secret),
		topics: map[string]*topic{}, conns: map[*conn]struct{}{}, codes: map[string]*grant{},
		denied: map[string]time.Time{}, allowed: map[string]time.Time{}, verdicts: map[string]verdict{},
		authFailures: map[Reason]*atomic.Uint64{}}
	for _, r := range reasons {
		k.authFailures[r] = new(atomic.Uint64)
	}
	k.accessPath, _ = basePath(cfg.AccessURL, "http", "https")
	k.relayPath, _ = basePath(cfg.RelayURL, "ws", "wss")
	if cfg.PublicKeyFile != "" {
		key, err := ReadPublicKey(cfg.PublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("relay public key: %w", err)
		}
		k.public = key
	}
	if _, err := NewVerifier(k.secret, k.public, cfg.AccessURL); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	if cfg.DataDir != "" {
		st, verdicts, err := openStore(cfg.DataDir, time.Now())
		if err != nil {
			return nil, fmt.Errorf("relay data directory: %w", err)
		}
		k.store = st
		k.writer = newStoreWriter()
		for _, v := range verdicts {
			k.verdicts[v.bid] = v
			if v.deny {
				k.denied[v.bid] = v.exp
			} else {
				k.allowed[v.bid] = v.exp
			}
		}
	}
	s.Register(k)
	k.listener = s.NewListener("relay", cfg.Listen)
	k.listener.HandlePrefix(k.relayPath+"/session/", k.connect)
	k.listener.ServeOther(k.accessHandler())
	return k, nil
}

// Name implements loop.Kind.
func (k *Kind) Name() string { return KindName }

// Resolution implements loop.Resolver: token expiries, code lifetimes and
// pings are kept to within a quarter of a second or better.
func (k *Kind) Resolution() time.Duration {
	return min(time.Second, k.cfg.CodeTTL, k.cfg.PingInterval)
}

// Start implements loop.Kind: the listener is bound; the base URLs it
// defaults to are known now.
func (k *Kind) Start(h *loop.Hub) error {
	k.hub = h
	k.logger = h.Log()
	k.clients = relayClass(h, "client").
		Say(loop.EndStalled, "relay subscriber drained nothing for the stall timeout, closing it")
	k.watchers = relayClass(h, "watcher").
		Say(loop.EndStalled, "relay watcher drained nothing for the stall timeout, closing it").
		Say(loop.EndMalformed, "malformed message from a relay watcher, closing it")
	addr := k.listener.Addr().String()
	k.accessURL = strings.TrimRight(k.cfg.AccessURL, "/")
	if k.accessURL == "" {
		k.accessURL = "http://" + addr
	}
	k.relayURL = strings.TrimRight(k.cfg.RelayURL, "/")
	if k.relayURL == "" {
		k.relayURL = "ws://" + addr
	}
	v, err := NewVerifier(k.secret, k.public, k.accessURL)
	if err != nil {
		return err
	}
	k.verifier = v
	k.lastSweep, k.lastPrune = h.Now(), h.Now()
	k.startCluster(h)
	if k.writer != nil {
		k.writer.start(k.store, k.storeFailed)
	}
	store := "memory only (set a data directory to keep it across restarts)"
	if k.store != nil {
		store = k.cfg.DataDir
	}
	h.Log().Info("relay listening", "addr", addr, "access_url", k.accessURL, "relay_url", k.relayURL,
		"algorithms", strings.Join(v.Algorithms(), ","), "deny_list", store, "denied", len(k.denied))
	return nil
}

// relayClass registers a class of relay connections with the log lines
// every role shares.
func relayClass(h *loop.Hub, role string) *loop.Class {
	return h.NewClass(KindName, role).
		Say(loop.EndExpired, "relay token expired, closing the connection").
		Say(loop.EndDenied, "relay booking deny-listed, closing the connection").
		Say(loop.EndTimeout, "relay connection did not answer a ping, closing it").
		Say(loop.EndOversized, "relay message too large, closing the connection").
		Say(loop.EndProtocol, "relay client broke the WebSocket protocol, closing it")
}

// Tick implements loop.Kind: token expiries, code lifetimes, pings, and
// the pruning of expired deny and allow entries.
func (k *Kind) Tick(h *loop.Hub) {
	now := h.Now()
	for len(k.expiry) > 0 && !k.expiry[0].exp.After(now) {
		c := heap.Pop(&k.expiry).(*conn)
		c.ws.End(loop.EndExpired, "token expired")
	}
	k.expireCodes(now)
	if now.Sub(k.lastSweep) >= k.cfg.PingInterval/4 {
		k.lastSweep = now
		k.sweep(now)
	}
	if now.Sub(k.lastPrune) >= 10*time.Second {
		k.lastPrune = now
		for bid, exp := range k.denied {
			if !exp.After(now) {
				delete(k.denied, bid)
			}
		}
		for bid, exp := range k.allowed {
			if !exp.After(now) {
				delete(k.allowed, bid)
			}
		}
		for bid, v := range k.verdicts {
			if !v.exp.After(now) {
				delete(k.verdicts, bid)
			}
		}
	}
}

// sweep pings the connections that have been quiet for the ping interval
// and closes those that stayed quiet for another one after their ping.
func (k *Kind) sweep(now time.Time) {
	interval := k.cfg.PingInterval
	for c := range k.conns {
		last := c.ws.LastRead()
		switch {
		case c.pingAt.After(last):
			if now.Sub(c.pingAt) >= interval {
				c.ws.End(loop.EndTimeout, "no answer to a ping")
			}
		case now.Sub(last) >= interval:
			c.ws.Ping(nil)
			c.pingAt = now
		}
	}
}

// Shutdown implements loop.Kind: the core ends every connection (1001),
// and each leaves its topic. The verdicts heard from other replicas and
// not yet written reach the store (within a bound), which is then closed
// off the loop.
func (k *Kind) Shutdown(*loop.Hub) {
	if st := k.store; st != nil {
		k.store = nil
		if !k.writer.finish(2 * time.Second) {
			k.logger.Warn("relay deny list: verdicts heard from other replicas not all written before shutdown")
		}
		go func() { _ = st.close() }()
	}
}

// topic is an open relay topic: a channel whose members are clients (and,
// in a cluster, the records of clients on other replicas).
type topic struct {
	k    *Kind
	name string
	ch   *loop.Channel

	local, readers              int    // clients here; of those, with read
	messages, bytes, deliveries uint64 // published by writers here; delivered to readers here
}

var topicPolicy = loop.Policy{ToMembers: true}

// Detached implements loop.Owner: topics have no upstreams of their own
// (other replicas' interest comes and goes as upstreams without output).
func (*topic) Detached(*loop.Channel, *loop.Upstream) {}

// Replay implements loop.Replayer: a message another replica's writer
// published reaches the readers here, and is counted here as delivered.
func (t *topic) Replay(ch *loop.Channel, m *loop.Member, text bool, data []byte) {
	dropped := t.k.clients.Dropped
	ch.Publish(loop.MemberData, m, text, data)
	t.delivered(uint64(t.readers), t.k.clients.Dropped-dropped, len(data))
}

// delivered counts a message offered to readers here, less those that
// dropped it.
func (t *topic) delivered(readers, dropped uint64, size int) {
	if dropped > readers {
		dropped = readers
	}
	n := readers - dropped
	t.deliveries += n
	t.k.c.deliveries += n
	t.k.c.bytesOut += n * uint64(size)
}

// topicFor returns the open topic, opening it; nil past the cap.
func (k *Kind) topicFor(name string) *topic {
	if t := k.topics[name]; t != nil {
		return t
	}
	t := &topic{k: k, name: name}
	ch, err := k.hub.OpenChannel(loop.Key{Kind: KindName, Name: name}, topicPolicy, t, k.cfg.MaxTopics)
	if err != nil {
		return nil
	}
	t.ch = ch
	k.topics[name] = t
	return t
}

// join puts a client here on its topic.
func (t *topic) join(m *loop.Member) {
	t.local++
	if !m.WriteOnly {
		t.readers++
	}
	t.ch.Join(m)
}

// leave takes a client off its topic; a topic with no client here closes
// (other replicas' clients of it are only records).
func (t *topic) leave(m *loop.Member) {
	t.local--
	if !m.WriteOnly {
		t.readers--
	}
	t.ch.Leave(m)
	if t.local == 0 && !t.ch.Closed() {
		t.ch.Close()
		delete(t.k.topics, t.name)
	}
}

// Collect implements loop.Kind.
func (k *Kind) Collect(_ *loop.Hub, dst []stats.Sample) []stats.Sample {
	c := &k.c
	dst = append(dst,
		stats.S(codesTotal, float64(c.codesIssued), "issued"),
		stats.S(codesTotal, float64(c.codesUsed), "used"),
		stats.S(codesTotal, float64(c.codesExpired), "expired"),
		stats.S(codesTotal, float64(c.codesVoided), "voided"),
		stats.S(codesTotal, float64(c.codesRefused), "refused"),
		stats.S(codesOutstanding, float64(len(k.codes))),
		stats.S(deniedTotal, float64(c.bookingsDenied), "bookings"),
		stats.S(deniedTotal, float64(c.connsDenied), "connections"),
		stats.S(denyList, float64(len(k.denied))),
		stats.S(messagesTotal, float64(c.messagesIn), "in"),
		stats.S(messagesTotal, float64(c.deliveries), "out"),
		stats.S(bytesTotal, float64(c.bytesIn), "in"),
		stats.S(bytesTotal, float64(c.bytesOut), "out"),
		stats.S(watcherWrites, float64(c.watcherWrites)),
		stats.S(badRequests, float64(k.badRequests.Load())),
	)
	for i, name := range remoteCodeOutcomeNames {
		dst = append(dst, stats.S(remoteCodes, float64(c.remoteCodes[i]), name))
	}
	for i, name := range replicaVerdictOutcomeNames {
		dst = append(dst, stats.S(replicaVerdicts, float64(c.replicaVerdicts[i]), name))
	}
	if k.writer != nil {
		dst = append(dst, stats.S(storeErrors, float64(k.writer.failures.Load())))
	}
	for _, r := range reasons {
		dst = append(dst, stats.S(authFailures, float64(k.authFailures[r].Load()), string(r)))
	}
	ranked := make([]stats.Ranked, 0, len(k.topics))
	for name, t := range k.topics {
		ranked = append(ranked, stats.Ranked{Name: name, Rank: float64(t.local),
			Values: [stats.MaxRanked]float64{float64(t.local), float64(t.messages), float64(t.bytes), float64(t.deliveries)}})
	}
	for _, r := range stats.Bounded(ranked, k.cfg.MetricsTopics) {
		dst = append(dst,
			stats.S(topicConns, r.Values[0], r.Name),
			stats.S(topicMessages, r.Values[1], r.Name, "in"),
			stats.S(topicMessages, r.Values[3], r.Name, "out"),
			stats.S(topicBytes, r.Values[2], r.Name))
	}
	return dst
}

var (
	codesTotal       = stats.NewCounter("relay_codes_total", "Relay connection codes: issued, used, expired unused, voided by a deny, refused (too many outstanding).", "outcome")
	codesOutstanding = stats.NewGauge("relay_codes_outstanding", "Relay connection codes issued and not yet used or expired.")
	deniedTotal      = stats.NewCounter("relay_denied_total", "Bookings deny-listed, and live relay connections closed because of it.", "what")
	denyList         = stats.NewGauge("relay_deny_list", "Bookings on the relay's deny list now.")
	messagesTotal    = stats.NewCounter("relay_messages_total", "Relay topic messages: published by writers (in), delivered to readers (out).", "direction")
	bytesTotal       = stats.NewCounter("relay_bytes_total", "Relay topic payload bytes: published (in), delivered (out).", "direction")
	watcherWrites    = stats.NewCounter("relay_watcher_writes_total", "Driver messages from relay clients watching another kind's channel, carried to it.")
	badRequests      = stats.NewCounter("relay_bad_requests_total", "Relay access API requests refused before any token check: unknown path or method, bad topic or parameter.")
	authFailures     = stats.NewCounter("relay_auth_failures_total", "Relay access and connection requests refused, by reason.", "reason")
	topicConns       = stats.NewGauge("relay_topic_connections", "Clients of a relay topic (the largest topics; the rest summed as topic=\"_other\").", "topic")
	topicMessages    = stats.NewCounter("relay_topic_messages_total", "Messages published on a relay topic (in) and delivered (out), largest topics as for relay_topic_connections.", "topic", "direction")
	topicBytes       = stats.NewCounter("relay_topic_bytes_total", "Payload bytes published on a relay topic, largest topics as for relay_topic_connections.", "topic")
	remoteCodes      = stats.NewCounter("relay_remote_codes_total", "Codes issued by another replica and presented here: redeemed, refused by their issuer, or unanswered (issuer unreachable).", "outcome")
	replicaVerdicts  = stats.NewCounter("relay_replica_verdicts_total", "Denies and allows heard from other replicas: applied, stale (a later one was known), malformed messages.", "outcome")
	storeErrors      = stats.NewCounter("relay_store_errors_total", "Verdicts heard from other replicas that could not be written to the deny list's store (write failed, or its queue was full).")
)

// lockedRateLog is a RateLog for goroutines other than the loop.
type lockedRateLog struct {
	mu sync.Mutex
	rl loop.RateLog
}

// due counts one event and returns the count to log, or 0 when no line is due.
func (l *lockedRateLog) due(now time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.rl.Due(now) {
		return 0
	}
	return l.rl.Take()
}

// sortedKeys lists a map's keys in order.
func sortedKeys(m map[string]time.Time) []string {
	keys := make([]string, 0, len(m))
	for key := range m {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	return keys
}

// ensure the roles satisfy the core's and the driver's interfaces.
var (
	_ loop.WSRole   = (*client)(nil)
	_ loop.WSRole   = (*watcher)(nil)
	_ loop.Resolver = (*Kind)(nil)
)
