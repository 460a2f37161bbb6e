// Package rooms serves OpenTogetherTube's balancer on the loop: browsers
// open a WebSocket for a room; the balancer keeps one WebSocket to each
// back-end service (a Monolith) and carries every client of every room
// placed there over it, as JSON envelopes; the Monolith answers one client
// or the whole room.
//
// A room is a channel (policy ToUpstreams) whose members are the room's
// clients on this balancer and whose one upstream is the link to the
// Monolith that holds the room: a client's message reaches the Monolith
// through Channel.Publish as client_msg, its departure as leave; a room
// broadcast is Channel.Broadcast, encoded once for all the room's clients;
// an answer to one client is Hub.Send. Clients are cut alone when they do
// not read (CutWhenFull); a link that does not keep up holds back the
// clients that feed it (PauseWhenFull) rather than being cut for a burst.
//
// The kind has a listener of its own and owns its whole URL space, as the
// original does: WebSocket upgrades to /api/room/<name> are served on the
// loop, every other request by net/http off the loop (http.go), most of
// them proxied to a Monolith.
package rooms

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"hash/fnv"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/http/httputil"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/placeos-gnet/dispatch/internal/fifo"
	"github.com/placeos-gnet/dispatch/loop"
)

// KindName is the kind's name in channel keys and metrics.
const KindName = "rooms"

// placeholderEpoch marks a room placed by this balancer and not yet
// reported loaded: any real load elsewhere beats it, as in the original.
const placeholderEpoch = math.MaxUint32

var policy = loop.Policy{ToUpstreams: true}

// Kind is the balancer.
type Kind struct {
	cfg Config
	srv *loop.Server
	hub *loop.Hub
	log *slog.Logger // the server's, for goroutines of the kind's own
	l   *loop.Listener
	id  string // the balancer's id, sent in init; one per process

	clients      *loop.Class
	links        *loop.Class
	clientByID   map[string]*client  // every client, by its id
	nClients     int                 // connected, whatever their state
	nAuthing     int                 // of those, not authenticated yet
	authing      fifo.Queue[*client] // by auth deadline; clients that authenticated since are skipped
	rooms        map[string]*room    // by key
	targets      map[string]*target
	up           []*monolith // Monoliths whose handshake is done, in the order they came up
	ring         ring        // the hash ring over the candidates; nil when they changed
	byID         map[string]*monolith
	dnsAddrs     []string
	dnsDone      bool               // a DNS answer arrived (or DNS discovery is off)
	stopDNS      context.CancelFunc // ends DNS discovery, even a lookup under way
	dnsStopped   chan struct{}
	stopping     bool
	keyScratch   []byte
	scratch      []byte // the balancer's own messages are built here: Hub.Send copies them
	unmapReasons [unmapReasonCount]uint64

	c          Counters
	off        offLoopCounters // counted by the HTTP goroutines
	published  atomic.Pointer[Counters]
	proxy      *httputil.ReverseProxy
	proxySlots chan struct{}
	rateLogs   rateLogs
	// proxyFullLog, proxyErrLog and authLog are logged from the HTTP
	// goroutines.
	proxyFullLog, proxyErrLog, authLog offLogger
}

// room is a room as this balancer knows it: where it is loaded, at which
// epoch, its metadata, and its clients here (the channel, while it has
// any).
type room struct {
	key   string
	name  string // the spelling first seen
	m     *monolith
	epoch uint32
	meta  []byte // the RoomMetadata object last reported, nil when unknown
	pub   bool
	users float64
	ch    *loop.Channel
	up    loop.Upstream // the link, as this room's channel's upstream
}

// Detached implements loop.Owner: a room's upstream is never detached
// while its channel is open (the channel is closed instead).
func (r *room) Detached(*loop.Channel, *loop.Upstream) {}

// Register adds the rooms kind and its listener to s; with no address it
// does nothing and returns nil.
func Register(s *loop.Server, cfg Config) (*Kind, error) {
	if cfg.Addr == "" {
		return nil, nil
	}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	k := &Kind{
		cfg:        cfg,
		srv:        s,
		id:         newUUID(),
		clientByID: make(map[string]*client),
		rooms:      make(map[string]*room),
		targets:    make(map[string]*target),
		byID:       make(map[string]*monolith),
		proxySlots: make(chan struct{}, cfg.MaxProxy),
	}
	k.published.Store(&Counters{})
	k.l = s.NewListener(KindName, cfg.Addr)
	k.l.HandlePrefix(roomPrefix, k.upgrade)
	k.l.ServeOther(k)
	s.Register(k)
	return k, nil
}

// Name implements loop.Kind.
func (k *Kind) Name() string { return KindName }

// Addr is the bound listener, once the server has started.
func (k *Kind) Addr() string { return k.l.Addr().String() }

