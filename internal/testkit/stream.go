package testkit

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"time"
)

// The streams tests send through the server: stream k's byte at offset o is
// patternBuf[(o + k*patternStride) % len(patternBuf)], so any received
// stretch can be checked without keeping what was sent.
var patternBuf = func() []byte {
	b := make([]byte, 1<<20+13)
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}()

const patternStride = 104729

// StreamPattern returns n bytes of stream k from offset off.
func StreamPattern(k int, off int64, n int) []byte {
	out := make([]byte, 0, n)
	pos := int((off + int64(k)*patternStride) % int64(len(patternBuf)))
	for len(out) < n {
		take := min(n-len(out), len(patternBuf)-pos)
		out = append(out, patternBuf[pos:pos+take]...)
		pos = 0
	}
	return out
}

// PatternMatches checks data against stream k at offset off.
func PatternMatches(k int, off int64, data []byte) bool {
	pos := int((off + int64(k)*patternStride) % int64(len(patternBuf)))
	for len(data) > 0 {
		take := min(len(data), len(patternBuf)-pos)
		if !bytes.Equal(data[:take], patternBuf[pos:pos+take]) {
			return false
		}
		data = data[take:]
		pos = 0
	}
	return true
}

// Broadcaster wakes every waiter whenever something changed: goroutines
// that make progress call Notify, and a waiter re-evaluates its condition.
type Broadcaster struct {
	mu sync.Mutex
	ch chan struct{}
}

func NewBroadcaster() *Broadcaster { return &Broadcaster{ch: make(chan struct{})} }

func (b *Broadcaster) Notify() {
	b.mu.Lock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}

// WaitUntil waits for cond, re-evaluated on every notification, until
// within passes; it reports whether cond held.
func (b *Broadcaster) WaitUntil(within time.Duration, cond func() bool) bool {
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		b.mu.Lock()
		ch := b.ch
		b.mu.Unlock()
		if cond() {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return cond()
		}
	}
}
