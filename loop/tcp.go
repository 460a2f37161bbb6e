package loop

import (
	"net"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
)

// TCPRole is what a raw TCP endpoint is for: a device on a dispatch port, a
// socket-group member.
type TCPRole interface {
	// Open admits the connection; false closes it at once, uncounted as an
	// end (the role counts its refusals).
	Open(c *TCPConn) bool
	// Data handles bytes read and returns how many it consumed; the rest
	// stays buffered for the next call. data is valid only during the call.
	Data(c *TCPConn, data []byte) int
	// Ended runs once, when an admitted endpoint ends for whatever reason.
	Ended(c *TCPConn, reason EndReason)
}

// TCPConn is a raw TCP endpoint: bytes in are handed to its role as they
// arrive, bytes out are queued through the outbox in its format.
type TCPConn struct {
	Endpoint
	role     TCPRole
	out      Output
	admitted bool
}

// NewTCPConn tags an accepted connection for the loop; it runs on the
// accept goroutine and only reads immutable data.
func (h *Hub) NewTCPConn(c net.Conn, class *Class, out Output, role TCPRole) *TCPConn {
	tc := &TCPConn{role: role, out: out}
	tc.hub, tc.class = h, class
	tc.addressOf(c)
	return tc
}

// Role is the endpoint's role.
func (c *TCPConn) Role() TCPRole { return c.role }

func (c *TCPConn) opened(gc gnet.Conn) gnet.Action {
	h := c.hub
	c.conn = gc
	if h.Stopping() || !c.role.Open(c) {
		c.ended, c.closing = true, true
		return gnet.Close
	}
	c.admitted = true
	c.init(h, gc, c.class, c, c.out)
	h.rawConns++
	return gnet.None
}

func (c *TCPConn) traffic(gc gnet.Conn) gnet.Action {
	data, _ := gc.Peek(-1)
	if c.closing || len(data) == 0 {
		_, _ = gc.Discard(-1)
		return gnet.None
	}
	c.class.MessagesIn++
	if n := c.role.Data(c, data); n > 0 {
		c.class.BytesIn += uint64(n)
		_, _ = gc.Discard(n)
	}
	if c.paused {
		c.hub.repause(&c.Endpoint) // gnet turned reading back on to deliver this
	}
	return gnet.None
}

// end writes what is already queued for the peer (a WRITE followed by a
// CLOSE reaches the device), tells the role and closes the connection.
func (c *TCPConn) end(reason EndReason, _ ws.StatusCode, text string) {
	if !c.flushAndFinish(reason, text) {
		return
	}
	h := c.hub
	h.rawConns--
	c.role.Ended(c, reason)
	h.closeConn(c.conn)
}

func (c *TCPConn) closed(_ gnet.Conn, err error) {
	if c.admitted && !c.ended {
		detail := ""
		if err != nil {
			detail = err.Error()
		}
		c.finish(EndGone, detail)
		c.hub.rawConns--
		c.role.Ended(c, EndGone)
	}
	c.spans = nil
}
