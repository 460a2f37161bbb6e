// Package loop is the reactor: one gnet event loop owns every socket (HTTP
// and WebSocket clients, device TCP connections) and all routing state.
// Goroutines only block on sockets (accept, UDP reads) and post to the loop.
package loop

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/stats"
)

// Config is everything the server needs; cmd/dispatch fills it from flags
// and the environment.
type Config struct {
	HTTPAddr         string        // host:port for HTTP and WebSockets
	DeviceHost       string        // host device ports bind to; "" is every interface
	Secret           string        // shared bearer token
	MaxHeadBytes     int           // request head bound (431 past it)
	HandshakeTimeout time.Duration // time to complete a request head
	MaxHandshakes    int           // connections still sending a request head; more are refused
	MaxMessageBytes  int           // largest driver message (close 1009 past it)
	MaxDriverPending int           // unsent bytes per driver (close 1008 past it)
	MaxDevicePending int           // unsent WRITE bytes per device (device closed past it)
	MaxPortConns     int           // device connections per TCP port
	MaxConns         int           // device connections in total
	UDPQueueBytes    int           // datagram bytes queued per UDP port between reader and loop

	// Socket groups (see group.go). The listeners are off while their address is empty.
	MaxMemberPending  int              // unsent bytes per TCP group member (member closed past it)
	GroupTCPAddr      string           // TCP group listener: host:port, or a bare port on DeviceHost
	GroupUDPAddr      string           // UDP group port, likewise; its port number is the UDP group's id
	GroupPrefix       string           // what a member's join message starts with
	GroupJoinTimeout  time.Duration    // time a TCP member has to join
	GroupIDMaxLen     int              // longest group id, in bytes
	GroupUDPOpen      bool             // forward datagrams from senders that are not members too
	GroupUDPIdle      time.Duration    // a UDP member silent for this long is forgotten
	GroupTCPPreconfig []GroupHost      // hosts whose TCP connections join a group without the prefix
	GroupUDPPreconfig []netip.AddrPort // UDP members from the start, never forgotten

	Version Version
	Logger  *slog.Logger
}

// Version is what GET .../version reports.
type Version struct {
	Commit          string
	Version         string
	BuildTime       string
	PlatformVersion string
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		HTTPAddr:         "127.0.0.1:3000",
		Secret:           "testing",
		MaxHeadBytes:     8192,
		HandshakeTimeout: 10 * time.Second,
		MaxHandshakes:    4096,
		MaxMessageBytes:  1 << 20,
		MaxDriverPending: 16 << 20,
		MaxDevicePending: 1 << 20,
		MaxPortConns:     20000,
		MaxConns:         100000,
		UDPQueueBytes:    8 << 20,
		MaxMemberPending: 4 << 20,
		GroupPrefix:      "SOCKETFORWARDER-NEW:",
		GroupJoinTimeout: 5 * time.Second,
		GroupIDMaxLen:    128,
		GroupUDPIdle:     5 * time.Minute,
	}
}

// Server is one running dispatch service.
type Server struct {
	cfg       Config
	log       *slog.Logger
	secretSum [sha256.Size]byte

	cli    *gnet.Client
	ctrl   gnet.Conn      // an internal connection whose only use is its EventLoop handle
	el     gnet.EventLoop // the loop; Execute posts work to it from other goroutines
	httpLn net.Listener

	groupTCPAddr, groupUDPAddr net.Addr // bound group listeners, set by Start

	// published is a copy of the loop's counters for other goroutines.
	published     atomic.Pointer[stats.Snapshot]
	udpDropped    atomic.Uint64 // datagrams dropped by UDP readers (queue full)
	udpEmpty      atomic.Uint64 // zero-length datagrams ignored by UDP readers
	acceptErrors  atomic.Uint64
	stopping      atomic.Bool
	ready         atomic.Bool // el is set; the ticker may post
	acceptWG      sync.WaitGroup
	loopStopped   chan struct{}
	shutdownOnce  sync.Once
	shutdownError error

	st *state // owned by the loop goroutine
}

