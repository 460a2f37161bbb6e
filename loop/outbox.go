package loop

import (
	"context"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/codec"
)

// outbox collects the frames produced during one pass of the event loop and
// writes them out once per driver at the end of it. A frame is encoded once
// into the arena however many drivers receive it; each driver holds spans of
// the arena, and spans that happen to be adjacent are merged, so a driver
// that hears everything gets one contiguous write.
type outbox struct {
	arena     []byte
	dirty     []outlet
	iov       [][]byte
	scheduled bool
}

// arenaFlushBytes bounds the arena: past it the outbox is flushed at once
// rather than at the end of the pass.
const arenaFlushBytes = 4 << 20

// span is a byte range of the arena.
type span struct{ start, end int }

// appendDispatchFrame encodes a binary frame holding one dispatch message
// and returns its span in the arena.
func (o *outbox) appendDispatchFrame(t codec.MsgType, ip []byte, id uint64, data []byte) (int, int) {
	start := len(o.arena)
	o.arena = codec.AppendFrameHeader(o.arena, ws.OpBinary, codec.HeaderLen(len(ip))+len(data))
	o.arena = codec.AppendHeader(o.arena, t, ip, id, len(data))
	o.arena = append(o.arena, data...)
	return start, len(o.arena)
}

// appendRaw copies bytes for raw sockets (socket-group members) into the
// arena unframed and returns their span.
func (o *outbox) appendRaw(data []byte) (int, int) {
	start := len(o.arena)
	o.arena = append(o.arena, data...)
	return start, len(o.arena)
}

// appendFrame encodes a frame of any opcode (pong, close) for one driver.
func (o *outbox) appendFrame(op ws.OpCode, payload []byte) (int, int) {
	start := len(o.arena)
	o.arena = codec.AppendFrame(o.arena, op, payload)
	return start, len(o.arena)
}

// sink is the pending output of one endpoint the outbox writes to.
type sink struct {
	conn         gnet.Conn
	spans        []span
	pendingBytes int
	dirty        bool
	closing      bool
	// member marks a raw socket-group member rather than a driver: it is
	// bound by MaxMemberPending and counted apart.
	member bool
}

// outlet is an endpoint with a sink: a driver's WebSocket, or a raw socket
// that hears other members directly. cutSlow ends it when it falls too far
// behind, in whatever way its protocol prescribes.
type outlet interface {
	output() *sink
	cutSlow(st *state)
}

// queue adds a span to an outlet's pending output.
func (st *state) queue(o outlet, start, end int) {
	d := o.output()
	if d.closing {
		return
	}
	if n := len(d.spans); n > 0 && d.spans[n-1].end == start {
		d.spans[n-1].end = end
	} else {
		d.spans = append(d.spans, span{start, end})
	}
	d.pendingBytes += end - start
	if d.member {
		st.c.GroupChunksToMembers++
	} else {
		st.c.FramesToDrivers++
	}
	if !d.dirty {
		d.dirty = true
		st.out.dirty = append(st.out.dirty, o)
	}
}

// scheduleFlush arranges for the outbox to be written at the end of this
// pass of the loop (gnet runs posted tasks after it has handled the ready
// sockets), or at once if the arena has grown past its bound.
func (st *state) scheduleFlush() {
	if len(st.out.arena) >= arenaFlushBytes {
		st.flush()
		return
	}
	if !st.out.scheduled {
		st.out.scheduled = true
		if err := st.s.el.Execute(context.Background(), st.flushTask); err != nil {
			st.out.scheduled = false
			st.flush()
		}
	}
}

// flush writes every dirty driver's spans with one write or writev. Writing
// can close a driver (gnet calls OnClose inside Write on error), which can
// close devices and queue CLOSED frames: the loop walks the dirty list by
// index so those are flushed in the same pass.
func (st *state) flush() {
	o := &st.out
	for i := 0; i < len(o.dirty); i++ {
		if !st.writePending(o.dirty[i].output()) {
			o.dirty[i].cutSlow(st)
		}
	}
	o.dirty = o.dirty[:0]
	o.arena = o.arena[:0]
}

// writePending writes a sink's queued spans. It reports false when the
// sink is past its pending-output bound: bytes the kernel would not take
// and gnet holds for it. A burst the kernel absorbs is not a slow reader.
func (st *state) writePending(d *sink) bool {
	o := &st.out
	if !d.dirty {
		return true
	}
	d.dirty = false
	spans, pending := d.spans, d.pendingBytes
	d.spans, d.pendingBytes = d.spans[:0], 0
	if d.closing || pending == 0 {
		return true
	}
	if d.conn.OutboundBuffered() > st.pendingLimit(d) {
		return false // already behind: do not buffer more for it
	}
	iov := o.iov[:0]
	for _, s := range spans {
		iov = append(iov, o.arena[s.start:s.end])
	}
	st.countWrite(d, pending)
	if len(iov) == 1 {
		_, _ = d.conn.Write(iov[0])
	} else {
		// gnet trims the slice it is given; it is rebuilt for every sink.
		_, _ = d.conn.Writev(iov)
	}
	clear(iov)
	o.iov = iov[:0]
	return d.closing || d.conn.OutboundBuffered() <= st.pendingLimit(d)
}

// directWriteBytes is the payload size from which a frame skips the arena:
// a read that large has nothing to gain from batching, so it is written at
// once from gnet's read buffer, without a copy or a wait for the pass to end.
const directWriteBytes = 16 << 10

// writeNow writes header and payload to a sink after whatever is already
// queued for it. Like writePending, it reports false past the bound.
func (st *state) writeNow(d *sink, header, payload []byte) bool {
	if d.closing {
		return true
	}
	if !st.writePending(d) || d.conn.OutboundBuffered() > st.pendingLimit(d) {
		return false
	}
	if d.closing {
		return true
	}
	st.countWrite(d, len(header)+len(payload))
	// gnet trims the slice it is given: refill the scratch pair every time.
	st.pair[0], st.pair[1] = header, payload
	_, _ = d.conn.Writev(st.pair[:])
	st.pair = [2][]byte{}
	return d.closing || d.conn.OutboundBuffered() <= st.pendingLimit(d)
}

func (st *state) pendingLimit(d *sink) int {
	if d.member {
		return st.cfg.MaxMemberPending
	}
	return st.cfg.MaxDriverPending
}

func (st *state) countWrite(d *sink, n int) {
	st.c.Flushes++
	if d.member {
		st.c.GroupBytesToMembers += uint64(n)
	} else {
		st.c.BytesToDrivers += uint64(n)
	}
}
