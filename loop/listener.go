package loop

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Listener is one HTTP listener and its routes. The server's own
// (Config.HTTPAddr) is Server.HTTP(); a kind may add listeners of its own
// (Server.NewListener) that own their whole URL space.
type Listener struct {
	s        *Server
	name     string
	addr     string
	exact    map[string]Route
	prefixes []prefixRoute // longest first
	other    http.Handler  // off the loop: requests that are not WebSocket upgrades to a route

	ln     net.Listener
	queue  *connQueue   // connections handed to other
	server *http.Server // serves other
}

type prefixRoute struct {
	prefix string
	route  Route
}

func newListener(s *Server, name, addr string) *Listener {
	return &Listener{s: s, name: name, addr: addr, exact: make(map[string]Route)}
}

// HTTP is the server's own listener (Config.HTTPAddr).
func (s *Server) HTTP() *Listener { return s.listeners[0] }

// NewListener adds an HTTP listener bound at Start. It must be called
// before Start.
func (s *Server) NewListener(name, addr string) *Listener {
	l := newListener(s, name, addr)
	s.listeners = append(s.listeners, l)
	return l
}

// Handle routes requests for an exact path on the server's own listener.
func (s *Server) Handle(path string, r Route) { s.HTTP().Handle(path, r) }

// Handle routes requests for an exact path to r, on the loop.
func (l *Listener) Handle(path string, r Route) {
	if _, dup := l.exact[path]; dup {
		panic("loop: two routes for " + path)
	}
	l.exact[path] = r
}

// HandlePrefix routes requests whose path starts with prefix to r, on the
// loop, unless an exact route or a longer prefix claims them.
func (l *Listener) HandlePrefix(prefix string, r Route) {
	l.prefixes = append(l.prefixes, prefixRoute{prefix, r})
	sort.SliceStable(l.prefixes, func(i, j int) bool { return len(l.prefixes[i].prefix) > len(l.prefixes[j].prefix) })
}

// ServeOther hands every request that is not a WebSocket upgrade to one of
// the listener's routes to h, served by net/http on goroutines of its own,
// never on the loop: for a handler that blocks (a reverse proxy, say).
func (l *Listener) ServeOther(h http.Handler) { l.other = h }

// Addr is the bound address, once the server has started.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

func (l *Listener) route(path string) (Route, bool) {
	if r, ok := l.exact[path]; ok {
		return r, true
	}
	for _, p := range l.prefixes {
		if strings.HasPrefix(path, p.prefix) {
			return p.route, true
		}
	}
	return nil, false
}

// bind listens; the accept goroutine starts with serve.
func (l *Listener) bind() error {
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		return err
	}
	l.ln = ln
	return nil
}

func (l *Listener) serve() {
	s := l.s
	tag := func(c net.Conn) any { return newHTTPConn(s.h, l, c) }
	s.acceptWG.Add(1)
	if l.other == nil {
		go s.acceptLoop(l.ln, l.name, tag)
		return
	}
	l.queue = &connQueue{conns: make(chan net.Conn), closed: make(chan struct{}), addr: l.ln.Addr()}
	l.server = &http.Server{Handler: l.other, ReadHeaderTimeout: s.cfg.HandshakeTimeout, ErrorLog: nil,
		MaxHeaderBytes: s.cfg.MaxHeadBytes, IdleTimeout: otherIdleTimeout}
	go func() { _ = l.server.Serve(l.queue) }()
	go s.acceptSorted(l, tag)
}

// otherIdleTimeout closes a kept-alive connection of a ServeOther
// handler that sends no new request: idle connections are not held
// without bound.
const otherIdleTimeout = 2 * time.Minute

// close stops accepting; other's requests in flight are given until ctx ends.
func (l *Listener) close(ctx context.Context) {
	if l.ln != nil {
		_ = l.ln.Close()
	}
	if l.queue != nil {
		l.queue.close()
		_ = l.server.Shutdown(ctx)
	}
}

// acceptSorted accepts for a listener that serves other requests off the
// loop: each connection's request head is looked at (without reading it)
// on a goroutine of its own, bounded by Config.MaxHandshakes, and the
// connection goes to the loop if it is a WebSocket upgrade to a route,
// otherwise to net/http.
func (s *Server) acceptSorted(l *Listener, tag func(net.Conn) any) {
	defer s.acceptWG.Done()
	slots := make(chan struct{}, s.cfg.MaxHandshakes)
	var sorting sync.WaitGroup
	defer sorting.Wait()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.offLoop.acceptErrors.Add(1)
			time.Sleep(5 * time.Millisecond) // descriptors ran short: let some free up
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			s.offLoop.handshakesRefused.Add(1)
			_ = c.Close()
			continue
		}
		sorting.Add(1)
		go func() {
			defer func() { <-slots; sorting.Done() }()
			if l.upgradesToRoute(c) {
				if _, err := s.cli.EnrollContext(c, tag(c)); err != nil {
					s.offLoop.acceptErrors.Add(1)
					_ = c.Close()
				}
				return
			}
			if !l.queue.hand(c) {
				_ = c.Close()
			}
		}()
	}
}

// upgradesToRoute peeks at a connection's request head, leaving it unread,
// and reports whether it asks for a WebSocket upgrade to one of the
// listener's routes. A head that does not arrive in time, or is not HTTP,
// goes to net/http, which answers it.
func (l *Listener) upgradesToRoute(c net.Conn) bool {
	s := l.s
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	buf := make([]byte, s.cfg.MaxHeadBytes)
	deadline := time.Now().Add(s.cfg.HandshakeTimeout)
	_ = c.SetReadDeadline(deadline)
	defer c.SetReadDeadline(time.Time{})
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		n := 0
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
			return rerr != unix.EAGAIN
		})
		if err != nil || rerr != nil || n == 0 {
			return false
		}
		head := buf[:n]
		if end := bytes.Index(head, []byte("\r\n\r\n")); end >= 0 {
			return l.isRouteUpgrade(head[:end+2])
		}
		if n == len(buf) || time.Now().After(deadline) {
			return false
		}
		// The head is incomplete and the socket stays readable while the
		// peeked bytes sit unread: wait a little before looking again.
		time.Sleep(wait)
	}
}

// isRouteUpgrade reads the request line and headers just enough to
// classify them; the loop parses the head properly once it has it.
func (l *Listener) isRouteUpgrade(head []byte) bool {
	lines := strings.Split(string(head), "\r\n")
	parts := strings.Fields(lines[0])
	if len(parts) != 3 || parts[0] != http.MethodGet {
		return false
	}
	path := parts[1]
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	if _, ok := l.route(path); !ok {
		return false
	}
	for _, line := range lines[1:] {
		name, value, ok := strings.Cut(line, ":")
		if ok && strings.EqualFold(strings.TrimSpace(name), "Upgrade") &&
			strings.Contains(strings.ToLower(value), "websocket") {
			return true
		}
	}
	return false
}

// connQueue is a net.Listener fed by the accept goroutine.
type connQueue struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
	addr   net.Addr
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.closed:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) hand(c net.Conn) bool {
	select {
	case q.conns <- c:
		return true
	case <-q.closed:
		return false
	}
}

func (q *connQueue) close()         { q.once.Do(func() { close(q.closed) }) }
func (q *connQueue) Close() error   { q.close(); return nil }
func (q *connQueue) Addr() net.Addr { return q.addr }
