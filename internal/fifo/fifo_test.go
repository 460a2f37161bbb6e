package fifo

import "testing"

func TestQueueOrderAndCompaction(t *testing.T) {
	var q Queue[int]
	if _, ok := q.Front(); ok {
		t.Fatal("empty queue has a front")
	}
	next := 0
	for i := range 1000 {
		q.Push(i)
		if i%3 == 2 { // drain a little slower than we fill
			x, ok := q.Front()
			if !ok || x != next {
				t.Fatalf("front %d %v, want %d", x, ok, next)
			}
			q.Pop()
			next++
		}
	}
	if q.Len() != 1000-next {
		t.Fatalf("len %d, want %d", q.Len(), 1000-next)
	}
	for ; next < 1000; next++ {
		if x, _ := q.Front(); x != next {
			t.Fatalf("front %d, want %d", x, next)
		}
		q.Pop()
	}
	if _, ok := q.Front(); ok || q.Len() != 0 {
		t.Fatal("drained queue not empty")
	}
}
