package loop

import (
	"time"

	"github.com/gobwas/ws"
)

// Keepalive for WebSocket roles that must notice a dead peer: the role
// pings a connection that has been quiet and ends it if nothing comes back.

// LastRead is when the peer last sent anything (a data or control frame,
// a pong), by the loop's coarse clock; the upgrade counts.
func (c *WSConn) LastRead() time.Time { return c.readAt }

// Ping queues a ping frame; any frame the peer sends afterwards (its pong)
// moves LastRead on.
func (c *WSConn) Ping(payload []byte) {
	if !c.closing {
		c.hub.queueFrame(&c.Endpoint, ws.OpPing, payload)
	}
}
