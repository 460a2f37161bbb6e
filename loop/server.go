// Package loop is the core: one gnet event loop owns every socket (HTTP and
// WebSocket clients, raw TCP peers) and all routing state, organised as a
// hub of channels with members, upstreams and a policy. Kinds of channel
// (dispatch ports, socket groups, …) live in packages of their own and
// register their routes, tickers and metrics here; this package never names
// one. Goroutines only block on sockets (accept, UDP reads) and post to the
// loop.
package loop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/stats"
)

// Config is what the core needs; each kind has a configuration of its own.
type Config struct {
	HTTPAddr         string        // host:port for HTTP and WebSockets
	MaxHeadBytes     int           // request head bound (431 past it)
	HandshakeTimeout time.Duration // time to complete a request head
	MaxHandshakes    int           // connections still sending a request head; more are refused
	MaxConns         int           // raw TCP peers (devices, group members, …) in total
	HighWater        int           // unsent bytes past which an endpoint blocks its producers
	LowWater         int           // unsent bytes below which it unblocks them
	StallTimeout     time.Duration // a blocked endpoint that drains nothing this long is cut
	PeerReadBuffer   int           // SO_RCVBUF of raw TCP peers (0: the kernel's autotuning)
	CoalesceBudget   time.Duration // longest nap of a lightly loaded loop, batching reads (0: never nap)
	// ReadSize is the most one read takes from a socket: gnet's read
	// buffer, one for the loop, so a large one costs no memory per
	// connection. A bulk stream needs fewer reads and writes with a larger
	// one, but one read's worth is queued to every reader in one pass, so
	// the default stays 64 KiB, below the bounds of endpoints that drop
	// when full (bench/results/readsize.md).
	ReadSize int

	Logger *slog.Logger
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		HTTPAddr:         "127.0.0.1:3000",
		MaxHeadBytes:     8192,
		HandshakeTimeout: 10 * time.Second,
		MaxHandshakes:    4096,
		MaxConns:         100000,
		HighWater:        1 << 20,
		LowWater:         256 << 10,
		StallTimeout:     10 * time.Second,
		ReadSize:         64 << 10,
	}
}

func (cfg *Config) check() error {
	switch {
	case cfg.MaxHeadBytes < 256:
		return errors.New("max head bytes must be at least 256")
	case cfg.HandshakeTimeout <= 0:
		return errors.New("handshake timeout must be positive")
	case cfg.MaxHandshakes < 1:
		return errors.New("max handshakes must be positive")
	case cfg.MaxConns < 1:
		return errors.New("max conns must be positive")
	case cfg.HighWater < 1:
		return errors.New("high watermark must be positive")
	case cfg.LowWater < 0 || cfg.LowWater >= cfg.HighWater:
		return errors.New("low watermark must be below the high watermark")
	case cfg.StallTimeout <= 0:
		return errors.New("stall timeout must be positive")
	case cfg.PeerReadBuffer < 0:
		return errors.New("peer read buffer must not be negative")
	case cfg.ReadSize < 4<<10 || cfg.ReadSize > 16<<20:
		return errors.New("read size must be in 4 KiB-16 MiB")
	case cfg.CoalesceBudget < 0 || cfg.CoalesceBudget > 10*time.Millisecond:
		return errors.New("coalesce budget must be in 0-10ms")
	}
	return nil
}

// Server is one running event loop with its kinds.
type Server struct {
	cfg Config
	log *slog.Logger

	cli       *gnet.Client
	ctrl      gnet.Conn      // an internal connection: the loop handle, and the probe for pausing
	el        gnet.EventLoop // the loop; Execute posts work to it from other goroutines
	listeners []*Listener    // HTTP listeners; the first is Config.HTTPAddr

	// published is the loop's latest metrics, for other goroutines.
	published     atomic.Pointer[stats.Snapshot]
	offLoop       offLoopCounters // counted by goroutines other than the loop
	flowWake      chan struct{}   // the loop has endpoints to poll (flow.go)
	flowDelay     atomic.Int64    // nanoseconds to the next flow check; 0: none due
	stopping      atomic.Bool
	ready         atomic.Bool // el is set; the ticker may post
	acceptWG      sync.WaitGroup
	dials         dialer // outbound connections being made (dial.go)
	loopStopped   chan struct{}
	shutdownOnce  sync.Once
	shutdownError error

	h *Hub // owned by the loop goroutine
}