// Resolution implements loop.Resolver: deadlines and retries are kept to
// within a quarter of the shortest.
func (k *Kind) Resolution() time.Duration {
	c := &k.cfg
	return min(c.AuthTimeout, c.InitTimeout, c.ConnectRetry, c.ReconnectDelay)
}

// Start dials the configured Monoliths and starts DNS discovery.
func (k *Kind) Start(h *loop.Hub) error {
	k.hub, k.log = h, h.Log()
	k.proxy = k.newProxy()
	k.clients = h.NewClass(KindName, "client").
		Say(loop.EndSlow, "room client not reading, closing it").
		Say(loop.EndTimeout, "room client did not authenticate in time").
		Say(loop.EndMalformed, "room client sent what the protocol does not allow").
		Say(loop.EndRefused, "refused room client")
	k.links = h.NewClass(KindName, "monolith").
		Say(loop.EndStalled, "Monolith link drained nothing for the stall timeout, closing it").
		Say(loop.EndSlow, "Monolith link past its hard bound, closing it").
		Say(loop.EndTimeout, "Monolith did not complete its handshake in time").
		Say(loop.EndProtocol, "Monolith broke the WebSocket protocol").
		Say(loop.EndDenied, "Monolith refused: init token").
		Say(loop.EndMalformed, "Monolith sent a bad handshake").
		Say(loop.EndRefused, "Monolith link refused or dropped")
	h.Log().Info("room balancer", "id", k.id, "region", k.cfg.Region, "strategy", k.cfg.Strategy.String(),
		"monoliths", len(k.cfg.Monoliths), "dns", k.cfg.DNSName)
	k.dnsDone = k.cfg.DNSName == ""
	k.startCluster(h)
	k.syncTargets()
	if k.cfg.DNSName != "" {
		var ctx context.Context
		ctx, k.stopDNS = context.WithCancel(context.Background())
		k.dnsStopped = make(chan struct{})
		go k.pollDNS(ctx)
	}
	return nil
}

// Tick expires auth and init deadlines and dials Monoliths whose retry is
// due.
func (k *Kind) Tick(*loop.Hub) {
	k.expireAuth()
	k.tickTargets()
}

// Shutdown stops discovery and closes every client and link (1001).
func (k *Kind) Shutdown(*loop.Hub) {
	k.stopping = true
	if k.stopDNS != nil {
		k.stopDNS()
		<-k.dnsStopped
		k.stopDNS = nil
	}
	for _, cl := range k.clientByID {
		cl.c.End(loop.EndShutdown, "")
	}
	for _, t := range k.targets {
		if t.link != nil && t.link.c != nil {
			t.link.c.End(loop.EndShutdown, "")
		}
	}
}

// room placement

// mapRoom records that room name is loaded on m at epoch.
func (k *Kind) mapRoom(name string, m *monolith, epoch uint32) *room {
	key := roomKey(name)
	r := &room{key: key, name: name, m: m, epoch: epoch}
	r.up.Out = &m.c.Endpoint
	k.rooms[key] = r
	m.rooms[key] = r
	return r
}

// unmapReason says why a room stopped being mapped, for its counter.
type unmapReason uint8

const (
	unmapUnloaded  unmapReason = iota // the Monolith said so
	unmapGossip                       // missing from its gossip
	unmapFailover                     // its link ended
	unmapDuplicate                    // another copy won
	unmapAbandoned                    // placed here, left by every client before it loaded
	unmapReasonCount
)

var unmapReasonNames = [unmapReasonCount]string{"unloaded", "gossip", "monolith_lost", "duplicate", "abandoned"}

// unmap forgets a room: its clients here are closed with 1000 so that
// they reconnect and land wherever it is (or will be) loaded.
func (k *Kind) unmap(r *room, why unmapReason) {
	k.unmapReasons[why]++
	if k.rooms[r.key] == r {
		delete(k.rooms, r.key)
	}
	if r.m.rooms[r.key] == r {
		delete(r.m.rooms, r.key)
	}
	if ch := r.ch; ch != nil {
		r.ch = nil
		ch.Close()
	}
}

