package cluster

import (
	"slices"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
)

// gather is a question under way to other replicas: a Query of every live
// replica (Gather) or a kind's Ask of one or all of them, collected until
// every replica asked has answered or the deadline passed.
type gather struct {
	asked    []uint16
	answers  map[uint16][]byte
	waiting  map[uint16]bool
	deadline time.Time
	done     func(g *gather)
	finished bool
}

// newGather starts a question to node, or to every live peer for
// loop.AllReplicas; it is registered under a fresh id unless nobody is
// there to answer, when it finishes at once (the caller sends nothing).
func (b *Bus) newGather(node int, done func(g *gather)) (id uint64, g *gather) {
	g = &gather{answers: make(map[uint16][]byte), waiting: make(map[uint16]bool),
		deadline: b.hub.Now().Add(gatherTimeout), done: done}
	if node == loop.AllReplicas {
		for n := range b.peers {
			g.asked = append(g.asked, n)
		}
		slices.Sort(g.asked)
	} else {
		g.asked = []uint16{uint16(node)}
	}
	if b.connected {
		for _, n := range g.asked {
			if b.peers[n] != nil {
				g.waiting[n] = true
			}
		}
	}
	if len(g.waiting) == 0 {
		g.finish()
		return 0, g
	}
	b.nextQuery++
	id = b.nextQuery
	b.queries[id] = g
	// The tick sees the deadline; answers usually come long before.
	prev := g.done
	g.done = func(g *gather) { delete(b.queries, id); prev(g) }
	return id, g
}

// Gather implements loop.Bus.
func (b *Bus) Gather(topic string, local []byte, done func(parts [][]byte)) {
	id, g := b.newGather(loop.AllReplicas, func(g *gather) {
		parts := [][]byte{local}
		for _, n := range g.asked {
			if a, ok := g.answers[n]; ok {
				parts = append(parts, a)
			}
		}
		done(parts)
	})
	if !g.finished {
		b.queueAll(AppendQuery(b.header(), id, topic))
	}
}

// Ask implements loop.Bus: the question goes to the replica's own subject,
// or once to every replica's.
func (b *Bus) Ask(node int, topic string, question []byte, done func(replies []loop.Reply)) {
	if node < loop.AllReplicas || node > loop.MaxNode || node == b.node {
		done([]loop.Reply{{Node: node}})
		return
	}
	id, g := b.newGather(node, func(g *gather) {
		replies := make([]loop.Reply, 0, len(g.asked))
		for _, n := range g.asked {
			a, ok := g.answers[n]
			replies = append(replies, loop.Reply{Node: int(n), Answered: ok, Data: a})
		}
		done(replies)
	})
	if g.finished {
		return
	}
	msg := AppendAsk(b.header(), id, topic, question)
	if node == loop.AllReplicas {
		b.queueAll(msg)
	} else {
		b.publish(b.nodeSubject(uint16(node)), msg)
	}
}

// Tell implements loop.Bus.
func (b *Bus) Tell(node int, topic string, data []byte) {
	msg := AppendTell(b.header(), topic, data)
	switch {
	case node == loop.AllReplicas:
		b.queueAll(msg)
	case node >= 0 && node <= loop.MaxNode && node != b.node:
		b.publish(b.nodeSubject(uint16(node)), msg)
	}
}

// Peers implements loop.Bus.
func (b *Bus) Peers() []int {
	nodes := make([]int, 0, len(b.peers))
	for n := range b.peers {
		nodes = append(nodes, int(n))
	}
	slices.Sort(nodes)
	return nodes
}

func (g *gather) add(node uint16, data []byte) {
	if !g.waiting[node] {
		return
	}
	delete(g.waiting, node)
	g.answers[node] = append([]byte(nil), data...)
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
		g.done(g)
	}
}

// answer sends this replica's answer to a query.
func (b *Bus) answer(node uint16, id uint64, topic string) {
	b.publish(b.nodeSubject(node), AppendAnswer(b.header(), id, b.hub.Answered(topic)))
}

// answerAsk sends this replica's answer to a kind's question.
func (b *Bus) answerAsk(node uint16, id uint64, topic string, question []byte) {
	b.publish(b.nodeSubject(node), AppendAnswer(b.header(), id, b.hub.Asked(int(node), topic, question)))
}
