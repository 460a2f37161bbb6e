package cluster

// The two goroutines between the loop and NATS. The loop never calls NATS:
// it queues what it publishes (bounded in bytes, drops counted) for the
// sender, and the receiver hands it what NATS delivered in batches, one
// batch at a time, so that NATS's own bound on our subscription (a slow
// consumer is dropped and counted) is the only queue on the way in.

import (
	"sync"

	"github.com/nats-io/nats.go"
)

type opType uint8

const (
	opPub opType = iota
	opSub
	opUnsub
)

// outMsg is one operation toward NATS, in the order the loop made it.
type outMsg struct {
	op      opType
	subject string
	data    []byte
	channel string // the channel the message's frames are about, for batching
}

// outQueue is the bounded queue from the loop to the sender.
type outQueue struct {
	mu     sync.Mutex
	msgs   []outMsg
	bytes  int
	limit  int
	closed bool
	wake   chan struct{}
}

func newOutQueue(limit int) *outQueue {
	return &outQueue{limit: limit, wake: make(chan struct{}, 1)}
}

// push queues msgs; publications that do not fit are dropped (the
// subscriptions always go: they are small and few). It returns how many
// were dropped.
func (q *outQueue) push(msgs []outMsg) (dropped uint64) {
	if len(msgs) == 0 {
		return 0
	}
	q.mu.Lock()
	for _, m := range msgs {
		if m.op == opPub && (q.closed || q.bytes+len(m.data) > q.limit) {
			dropped++
			continue
		}
		q.msgs = append(q.msgs, m)
		q.bytes += len(m.data)
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return dropped
}

// take waits for queued operations; nil once closed and empty.
func (q *outQueue) take(into []outMsg) []outMsg {
	for {
		q.mu.Lock()
		if len(q.msgs) > 0 {
			into = append(into[:0], q.msgs...)
			clear(q.msgs)
			q.msgs = q.msgs[:0]
			q.bytes = 0
			q.mu.Unlock()
			return into
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil
		}
		<-q.wake
	}
}

func (q *outQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// sendLoop publishes and subscribes in the loop's order. A publication NATS
// refuses (it is away) is lost: the loop counts the outage, and resyncs.
func (b *Bus) sendLoop() {
	defer b.wg.Done()
	subs := make(map[string]*nats.Subscription)
	var batch []outMsg
	for {
		batch = b.out.take(batch)
		if batch == nil {
			_ = b.nc.Flush()
			return
		}
		for i := range batch {
			m := &batch[i]
			switch m.op {
			case opPub:
				_ = b.nc.Publish(m.subject, m.data)
			case opSub:
				if subs[m.subject] == nil {
					if s, err := b.nc.ChanSubscribe(m.subject, b.in); err == nil {
						subs[m.subject] = s
					}
				}
			case opUnsub:
				if s := subs[m.subject]; s != nil {
					_ = s.Unsubscribe()
					delete(subs, m.subject)
				}
			}
			*m = outMsg{}
		}
	}
}

// receiveLoop hands what NATS delivered to the loop, in order, a batch at
// a time: it waits for the loop to finish one before reading on.
func (b *Bus) receiveLoop() {
	defer b.wg.Done()
	const maxBatch = 512
	batch := make([]*nats.Msg, 0, maxBatch)
	done := make(chan struct{}, 1)
	handle := func() {
		for i, m := range batch {
			b.receive(m)
			batch[i] = nil
		}
		done <- struct{}{}
	}
	for {
		select {
		case m := <-b.in:
			batch = append(batch[:0], m)
		case <-b.stop:
			return
		}
	more:
		for len(batch) < maxBatch {
			select {
			case m := <-b.in:
				batch = append(batch, m)
			default:
				break more
			}
		}
		if !b.hub.Post(handle) {
			return
		}
		select {
		case <-done:
		case <-b.stop:
			return
		}
	}
}
