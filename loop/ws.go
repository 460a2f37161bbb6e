package loop

import (
	"encoding/binary"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/bytebufferpool"

	"github.com/placeos-gnet/dispatch/codec"
)

// WSRole is what a WebSocket endpoint is for (a dispatch driver, a group
// driver, a topic subscriber, …). The transport handles framing, fragments,
// ping/pong, the close handshake and its bounds, and hands the role complete
// messages.
type WSRole interface {
	// Message handles one complete data message; payload is valid only
	// during the call. Text messages are valid UTF-8.
	Message(c *WSConn, text bool, payload []byte)
	// Ended runs once, when the endpoint ends for whatever reason.
	Ended(c *WSConn, reason EndReason)
}

// WSOptions configures a WebSocket endpoint.
type WSOptions struct {
	Class      *Class
	Output     Output
	MaxMessage int // largest message, fragments included (close 1009 past it)
}

// WSConn is a server-side WebSocket endpoint on the loop. Frames are parsed
// and unmasked in place in gnet's inbound buffer; an oversized frame is
// refused from its header, before its payload is buffered.
type WSConn struct {
	Endpoint
	role       WSRole
	maxMessage int
	readAt     time.Time // when the peer last sent anything (wsping.go)

	client     bool // the client side of the connection (dial.go): frames out are masked, frames in are not
	need       int  // bytes that must be buffered before the next frame can be parsed
	fragmented bool
	fragOp     ws.OpCode
	frag       *bytebufferpool.ByteBuffer // a fragmented message being reassembled
}

// Role is the endpoint's role.
func (c *WSConn) Role() WSRole { return c.role }

func (c *WSConn) opened(gnet.Conn) gnet.Action { return gnet.None }

// traffic consumes every complete frame in the inbound buffer. A paused
// producer's pause is re-applied on the way out, however the frames ended:
// gnet turns reading back on to deliver them.
func (c *WSConn) traffic(gc gnet.Conn) gnet.Action {
	c.readAt = c.hub.now
	c.frames(gc)
	switch {
	case c.closing:
		_, _ = gc.Discard(-1) // ended: nothing more it sends matters
	case c.paused:
		c.hub.repause(&c.Endpoint)
	}
	return gnet.None
}

// frames hands every complete frame to frame, until the buffer holds none
// or the endpoint ends.
func (c *WSConn) frames(gc gnet.Conn) {
	for !c.closing {
		avail := gc.InboundBuffered()
		if avail < 2 || avail < c.need {
			return
		}
		head, _ := gc.Peek(min(avail, codec.MaxFrameHeaderLen))
		state := ws.StateServerSide
		if c.client {
			state = ws.StateClientSide
		}
		if c.fragmented {
			state = state.Set(ws.StateFragmented)
		}
		h, hn, err := codec.ParseFrameHeader(head, state)
		if err != nil {
			reason := EndProtocol
			if errors.Is(err, codec.ErrFrameTooLarge) {
				reason = EndOversized
			}
			c.endWith(reason, codec.CloseCodeFor(err), err.Error())
			return
		}
		if hn == 0 {
			return
		}
		if h.Length+int64(c.fragLen()) > int64(c.maxMessage) {
			c.End(EndOversized, "message too large")
			return
		}
		total := hn + int(h.Length)
		if avail < total {
			c.need = total
			return
		}
		c.need = 0
		frame, _ := gc.Peek(total)
		payload := frame[hn:]
		if h.Masked {
			ws.Cipher(payload, h.Mask, 0)
		}
		c.frame(h, payload)
		_, _ = gc.Discard(total)
	}
}

func (c *WSConn) fragLen() int {
	if c.frag == nil {
		return 0
	}
	return c.frag.Len()
}