// offLoopCounters are the few counts kept by goroutines that block on
// sockets; they are folded into the loop's at publish.
type offLoopCounters struct {
	acceptErrors      atomic.Uint64
	handshakesRefused atomic.Uint64 // listeners that sort requests off the loop
}

// New validates cfg. Register kinds, then Start.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, loopStopped: make(chan struct{}), flowWake: make(chan struct{}, 1)}
	s.listeners = []*Listener{newListener(s, "http", cfg.HTTPAddr)}
	s.h = newHub(s)
	s.published.Store(&stats.Snapshot{})
	return s, nil
}

// Register adds a kind. It must be called before Start.
func (s *Server) Register(k Kind) {
	s.h.kinds = append(s.h.kinds, k)
}

// Start runs the event loop, starts every kind and starts listening for
// HTTP. It returns once everything is bound; Addr then reports it.
func (s *Server) Start() error {
	s.h.setTickInterval()
	cli, err := gnet.NewClient(&engine{s: s},
		gnet.WithNumEventLoop(1),
		gnet.WithTicker(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
		gnet.WithReadBufferCap(s.cfg.ReadSize),
		gnet.WithLogger(gnetLogger{s.log}),
	)
	if err != nil {
		return fmt.Errorf("create event loop: %w", err)
	}
	if err := cli.Start(); err != nil {
		return fmt.Errorf("start event loop: %w", err)
	}
	s.cli = cli
	if err := s.attachControlConn(); err != nil {
		_ = cli.Stop()
		return err
	}
	for _, l := range s.listeners {
		if err := l.bind(); err != nil {
			s.closeListeners(context.Background())
			_ = cli.Stop()
			return fmt.Errorf("listen on %s: %w", l.addr, err)
		}
	}
	if err := s.onLoop(s.h.startKinds); err != nil {
		s.closeListeners(context.Background())
		_ = s.onLoop(func() error { s.h.shutdown(); return nil })
		_ = cli.Stop()
		return err
	}
	for _, l := range s.listeners[1:] {
		l.serve()
		s.log.Info("http listening", "name", l.name, "addr", l.Addr().String())
	}
	s.HTTP().serve()
	s.log.Info("listening", "addr", s.Addr().String())
	return nil
}

func (s *Server) closeListeners(ctx context.Context) {
	for _, l := range s.listeners {
		l.close(ctx)
	}
}

// onLoop runs fn on the loop and waits for its result.
func (s *Server) onLoop(fn func() error) error {
	done := make(chan error, 1)
	if !s.post(func() { done <- fn() }) {
		return errors.New("the event loop is not running")
	}
	select {
	case err := <-done:
		return err
	case <-s.loopStopped:
		return errors.New("the event loop stopped")
	}
}

// attachControlConn enrolls one end of a loopback pair so that the server
// always holds an EventLoop handle, even before any client has connected.
func (s *Server) attachControlConn() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("control connection: %w", err)
	}
	defer ln.Close()
	type result struct {
		c   net.Conn
		err error
	}
	accepted := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		accepted <- result{c, err}
	}()
	far, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return fmt.Errorf("control connection: %w", err)
	}
	near := <-accepted
	if near.err != nil {
		far.Close()
		return fmt.Errorf("control connection: %w", near.err)
	}
	gc, err := s.cli.EnrollContext(near.c, &controlConn{s: s, far: far})
	if err != nil {
		far.Close()
		return fmt.Errorf("control connection: %w", err)
	}
	s.ctrl, s.el = gc, gc.EventLoop()
	s.ready.Store(true)
	go s.flowPoller()
	return nil
}

