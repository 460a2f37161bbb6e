package loop

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/stats"
)

// EndReason says why an endpoint ended. Each maps to one counter per class,
// one rate-limited log line, and the action of the endpoint's transport
// (a WebSocket close code; a raw socket is just closed).
type EndReason uint8

// The order is stats.EndReasons'.
const (
	EndGone             EndReason = iota // the peer closed, or the connection failed
	EndShutdown                          // the server is stopping
	EndSlow                              // unsent output past its bound
	EndStalled                           // blocked, and drained nothing for the stall timeout
	EndOversized                         // a message or line past its bound
	EndProtocol                          // broke its transport's rules (WebSocket framing)
	EndMalformed                         // sent a message its role cannot parse
	EndRefused                           // not admitted any more, or refused by a rule
	EndTimeout                           // missed a deadline (join, auth)
	EndExpired                           // its credentials expired
	EndDenied                            // its credentials were revoked
	EndClosedByUpstream                  // an upstream closed it
	EndChannelClosed                     // its channel went away
)

func (r EndReason) String() string { return stats.EndReasons[r] }

// closeCode is the WebSocket close code for a reason.
func (r EndReason) closeCode() ws.StatusCode {
	switch r {
	case EndShutdown:
		return ws.StatusGoingAway
	case EndOversized:
		return ws.StatusMessageTooBig
	case EndProtocol:
		return ws.StatusProtocolError
	case EndMalformed:
		return ws.StatusInvalidFramePayloadData
	case EndSlow, EndStalled, EndRefused, EndTimeout, EndExpired, EndDenied:
		return ws.StatusPolicyViolation
	}
	return ws.StatusNormalClosure
}

// logLevel is how loudly an end is logged: the peer leaving is routine.
func (r EndReason) logLevel() (slog.Level, bool) {
	switch r {
	case EndGone, EndShutdown, EndChannelClosed, EndClosedByUpstream:
		return 0, false
	case EndSlow, EndStalled:
		return slog.LevelWarn, true
	}
	return slog.LevelInfo, true
}

// FullPolicy is what happens to an endpoint whose unsent output passes its
// bound.
type FullPolicy uint8

const (
	// CutWhenFull ends it as too slow (completeness: it would lose data).
	CutWhenFull FullPolicy = iota
	// DropWhenFull loses whole messages for it, counted (liveness: a live
	// view must not slow its publisher).
	DropWhenFull
)

// Class is one role of one kind (dispatch drivers, group members, …): the
// counters of its endpoints and its log lines.
type Class struct {
	stats.ClassCounters
	endLogs [len(stats.EndReasons)]RateLog
	endSays [len(stats.EndReasons)]string
	dropLog RateLog
	// caughtLog keeps the lines for ends of drop episodes to one per
	// interval too: a reader that hovers at its bound starts and ends many.
	caughtLog RateLog
}

// Say sets the log message for one reason to end, in the role's own words
// ("driver not keeping up, closing it"); the default is "ending connection".
func (cl *Class) Say(reason EndReason, msg string) *Class {
	cl.endSays[reason] = msg
	return cl
}

// Endpoint is one connection the loop serves, whatever its transport: the
// output owed to the peer, its bound, and how it ends. WebSocket and raw TCP
// transports embed it.
type Endpoint struct {
	hub   *Hub
	conn  gnet.Conn
	class *Class
	t     transport

	// Peer is the remote address for logs; IP is its address as accept
	// lists compare it, IPText as protocols carry it.
	Peer   string
	IP     netip.Addr
	IPText []byte

	format  *Format
	spans   []span
	queued  int  // bytes in spans
	dirty   bool // on the outbox's dirty list
	closing bool // its end is under way: nothing more is queued
	ended   bool
	limit   int // unsent bytes past which onFull applies
	onFull  FullPolicy
	// dropping is set while whole messages are being dropped for it.
	dropping bool
	dropped  uint64

	// Flow control (flow.go).
	member     *Member   // the member this endpoint's connection reads for, if any
	blocked    bool      // unsent bytes passed the high watermark and have not yet fallen below the low one
	paused     bool      // not being read: something it feeds is blocked
	progressAt time.Time // blocked: when it last drained anything
	lastUnsent int       // blocked: unsent bytes (gnet's and the kernel's) at the last check
	handed     int       // blocked: bytes handed to gnet since the last check
	pausedAt   time.Time
}

// transport is how an endpoint ends: a close frame, or just a close.
type transport interface {
	end(reason EndReason, code ws.StatusCode, text string)
}

// Output is how an endpoint receives: its wire format, its bound on unsent
// bytes, and what happens past it.
type Output struct {
	Format *Format
	Limit  int
	OnFull FullPolicy
}

func (e *Endpoint) init(h *Hub, conn gnet.Conn, class *Class, t transport, out Output) {
	e.hub, e.conn, e.class, e.t = h, conn, class, t
	e.format, e.limit, e.onFull = out.Format, out.Limit, out.OnFull
	class.Open++
	class.Opened++
	h.endpoints[e] = true
}