// frame handles one complete frame.
func (c *WSConn) frame(h ws.Header, payload []byte) {
	switch h.OpCode {
	case ws.OpPing:
		c.queueControl(ws.OpPong, payload)
		return
	case ws.OpPong:
		return
	case ws.OpClose:
		c.peerClosing(payload)
		return
	}
	if !h.Fin || c.fragmented {
		if !c.fragmented {
			c.fragmented, c.fragOp = true, h.OpCode
			c.frag = bytebufferpool.Get()
		}
		_, _ = c.frag.Write(payload)
		if !h.Fin {
			return
		}
		frag, op := c.frag, c.fragOp
		c.fragmented, c.frag = false, nil
		defer bytebufferpool.Put(frag)
		c.message(op, frag.B)
		return
	}
	c.message(h.OpCode, payload)
}

func (c *WSConn) message(op ws.OpCode, payload []byte) {
	text := op == ws.OpText
	if text && !utf8.Valid(payload) {
		c.endWith(EndProtocol, ws.StatusInvalidFramePayloadData, "invalid UTF-8 in text message")
		return
	}
	c.class.MessagesIn++
	c.class.BytesIn += uint64(len(payload))
	c.role.Message(c, text, payload)
}

// peerClosing answers a close frame with a close frame, as RFC 6455
// requires, echoing the status code.
func (c *WSConn) peerClosing(payload []byte) {
	switch {
	case len(payload) == 0:
		c.endWith(EndGone, ws.StatusNoStatusRcvd, "")
	case len(payload) == 1:
		c.endWith(EndProtocol, ws.StatusProtocolError, "close frame payload of one byte")
	default:
		code := ws.StatusCode(binary.BigEndian.Uint16(payload))
		if err := ws.CheckCloseFrameData(code, string(payload[2:])); err != nil {
			c.endWith(EndProtocol, codec.CloseCodeFor(err), err.Error())
			return
		}
		c.endWith(EndGone, code, "")
	}
}

// EndWith ends the endpoint with an explicit close code (a room kick's own
// code, say) rather than its reason's.
func (c *WSConn) EndWith(reason EndReason, code ws.StatusCode, text string) {
	c.endWith(reason, code, text)
}

// closeLinger is how long an ended WebSocket stays open for its buffered
// output and close frame to drain.
const closeLinger = 5 * time.Second

func (c *WSConn) end(reason EndReason, code ws.StatusCode, text string) {
	c.endWith(reason, code, text)
}

// endWith sends the close frame behind whatever gnet still holds for the
// peer, tells the role, and closes the connection once the output drained
// (or closeLinger passed): even a slow reader that wakes up learns why it
// was cut.
func (c *WSConn) endWith(reason EndReason, code ws.StatusCode, text string) {
	if !c.flushAndFinish(reason, text) {
		return
	}
	h := c.hub
	if code == 0 {
		code = reason.closeCode()
	}
	var frame [2 + 4 + 2 + ws.MaxControlFramePayloadSize]byte
	_, _ = c.conn.Write(c.appendClose(frame[:0], code, text))
	c.role.Ended(c, reason)
	if c.conn.OutboundBuffered() == 0 {
		h.closeConn(c.conn)
		return
	}
	h.lingering[c] = h.now.Add(closeLinger)
}

// closed runs when the connection ends, whichever side closed it.
func (c *WSConn) closed(_ gnet.Conn, err error) {
	h := c.hub
	if !c.ended {
		detail := ""
		if err != nil {
			detail = err.Error()
		}
		c.finish(EndGone, detail)
		c.role.Ended(c, EndGone)
	}
	delete(h.lingering, c)
	if c.frag != nil {
		bytebufferpool.Put(c.frag)
		c.frag = nil
	}
	c.spans = nil
}

// closeDrained closes lingering WebSockets whose output drained or whose
// grace period is over.
func (h *Hub) closeDrained() {
	for c, deadline := range h.lingering {
		if c.conn.OutboundBuffered() == 0 || h.now.After(deadline) {
			h.closeConn(c.conn)
		}
	}
}
