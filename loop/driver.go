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

// driver is a WebSocket session registered on one channel: an upstream that
// hears the channel's members multiplexed and can write to or close them.
type driver struct {
	sink
	peer   string
	module string // X-Module-ID, for logs
	accept acceptList
	ch     *channel

	// input
	need       int // bytes that must be buffered before the next frame can be parsed
	fragmented bool
	fragOp     ws.OpCode
	frag       *bytebufferpool.ByteBuffer // a fragmented message being reassembled

	warnedBadWrite bool // one warning per session for unsendable UDP WRITEs
}

func (d *driver) output() *sink { return &d.sink }

// cutSlow closes a driver whose pending output passed its bound: 1008.
func (d *driver) cutSlow(st *state) {
	st.c.SlowDriverCuts++
	st.log.Warn("driver not keeping up, closing it", "peer", d.peer, "port", d.port(),
		"pending_bytes", d.conn.OutboundBuffered(), "limit", st.cfg.MaxDriverPending)
	st.cutDriver(d, ws.StatusPolicyViolation, "too slow: pending output limit reached")
}

func (d *driver) port() int {
	if d.ch != nil {
		return d.ch.port
	}
	return 0
}

// driverTraffic consumes every complete frame in the inbound buffer. Frames
// are parsed and unmasked in place; an oversized frame is refused from its
// header, before its payload is buffered.
func (st *state) driverTraffic(c gnet.Conn, d *driver) gnet.Action {
	if d.closing {
		_, _ = c.Discard(-1)
		return gnet.None
	}
	for {
		avail := c.InboundBuffered()
		if avail < 2 || avail < d.need {
			return gnet.None
		}
		head, _ := c.Peek(min(avail, codec.MaxFrameHeaderLen))
		state := ws.StateServerSide
		if d.fragmented {
			state = state.Set(ws.StateFragmented)
		}
		h, hn, err := codec.ParseFrameHeader(head, state)
		if err != nil {
			if errors.Is(err, codec.ErrFrameTooLarge) {
				st.c.OversizeMessages++
			} else {
				st.c.ProtocolErrors++
			}
			return st.failDriver(d, codec.CloseCodeFor(err), err.Error())
		}
		if hn == 0 {
			return gnet.None
		}
		if h.Length+int64(d.fragLen()) > int64(st.cfg.MaxMessageBytes) {
			st.c.OversizeMessages++
			st.log.Info("driver message too large, closing it", "peer", d.peer, "port", d.port(),
				"length", h.Length, "limit", st.cfg.MaxMessageBytes)
			return st.failDriver(d, ws.StatusMessageTooBig, "message too large")
		}
		total := hn + int(h.Length)
		if avail < total {
			d.need = total
			return gnet.None
		}
		d.need = 0
		frame, _ := c.Peek(total)
		payload := frame[hn:]
		ws.Cipher(payload, h.Mask, 0)
		action := st.driverFrame(d, h, payload)
		_, _ = c.Discard(total)
		if action != gnet.None || d.closing {
			return action
		}
	}
}

func (d *driver) fragLen() int {
	if d.frag == nil {
		return 0
	}
	return d.frag.Len()
}

// driverFrame handles one complete frame.
func (st *state) driverFrame(d *driver, h ws.Header, payload []byte) gnet.Action {
	switch h.OpCode {
	case ws.OpPing:
		start, end := st.out.appendFrame(ws.OpPong, payload)
		st.queue(d, start, end)
		st.scheduleFlush()
		return gnet.None
	case ws.OpPong:
		return gnet.None
	case ws.OpClose:
		return st.driverClosing(d, payload)
	}
	if !h.Fin || d.fragmented {
		if !d.fragmented {
			d.fragmented, d.fragOp = true, h.OpCode
			d.frag = bytebufferpool.Get()
		}
		_, _ = d.frag.Write(payload)
		if !h.Fin {
			return gnet.None
		}
		frag, op := d.frag, d.fragOp
		d.fragmented, d.frag = false, nil
		defer bytebufferpool.Put(frag)
		return st.driverMessage(d, op, frag.B)
	}
	return st.driverMessage(d, h.OpCode, payload)
}

