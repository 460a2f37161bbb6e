// Package fifo is a first-in first-out queue that reuses its backing
// array: the deadline queues of the kinds (joins, auths, idle checks),
// whose entries all wait the same time and so leave in arrival order.
package fifo

// Queue is a FIFO of T. The zero value is empty and ready.
type Queue[T any] struct {
	items []T
	head  int
}

// Push adds x at the back.
func (q *Queue[T]) Push(x T) { q.items = append(q.items, x) }

// Front returns the oldest item, if any.
func (q *Queue[T]) Front() (T, bool) {
	if q.head == len(q.items) {
		var zero T
		return zero, false
	}
	return q.items[q.head], true
}

// Pop drops the front item; the array is compacted once half of it is
// consumed, so each item is moved at most once on average.
func (q *Queue[T]) Pop() {
	var zero T
	q.items[q.head] = zero
	q.head++
	switch {
	case q.head == len(q.items):
		q.items, q.head = q.items[:0], 0
	case q.head >= 64 && 2*q.head >= len(q.items):
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
}

// Len is the number of items queued.
func (q *Queue[T]) Len() int { return len(q.items) - q.head }
