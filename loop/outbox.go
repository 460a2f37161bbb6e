package loop

import (
	"context"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/codec"
)

// outbox collects the frames produced during one pass of the event loop and
// writes them out once per endpoint at the end of it. A frame is encoded
// once into the arena however many endpoints receive it; each endpoint holds
// spans of the arena, and spans that happen to be adjacent are merged, so an
// endpoint that hears everything gets one contiguous write.
type outbox struct {
	arena     []byte
	dirty     []*Endpoint
	iov       [][]byte
	pair      [3][]byte // scratch for writing one frame at once
	scheduled bool      // a flush is posted for the end of this pass
	flushing  bool      // flush is running: what is queued meanwhile joins it
}

// arenaFlushBytes bounds the arena: past it the outbox is flushed at once
// rather than at the end of the pass.
const arenaFlushBytes = 4 << 20

// span is a byte range of the arena.
type span struct{ start, end int }

// queue adds a span to an endpoint's pending output.
func (h *Hub) queue(e *Endpoint, start, end int) {
	if e.closing {
		return
	}
	if n := len(e.spans); n > 0 && e.spans[n-1].end == start {
		e.spans[n-1].end = end
	} else {
		e.spans = append(e.spans, span{start, end})
	}
	e.queued += end - start
	e.class.FramesOut++
	if !e.dirty {
		e.dirty = true
		h.out.dirty = append(h.out.dirty, e)
	}
}

// queueFrame queues a frame of any opcode (pong, close) for one endpoint.
func (h *Hub) queueFrame(e *Endpoint, op ws.OpCode, payload []byte) {
	start := len(h.out.arena)
	h.out.arena = codec.AppendFrame(h.out.arena, op, payload)
	h.queue(e, start, len(h.out.arena))
	h.scheduleFlush()
}

// scheduleFlush arranges for the outbox to be written at the end of this
// pass of the loop (gnet runs posted tasks after it has handled the ready
// sockets), or at once if the arena has grown past its bound.
func (h *Hub) scheduleFlush() {
	o := &h.out
	if len(o.dirty) == 0 || o.flushing {
		return
	}
	if len(o.arena) >= arenaFlushBytes {
		h.flush()
		return
	}
	if !o.scheduled {
		o.scheduled = true
		if err := h.s.el.Execute(context.Background(), h.flushTask); err != nil {
			o.scheduled = false
			h.flush()
		}
	}
}

// flush writes every dirty endpoint's spans with one write or writev.
// Writing can close an endpoint (gnet calls OnClose inside Write on error),
// whose kind may publish in turn: the loop walks the dirty list by index so
// that what is queued meanwhile is written in the same pass.
func (h *Hub) flush() {
	o := &h.out
	o.flushing = true
	for i := 0; i < len(o.dirty); i++ {
		e := o.dirty[i]
		if !h.writePending(e) {
			e.full()
		}
	}
	clear(o.dirty)
	o.dirty = o.dirty[:0]
	o.arena = o.arena[:0]
	o.flushing = false
}

// writePending writes an endpoint's queued spans. It reports false when the
// endpoint is past its bound: bytes the kernel would not take and gnet
// holds for it. A burst the kernel absorbs is not a slow reader.
func (h *Hub) writePending(e *Endpoint) bool {
	if !e.dirty {
		return true
	}
	e.dirty = false
	spans, queued := e.spans, e.queued
	e.spans, e.queued = e.spans[:0], 0
	if e.closing || queued == 0 {
		return true
	}
	if e.onFull != DropWhenFull && e.conn.OutboundBuffered() > e.limit {
		return false // already behind: do not buffer more for it
	}
	o := &h.out
	iov := o.iov[:0]
	for _, s := range spans {
		iov = append(iov, o.arena[s.start:s.end])
	}
	e.countWrite(queued)
	if len(iov) == 1 {
		_, _ = e.conn.Write(iov[0])
	} else {
		// gnet trims the slice it is given; it is rebuilt for every endpoint.
		_, _ = e.conn.Writev(iov)
	}
	clear(iov)
	o.iov = iov[:0]
	if e.closing {
		return true
	}
	e.afterWrite(queued)
	return e.onFull == DropWhenFull || e.conn.OutboundBuffered() <= e.limit
}

// writeNow writes one frame (head, payload, tail) to an endpoint after
// whatever is already queued for it. Past its bound it is handled as in a
// flush.
func (h *Hub) writeNow(e *Endpoint, head, payload, tail []byte) {
	if e.closing {
		return
	}
	if !h.writePending(e) || e.onFull != DropWhenFull && e.conn.OutboundBuffered() > e.limit {
		e.full()
		return
	}
	if e.closing {
		return
	}
	e.class.FramesOut++
	e.countWrite(len(head) + len(payload) + len(tail))
	// gnet trims the slice it is given: refill the scratch every time.
	o := &h.out
	o.pair[0], o.pair[1], o.pair[2] = head, payload, tail
	iov := o.pair[:]
	if len(tail) == 0 {
		iov = iov[:2]
	}
	_, _ = e.conn.Writev(iov)
	o.pair = [3][]byte{}
	if e.closing {
		return
	}
	e.afterWrite(len(head) + len(payload) + len(tail))
	if e.onFull != DropWhenFull && e.conn.OutboundBuffered() > e.limit {
		e.full()
	}
}
