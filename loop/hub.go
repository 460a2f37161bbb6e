package loop

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/internal/readpause"
	"github.com/placeos-gnet/dispatch/stats"
)

// A Kind is one shape of channel (dispatch ports, socket groups, …). It owns
// its channels' life, the roles of its endpoints and its routes; the core
// calls it on the loop.
type Kind interface {
	// Name is the kind's name in channel keys, metrics and logs.
	Name() string
	// Start binds the kind's own listeners before the server reports ready.
	Start(h *Hub) error
	// Tick runs a few times a second: deadlines, expiries.
	Tick(h *Hub)
	// Shutdown closes the kind's listeners and channels; the core then ends
	// every endpoint that is still open.
	Shutdown(h *Hub)
	// Collect appends the kind's metric samples; it runs at every publish.
	Collect(h *Hub, dst []stats.Sample) []stats.Sample
}

// Resolver is a Kind that keeps deadlines: the loop ticks often enough to
// keep each to within a quarter of the shortest.
type Resolver interface {
	Resolution() time.Duration
}

// Hub is everything the loop owns: channels, endpoints, the outbox and the
// core's counters. Only the loop goroutine touches it; kinds receive it in
// every callback.
type Hub struct {
	s   *Server
	cfg *Config
	log *slog.Logger

	kinds        []Kind
	channels     map[Key]*Channel // every open channel
	kindChannels map[string]int   // open channels per kind, against its cap
	// refusedChannels counts, per kind, channels not opened for its cap.
	refusedChannels map[string]uint64
	classes         []*Class           // every endpoint class, for metrics
	endpoints       map[*Endpoint]bool // every open WebSocket and raw TCP endpoint
	rawConns        int                // raw TCP endpoints admitted, against Config.MaxConns
	// lingering are WebSockets whose close frame waits behind buffered output.
	lingering map[*WSConn]time.Time

	handshakes     map[*httpConn]gnet.Conn // connections still sending a request head
	handshakeFlood RateLog                 // refused handshakes, logged once per episode

	// Flow control (flow.go): nil pauser means cut instead of pause.
	pauser  *readpause.Poller
	blocked []*Endpoint // endpoints past their high watermark
	paused  []*Endpoint // producers not being read

	co        coalescer // naps that batch reads at everyday load
	out       outbox
	flushTask gnet.Runnable
	enc       encodings     // the current event's encodings, one per format
	ev        Event         // the current event
	direct    []directWrite // large payloads set aside by the current event
	transient []*Upstream   // scratch: the upstreams a transient member reaches

	// current is the connection whose OnOpen or OnTraffic is running: gnet
	// still uses its buffers after the callback returns, so closeConn must
	// not close it synchronously.
	current gnet.Conn

	// A cluster bus and what spans through it (span.go); nil when alone.
	bus      Bus
	spanning map[string]func(name string) *Channel
	answers  map[string]func() []byte
	asks     map[string]func(from int, question []byte) []byte
	tells    map[string]func(from int, data []byte)
	hellos   []func(node int)

	started      bool          // every kind has started: ticks may run
	tickInterval time.Duration // set before the loop starts, read by OnTick
	c            stats.Core
	lag          stats.LagHistogram
	now          time.Time // coarse clock, refreshed every tick
}

func newHub(s *Server) *Hub {
	h := &Hub{
		s:               s,
		cfg:             &s.cfg,
		log:             s.log,
		channels:        make(map[Key]*Channel),
		kindChannels:    make(map[string]int),
		refusedChannels: make(map[string]uint64),
		endpoints:       make(map[*Endpoint]bool),
		lingering:       make(map[*WSConn]time.Time),
		handshakes:      make(map[*httpConn]gnet.Conn),
		now:             time.Now(),
		co:              coalescer{budget: s.cfg.CoalesceBudget, windowStart: time.Now()},
	}
	h.flushTask = gnet.RunnableFunc(func(context.Context) error {
		h.out.scheduled = false
		h.c.Passes++
		h.flush()
		h.napAfterPass()
		return nil
	})
	return h
}

// Now is the loop's coarse clock, refreshed every tick.
func (h *Hub) Now() time.Time { return h.now }

// Log is the server's logger.
func (h *Hub) Log() *slog.Logger { return h.log }

// Stopping reports whether the server is shutting down: kinds refuse new
// peers then.
func (h *Hub) Stopping() bool { return h.s.stopping.Load() }