// Addr is the bound HTTP address.
func (s *Server) Addr() net.Addr { return s.HTTP().Addr() }

// Snapshot returns the loop's latest published metrics (a few hundred
// milliseconds old at most).
func (s *Server) Snapshot() stats.Snapshot { return *s.published.Load() }

// Done is closed when the event loop has stopped.
func (s *Server) Done() <-chan struct{} { return s.loopStopped }

// Shutdown stops accepting, stops every kind, ends every endpoint (close
// 1001 for WebSockets) and stops the loop.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.stopping.Store(true)
		s.closeListeners(ctx)
		s.dials.stop()
		drained := make(chan struct{})
		if s.post(func() {
			s.h.shutdown()
			close(drained)
		}) {
			select {
			case <-drained:
				s.awaitLingering(ctx)
			case <-ctx.Done():
			}
		}
		s.acceptWG.Wait()
		s.shutdownError = s.cli.Stop()
		if s.shutdownError == nil {
			select {
			case <-s.loopStopped:
			case <-ctx.Done():
				s.shutdownError = ctx.Err()
			}
		}
	})
	return s.shutdownError
}

// awaitLingering gives WebSockets whose close frame waits behind buffered
// output part of ctx to drain before the loop stops; stopping the loop
// discards whatever gnet still holds.
func (s *Server) awaitLingering(ctx context.Context) {
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline.Add(-time.Until(deadline)/4))
		defer cancel()
	}
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	for {
		left := make(chan int, 1)
		if !s.post(func() {
			s.h.now = time.Now()
			s.h.closeDrained()
			left <- len(s.h.lingering)
		}) {
			return
		}
		select {
		case n := <-left:
			if n == 0 {
				return
			}
		case <-ctx.Done():
			return
		}
		select {
		case <-poll.C:
		case <-ctx.Done():
			return
		}
	}
}

// post runs fn on the loop. It reports false if the loop has stopped.
func (s *Server) post(fn func()) bool {
	return s.el.Execute(context.Background(), gnet.RunnableFunc(func(context.Context) error {
		fn()
		return nil
	})) == nil
}

// acceptLoop hands each accepted connection to the event loop. Running out
// of descriptors backs off and retries instead of giving up: the listener
// keeps working once descriptors free up.
func (s *Server) acceptLoop(ln net.Listener, what string, tag func(net.Conn) any) {
	defer s.acceptWG.Done()
	const minBackoff, maxBackoff = 5 * time.Millisecond, time.Second
	backoff := minBackoff
	failing := false
	// fail counts a failed accept or hand-over (both mean descriptors or
	// memory ran short), logs once per streak and backs off.
	fail := func(step string, err error) {
		s.offLoop.acceptErrors.Add(1)
		if !failing {
			s.log.Warn("accepting connections is failing, backing off", "listener", what,
				"addr", ln.Addr().String(), "step", step, "err", err)
			failing = true
		}
		time.Sleep(backoff)
		backoff = min(backoff*2, maxBackoff)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			fail("accept", err)
			continue
		}
		if _, err := s.cli.EnrollContext(c, tag(c)); err != nil {
			if s.stopping.Load() {
				return
			}
			fail("hand to the loop", err)
			continue
		}
		if failing {
			s.log.Info("accepting connections recovered", "listener", what, "addr", ln.Addr().String())
			failing = false
		}
		backoff = minBackoff
	}
}

// gnetLogger routes gnet's own log lines into slog.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug("gnet: " + fmt.Sprintf(f, a...)) }

// Warnf is debug: gnet warns of events for connections we closed earlier in
// the same pass, which is routine under churn.
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Debug("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error("gnet: " + fmt.Sprintf(f, a...)) }