// driverClosing answers a close frame with a close frame, as RFC 6455
// requires, echoing the status code.
func (st *state) driverClosing(d *driver, payload []byte) gnet.Action {
	if len(payload) == 0 {
		return st.failDriver(d, ws.StatusNoStatusRcvd, "")
	}
	if len(payload) == 1 {
		st.c.ProtocolErrors++
		return st.failDriver(d, ws.StatusProtocolError, "close frame payload of one byte")
	}
	code := ws.StatusCode(binary.BigEndian.Uint16(payload))
	if err := ws.CheckCloseFrameData(code, string(payload[2:])); err != nil {
		st.c.ProtocolErrors++
		return st.failDriver(d, codec.CloseCodeFor(err), err.Error())
	}
	return st.failDriver(d, code, "")
}

// driverMessage handles one complete data message. Only binary messages
// carry the protocol; text messages are ignored.
func (st *state) driverMessage(d *driver, op ws.OpCode, payload []byte) gnet.Action {
	if op == ws.OpText {
		if !utf8.Valid(payload) {
			st.c.ProtocolErrors++
			return st.failDriver(d, ws.StatusInvalidFramePayloadData, "invalid UTF-8 in text message")
		}
		return gnet.None
	}
	msg, err := codec.ParseMessage(payload)
	if err != nil {
		st.c.MalformedMessages++
		st.log.Info("malformed driver message, closing it", "peer", d.peer, "port", d.port(), "err", err)
		return st.failDriver(d, ws.StatusInvalidFramePayloadData, err.Error())
	}
	st.c.MessagesFromDrivers++
	st.c.BytesFromDrivers += uint64(len(payload))
	ch := d.ch
	if ch.policy == toMembers {
		st.groupDriverMessage(d, msg)
		return gnet.None
	}
	switch msg.Type {
	case codec.Write:
		if ch.proto == protoUDP {
			st.sendDatagram(d, msg.IP, msg.ID, msg.Data)
		} else if dv := ch.members[msg.ID]; dv != nil {
			st.writeToDevice(dv, msg.Data)
		}
	case codec.Close:
		if ch.proto == protoTCP {
			if dv := ch.members[msg.ID]; dv != nil {
				st.dropDevice(dv)
			}
		}
	}
	return gnet.None
}

// failDriver ends a session from inside its own callback. It returns the
// action for gnet: close now, or nothing while the close frame lingers.
func (st *state) failDriver(d *driver, code ws.StatusCode, reason string) gnet.Action {
	if st.endDriver(d, code, reason) {
		return gnet.Close
	}
	return gnet.None
}

// cutDriver ends a session from anywhere else on the loop.
func (st *state) cutDriver(d *driver, code ws.StatusCode, reason string) {
	if !d.closing && st.endDriver(d, code, reason) {
		st.closeConn(d.conn)
	}
}

// closeLinger is how long a cut driver's connection stays open for its
// already-buffered output and close frame to drain.
const closeLinger = 5 * time.Second

// endDriver unregisters a session at once and queues its close frame
// behind whatever gnet still holds for it. It reports whether the
// connection can be closed now; otherwise it lingers until its output
// drains or closeLinger passes, so even a slow reader that wakes up learns
// why it was cut.
func (st *state) endDriver(d *driver, code ws.StatusCode, reason string) bool {
	st.sendClose(d, code, reason)
	st.unregisterDriver(d)
	if d.conn.OutboundBuffered() == 0 {
		return true
	}
	st.lingering[d] = st.now.Add(closeLinger)
	return false
}

// closeDrained closes lingering driver connections whose output drained or
// whose grace period is over.
func (st *state) closeDrained() {
	for d, deadline := range st.lingering {
		if d.conn.OutboundBuffered() == 0 || st.now.After(deadline) {
			st.closeConn(d.conn)
		}
	}
}

func (st *state) sendClose(d *driver, code ws.StatusCode, reason string) {
	if d.closing {
		return
	}
	_ = st.writePending(&d.sink)
	d.closing = true
	var frame [2 + 2 + ws.MaxControlFramePayloadSize]byte
	var b []byte
	if code == ws.StatusNoStatusRcvd {
		b = codec.AppendFrameHeader(frame[:0], ws.OpClose, 0)
	} else {
		b = codec.AppendCloseFrame(frame[:0], code, reason)
	}
	_, _ = d.conn.Write(b)
}

// closeDriver runs when a driver connection ends, for any reason.
func (st *state) closeDriver(d *driver, err error) {
	d.closing = true
	delete(st.lingering, d)
	if d.frag != nil {
		bytebufferpool.Put(d.frag)
		d.frag = nil
	}
	d.spans = nil
	if err != nil {
		st.log.Debug("driver connection ended", "peer", d.peer, "err", err)
	}
	st.unregisterDriver(d)
}
