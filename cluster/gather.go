package cluster

import "time"

// gather is a cluster-wide question under way: every live replica's answer
// to a topic, collected until all answered or the deadline passed.
type gather struct {
	parts    [][]byte
	waiting  map[uint16]bool
	deadline time.Time
	done     func(parts [][]byte)
	finished bool
}

// Gather implements loop.Bus.
func (b *Bus) Gather(topic string, local []byte, done func(parts [][]byte)) {
	g := &gather{parts: [][]byte{local}, waiting: make(map[uint16]bool), deadline: b.hub.Now().Add(gatherTimeout), done: done}
	if b.connected {
		for node := range b.peers {
			g.waiting[node] = true
		}
	}
	if len(g.waiting) == 0 {
		g.finish()
		return
	}
	b.nextQuery++
	id := b.nextQuery
	b.queries[id] = g
	b.queueAll(AppendQuery(b.header(), id, topic))
	// The tick sees the deadline; answers usually come long before.
	g.onFinish(func() { delete(b.queries, id) })
}

func (g *gather) onFinish(fn func()) {
	done := g.done
	g.done = func(parts [][]byte) { fn(); done(parts) }
}

func (g *gather) add(node uint16, data []byte) {
	if !g.waiting[node] {
		return
	}
	delete(g.waiting, node)
	g.parts = append(g.parts, append([]byte(nil), data...))
	if len(g.waiting) == 0 {
		g.finish()
	}
}

func (g *gather) gone(node uint16) {
	if g.waiting[node] {
		delete(g.waiting, node)
		if len(g.waiting) == 0 {
			g.finish()
		}
	}
}

func (g *gather) finish() {
	if !g.finished {
		g.finished = true
		g.done(g.parts)
	}
}

// answer sends this replica's answer to a query.
func (b *Bus) answer(node uint16, id uint64, topic string) {
	b.publish(b.nodeSubject(node), AppendAnswer(b.header(), id, b.hub.Answered(topic)))
}