// addOrSync applies one room a Monolith reports loaded (loaded, or an entry
// of its gossip). Two copies of a room: the lower load epoch wins and the
// other Monolith is told to unload its copy.
func (k *Kind) addOrSync(m *monolith, ri roomInfo) {
	key := roomKey(ri.name)
	r := k.rooms[key]
	switch {
	case r == nil:
		if len(k.rooms) >= k.cfg.MaxRooms {
			k.c.RoomsRefused++
			k.rateLogs.rooms.log(k, "rooms cap reached: a room a Monolith reported loaded is not tracked", "room", ri.name, "monolith", m.id)
			return
		}
		r = k.mapRoom(ri.name, m, ri.epoch)
	case r.m == m:
		r.epoch = ri.epoch
	case ri.epoch < r.epoch:
		old := r.m
		k.c.Duplicates[dupOldUnloaded]++
		k.hub.Log().Info("room loaded on two Monoliths: the earlier load wins, the other is told to unload",
			"room", ri.name, "winner", m.id, "winner_epoch", ri.epoch, "loser", old.id, "loser_epoch", r.epoch)
		k.scratch = appendUnload(k.scratch[:0], r.name)
		old.send(k.scratch)
		k.unmap(r, unmapDuplicate)
		r = k.mapRoom(ri.name, m, ri.epoch)
	case ri.epoch > r.epoch:
		k.c.Duplicates[dupNewcomerUnloaded]++
		k.hub.Log().Info("room loaded on two Monoliths: the earlier load wins, the other is told to unload",
			"room", ri.name, "winner", r.m.id, "winner_epoch", r.epoch, "loser", m.id, "loser_epoch", ri.epoch)
		k.scratch = appendUnload(k.scratch[:0], ri.name)
		m.send(k.scratch)
		return
	default:
		k.c.Duplicates[dupEqual]++
		k.rateLogs.equal.log(k, "room reported by two Monoliths with the same load epoch, which should never happen: kept where it was",
			"room", ri.name, "kept_on", r.m.id, "reported_by", m.id, "epoch", ri.epoch)
		return
	}
	if ri.meta != nil {
		r.meta = append(r.meta[:0], ri.meta...)
	} else if ri.metaBig {
		r.meta = nil
		k.c.MetadataTooLarge++
	}
	r.pub, r.users = ri.public, ri.users
}

// candidates are the Monoliths a new room may go to: those of the
// balancer's region, or all of them when none is.
func (k *Kind) candidates() []*monolith {
	var local []*monolith
	for _, m := range k.up {
		if m.region == k.cfg.Region {
			local = append(local, m)
		}
	}
	if len(local) > 0 {
		return local
	}
	return k.up
}

// pick chooses a Monolith for a room loaded nowhere, or nil when none is
// connected.
func (k *Kind) pick(key string) *monolith {
	cands := k.candidates()
	if len(cands) == 0 {
		return nil
	}
	switch k.cfg.Strategy {
	case HashRing:
		if k.ring == nil {
			k.ring = newRing(cands, k.cfg.HashWeight)
		}
		return k.ring.pick(key)
	case Random:
		return cands[mrand.IntN(len(cands))]
	}
	best := cands[0]
	for _, m := range cands[1:] {
		if len(m.rooms) < len(best.rooms) {
			best = m
		}
	}
	return best
}

// ring is a consistent-hash ring: weight points per Monolith, each at the
// hash of the Monolith's id and the point's number, sorted. A room goes to
// the first point at or after its own hash. Every balancer that sees the
// same Monoliths agrees, whatever order they came up in.
type ring []ringPoint

type ringPoint struct {
	at uint64
	m  *monolith
}

func newRing(cands []*monolith, weight int) ring {
	points := make(ring, 0, len(cands)*weight)
	for _, m := range cands {
		for i := range weight {
			points = append(points, ringPoint{hash64(m.id + "#" + strconv.Itoa(i)), m})
		}
	}
	slices.SortFunc(points, func(a, b ringPoint) int { return cmp.Compare(a.at, b.at) })
	return points
}

func (r ring) pick(key string) *monolith {
	h := hash64(key)
	i, _ := slices.BinarySearchFunc(r, h, func(p ringPoint, h uint64) int { return cmp.Compare(p.at, h) })
	if i == len(r) {
		i = 0
	}
	return r[i].m
}

// hashRingPick places key on the ring of cands; the kind keeps its ring
// until the Monoliths change (ringFor).
func hashRingPick(cands []*monolith, key string, weight int) *monolith {
	return newRing(cands, weight).pick(key)
}

func hash64(s string) uint64 {
	f := fnv.New64a()
	_, _ = f.Write([]byte(s))
	// FNV's low bits mix poorly for short keys: finish with a mixer
	// (splitmix64's) so ring points spread.
	x := f.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}

// rateLog is a loop.RateLog for lines logged on the loop: the first, then
// at most one per interval with the count.
type rateLog struct{ r loop.RateLog }

func (l *rateLog) log(k *Kind, msg string, args ...any) { l.logAt(k, slog.LevelWarn, msg, args...) }

func (l *rateLog) logAt(k *Kind, level slog.Level, msg string, args ...any) {
	if l.r.Due(k.hub.Now()) {
		k.hub.Log().Log(context.Background(), level, msg, append(args, "count", l.r.Take())...)
	}
}

type rateLogs struct {
	rooms, monoliths, equal, clients, roomFull, noMonolith, badMessage, badKick, unrouted, placer, early rateLog
}

func randIntN(n int) int { return mrand.IntN(n) }

// debug is a shorthand for debug lines.
func (k *Kind) debug(msg string, args ...any) { k.hub.Log().Debug(msg, args...) }