// addressOf fills Peer, IP and IPText from a connection, off the loop.
func (e *Endpoint) addressOf(c net.Conn) {
	e.Peer = c.RemoteAddr().String()
	e.IP = peerIP(c)
	e.IPText = []byte(e.IP.String())
}

// peerIP is a connection's remote address as accept lists compare it:
// IPv4-mapped IPv6 as IPv4, without a zone.
func peerIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap().WithZone("")
	}
	return netip.Addr{}
}

// Class is the endpoint's class.
func (e *Endpoint) Class() *Class { return e.class }

// Conn is the endpoint's gnet connection.
func (e *Endpoint) Conn() gnet.Conn { return e.conn }

// Closing reports whether the endpoint's end is under way.
func (e *Endpoint) Closing() bool { return e.closing }

// Unsent is what the endpoint owes its peer: bytes queued this pass and
// bytes the kernel would not take yet.
func (e *Endpoint) Unsent() int { return e.queued + e.conn.OutboundBuffered() }

// End ends the endpoint for a reason, once: the reason is counted and
// logged (rate-limited per class), the role is told, and the transport acts
// (a WebSocket sends the close code for the reason). detail says more in
// the log line.
func (e *Endpoint) End(reason EndReason, detail string) {
	e.t.end(reason, 0, detail)
}

// finish does the bookkeeping of an end: it reports false if the endpoint
// had already ended. Transports call it first thing.
func (e *Endpoint) finish(reason EndReason, detail string) bool {
	if e.ended {
		return false
	}
	e.ended, e.closing = true, true
	e.forgetFlow()
	h := e.hub
	cl := e.class
	cl.Ends[reason]++
	cl.Open--
	delete(h.endpoints, e)
	if level, ok := reason.logLevel(); ok && cl.endLogs[reason].Due(h.now) {
		msg := cl.endSays[reason]
		if msg == "" {
			msg = "ending connection"
		}
		h.log.Log(context.Background(), level, msg, "kind", cl.Kind, "role", cl.Role, "reason", reason.String(),
			"peer", e.Peer, "detail", detail, "count", cl.endLogs[reason].Take())
	}
	return true
}

// flushAndFinish starts a server-side end: what is already queued is
// written (a WRITE followed by a CLOSE still reaches the peer), then the end
// is booked. It reports false if the endpoint had already ended.
func (e *Endpoint) flushAndFinish(reason EndReason, detail string) bool {
	if e.ended {
		return false
	}
	_ = e.hub.writePending(e)
	return e.finish(reason, detail)
}

// full handles an endpoint past its bound, by its policy.
func (e *Endpoint) full() {
	if e.closing || e.onFull == DropWhenFull {
		return
	}
	e.End(EndSlow, "unsent output past its hard bound")
}

// dropMessage loses one whole message for an endpoint past its bound. The
// episode is logged when it starts (rate-limited per class) and when it
// ends, with the count.
func (e *Endpoint) dropMessage() {
	e.class.Dropped++
	e.dropped++
	if e.dropping {
		return
	}
	e.dropping = true
	cl := e.class
	if cl.dropLog.Due(e.hub.now) {
		e.hub.log.Warn("reader not keeping up, dropping whole messages for it", "kind", cl.Kind, "role", cl.Role,
			"peer", e.Peer, "limit", e.limit, "episodes", cl.dropLog.Take())
	}
}

// caughtUp ends a drop episode once the endpoint is writable again.
func (e *Endpoint) caughtUp() {
	if e.dropping && e.Unsent() < e.limit/2 {
		e.dropping = false
		cl := e.class
		if cl.caughtLog.Due(e.hub.now) {
			e.hub.log.Info("reader caught up", "kind", cl.Kind, "role", cl.Role, "peer", e.Peer, "dropped", e.dropped,
				"episodes", cl.caughtLog.Take())
		}
		e.dropped = 0
	}
}

func (e *Endpoint) countWrite(n int) {
	e.class.Writes++
	e.class.BytesOut += uint64(n)
	e.hub.c.Writes++
}

// RateLog keeps the log lines of a frequent event down to the first one and
// then at most one per interval, each carrying the count since the last.
type RateLog struct {
	count  int
	logged int64 // unix seconds of the last line
}

// RateLogInterval is the least time between two lines of one RateLog.
const RateLogInterval = 10 * time.Second

// Due counts one event and reports whether a line is due for it.
func (r *RateLog) Due(now time.Time) bool {
	r.count++
	if now.Unix()-r.logged < int64(RateLogInterval/time.Second) {
		return false
	}
	r.logged = now.Unix()
	return true
}

// Take returns the events counted since the last line.
func (r *RateLog) Take() int {
	n := r.count
	r.count = 0
	return n
}