// New validates cfg; Start brings the server up.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.MaxHeadBytes < 256:
		return nil, errors.New("max head bytes must be at least 256")
	case cfg.HandshakeTimeout <= 0:
		return nil, errors.New("handshake timeout must be positive")
	case cfg.MaxHandshakes < 1:
		return nil, errors.New("max handshakes must be positive")
	case cfg.MaxMessageBytes < 64:
		return nil, errors.New("max message bytes must be at least 64")
	case cfg.MaxDriverPending < 64<<10:
		return nil, errors.New("max driver pending must be at least 64 KiB")
	case cfg.MaxDevicePending < 1:
		return nil, errors.New("max device pending must be positive")
	case cfg.MaxPortConns < 1 || cfg.MaxConns < 1:
		return nil, errors.New("connection caps must be positive")
	case cfg.UDPQueueBytes < 64<<10:
		return nil, errors.New("udp queue bytes must be at least 64 KiB")
	}
	if err := cfg.checkGroups(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:         cfg,
		log:         cfg.Logger,
		secretSum:   sha256.Sum256([]byte(cfg.Secret)),
		loopStopped: make(chan struct{}),
	}
	s.st = newState(s)
	s.published.Store(&stats.Snapshot{})
	return s, nil
}

// Start runs the event loop and starts listening for HTTP. It returns once
// the listener is bound; Addr then reports it.
func (s *Server) Start() error {
	cli, err := gnet.NewClient(&handler{s: s},
		gnet.WithNumEventLoop(1),
		gnet.WithTicker(true),
		gnet.WithTCPNoDelay(gnet.TCPNoDelay),
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
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		_ = cli.Stop()
		return fmt.Errorf("listen on %s: %w", s.cfg.HTTPAddr, err)
	}
	if err := s.startGroups(); err != nil {
		_ = ln.Close()
		_ = cli.Stop()
		return err
	}
	s.httpLn = ln
	s.acceptWG.Add(1)
	go s.acceptLoop(ln, "http", func(c net.Conn) any { return newHTTPConn(c) })
	s.log.Info("listening", "addr", ln.Addr().String())
	return nil
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
	gc, err := s.cli.EnrollContext(near.c, controlConn{far: far})
	if err != nil {
		far.Close()
		return fmt.Errorf("control connection: %w", err)
	}
	s.ctrl = gc
	s.el = gc.EventLoop()
	s.ready.Store(true)
	return nil
}

// Addr is the bound HTTP address.
func (s *Server) Addr() net.Addr { return s.httpLn.Addr() }

// Snapshot returns the loop's latest published counters and gauges (a few
// hundred milliseconds old at most), with the counts kept off the loop.
func (s *Server) Snapshot() stats.Snapshot {
	snap := *s.published.Load()
	snap.DatagramsDropped += s.udpDropped.Load()
	snap.DatagramsEmpty += s.udpEmpty.Load()
	snap.AcceptErrors += s.acceptErrors.Load()
	return snap
}

// Done is closed when the event loop has stopped.
func (s *Server) Done() <-chan struct{} { return s.loopStopped }

// Shutdown stops accepting, closes every device port, sends close 1001 to
// every driver and stops the loop.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.stopping.Store(true)
		_ = s.httpLn.Close()
		drained := make(chan struct{})
		err := s.el.Execute(ctx, gnet.RunnableFunc(func(context.Context) error {
			s.st.shutdown()
			close(drained)
			return nil
		}))
		if err == nil {
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

// awaitLingering gives drivers whose close frame waits behind buffered
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
			s.st.now = time.Now()
			s.st.closeDrained()
			left <- len(s.st.lingering)
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
		s.acceptErrors.Add(1)
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

// controlConn tags the internal connection that provides the loop handle.
type controlConn struct{ far net.Conn }

// gnetLogger routes gnet's own log lines into slog.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug("gnet: " + fmt.Sprintf(f, a...)) }

// Warnf is debug: gnet warns of events for connections we closed earlier in
// the same pass, which is routine under churn.
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Debug("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error("gnet: " + fmt.Sprintf(f, a...)) }
