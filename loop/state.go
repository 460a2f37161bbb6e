package loop

import (
	"context"
	"log/slog"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/stats"
)

// state is everything the loop owns. Only the loop goroutine touches it.
type state struct {
	s   *Server
	cfg *Config
	log *slog.Logger

	tcp     map[int]*channel // device TCP ports, by port
	udp     map[int]*channel // device UDP ports, by port
	drivers map[*driver]struct{}
	// lingering are cut drivers whose close frame waits behind buffered output.
	lingering map[*driver]time.Time

	handshakes     map[*httpConn]gnet.Conn // connections still sending a request head
	handshakeFlood floodLog                // rate-limits the line for refused handshakes
	deviceConns    int                     // device TCP connections on every port

	out       outbox
	flushTask gnet.Runnable
	targets   []*driver // scratch for per-datagram routing

	direct       []*driver // scratch: targets of a frame written at once
	directHeader []byte    // scratch: its header
	pair         [2][]byte // scratch: header and payload for writev

	groups groupState // socket groups: listeners, groups, joining members

	// current is the connection whose OnOpen or OnTraffic is running: gnet
	// still uses its buffers after the callback returns, so closeConn must
	// not close it synchronously.
	current gnet.Conn

	c   stats.Counters
	lag stats.LagHistogram
	now time.Time // coarse clock, refreshed every tick
}

func newState(s *Server) *state {
	st := &state{
		s:          s,
		cfg:        &s.cfg,
		log:        s.log,
		tcp:        make(map[int]*channel),
		udp:        make(map[int]*channel),
		drivers:    make(map[*driver]struct{}),
		lingering:  make(map[*driver]time.Time),
		handshakes: make(map[*httpConn]gnet.Conn),
		now:        time.Now(),
	}
	st.flushTask = gnet.RunnableFunc(func(context.Context) error {
		st.out.scheduled = false
		st.flush()
		return nil
	})
	return st
}

// tick runs on the loop a few times a second: it expires handshakes that
// missed their deadline and publishes the counters. posted is when the
// ticker asked for it, so the wait measures the loop's lag.
func (st *state) tick(posted time.Time) {
	st.now = time.Now()
	st.lag.Observe(st.now.Sub(posted).Seconds())
	deadline := st.now.Add(-st.cfg.HandshakeTimeout)
	for h, c := range st.handshakes {
		if h.born.Before(deadline) {
			st.c.HandshakeTimeouts++
			st.c.HandshakeFailures++
			st.log.Debug("handshake deadline passed, closing", "peer", h.peer)
			st.closeConn(c)
		}
	}
	st.expireGroupJoins()
	st.expireUDPMembers()
	st.closeDrained()
	st.s.published.Store(&stats.Snapshot{
		Counters: st.c,
		Gauges: stats.Gauges{
			TCPPortsOpen: len(st.tcp),
			UDPPortsOpen: len(st.udp),
			Drivers:      len(st.drivers),
			DeviceConns:  st.deviceConns,
		},
		Lag:    st.lag,
		Groups: st.groupsSnapshot(),
	})
}

// shutdown closes every device port and socket group and sends close 1001
// to every driver.
func (st *state) shutdown() {
	st.closeGroups()
	for _, ch := range st.tcp {
		st.closeChannel(ch)
	}
	for _, ch := range st.udp {
		st.closeChannel(ch)
	}
	for d := range st.drivers {
		st.cutDriver(d, ws.StatusGoingAway, "server shutting down")
	}
	for _, c := range st.handshakes {
		st.closeConn(c)
	}
	st.flush()
}

// closeConn closes a connection from the loop. Its OnClose runs at once,
// unless it is the connection whose callback is running: that one is closed
// by a task that runs once the callback has returned.
func (st *state) closeConn(c gnet.Conn) {
	if c == st.current {
		_ = c.Close()
		return
	}
	_ = st.s.el.Close(c)
}

// floodLog logs at most one line per interval for connections refused
// because too many handshakes are pending, with the count since the last.
type floodLog struct {
	count  int
	logged int64 // unix seconds of the last line
}

func (f *floodLog) note(st *state, peer string) {
	f.count++
	if now := st.now.Unix(); now-f.logged >= refusalLogInterval {
		st.log.Warn("too many connections still sending a request head, refusing new ones",
			"limit", st.cfg.MaxHandshakes, "refused", f.count, "last_peer", peer)
		f.count, f.logged = 0, now
	}
}