// AtConnCap reports whether raw TCP peers have reached Config.MaxConns.
func (h *Hub) AtConnCap() bool { return h.rawConns >= h.cfg.MaxConns }

// startKinds runs on the loop from Start.
func (h *Hub) startKinds() error {
	h.openPauser()
	for _, k := range h.kinds {
		if err := k.Start(h); err != nil {
			return err
		}
	}
	h.started = true
	h.publish() // every series exists from the start
	return nil
}

// setTickInterval is called before the loop starts: fine enough that every
// deadline is kept to within a quarter of itself.
func (h *Hub) setTickInterval() {
	shortest := h.cfg.HandshakeTimeout
	for _, k := range h.kinds {
		if r, ok := k.(Resolver); ok && r.Resolution() > 0 {
			shortest = min(shortest, r.Resolution())
		}
	}
	h.tickInterval = min(max(shortest/4, 50*time.Millisecond), time.Second)
}

// tick runs on the loop a few times a second: it expires handshakes that
// missed their deadline, ticks the kinds and publishes metrics. posted is
// when the ticker asked for it, so the wait measures the loop's lag.
func (h *Hub) tick(posted time.Time) {
	if !h.started {
		return // the ticker can fire before the kinds have started
	}
	h.now = time.Now()
	h.lag.Observe(h.now.Sub(posted).Seconds())
	deadline := h.now.Add(-h.cfg.HandshakeTimeout)
	for hc, c := range h.handshakes {
		if hc.born.Before(deadline) {
			h.c.HandshakeTimeouts++
			h.c.HandshakeFailures++
			h.log.Debug("handshake deadline passed, closing", "peer", hc.peer)
			h.closeConn(c)
		}
	}
	for _, k := range h.kinds {
		k.Tick(h)
	}
	h.closeDrained()
	h.publish()
}

// publish hands a copy of every metric to other goroutines.
func (h *Hub) publish() {
	snap := &stats.Snapshot{Core: h.c, Lag: h.lag}
	snap.AcceptErrors += h.s.offLoop.acceptErrors.Load()
	snap.HandshakesRefused += h.s.offLoop.handshakesRefused.Load()
	snap.Handshakes = len(h.handshakes)
	for _, cl := range h.classes {
		snap.Classes = append(snap.Classes, cl.ClassCounters)
	}
	for _, k := range h.kinds {
		snap.Kinds = append(snap.Kinds, stats.KindChannels{
			Kind: k.Name(), Open: h.kindChannels[k.Name()], Refused: h.refusedChannels[k.Name()]})
		snap.Samples = k.Collect(h, snap.Samples)
	}
	h.s.published.Store(snap)
}

// shutdown stops every kind, then ends every endpoint still open: WebSockets
// get close 1001.
func (h *Hub) shutdown() {
	for _, k := range h.kinds {
		k.Shutdown(h)
	}
	open := make([]*Endpoint, 0, len(h.endpoints))
	for e := range h.endpoints {
		open = append(open, e)
	}
	for _, e := range open {
		e.End(EndShutdown, "server shutting down")
	}
	for _, c := range h.handshakes {
		h.closeConn(c)
	}
	h.flush()
}

// closeConn closes a connection from the loop. Its OnClose runs at once,
// unless it is the connection whose callback is running: that one is closed
// by a task that runs once the callback has returned.
func (h *Hub) closeConn(c gnet.Conn) {
	if c == h.current {
		_ = c.Close()
		return
	}
	_ = h.s.el.Close(c)
}

// NewClass registers a class of endpoints: the counters and log lines of one
// role of one kind (a dispatch driver, a group member, …).
func (h *Hub) NewClass(kind, role string) *Class {
	cl := &Class{ClassCounters: stats.ClassCounters{Kind: kind, Role: role}}
	h.classes = append(h.classes, cl)
	return cl
}

// Listen binds a TCP listener whose connections enter the loop as raw TCP
// endpoints; accept builds each one's endpoint on the accept goroutine.
func (h *Hub) Listen(addr, what string, accept func(net.Conn) *TCPConn) (net.Listener, error) {
	var lc net.ListenConfig
	if size := h.cfg.PeerReadBuffer; size > 0 {
		// Set on the listener, accepted sockets have it before the handshake
		// picks their window scale. A peer whose reads are paused then
		// leaves at most this much in the kernel.
		lc.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size) })
			return errors.Join(err, serr)
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, err
	}
	h.s.acceptWG.Add(1)
	go h.s.acceptLoop(ln, what, func(c net.Conn) any { return accept(c) })
	return ln, nil
}
