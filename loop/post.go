package loop

import (
	"context"
	"errors"
)

// Posting to the loop from other goroutines: a kind that serves requests
// off the loop (net/http handlers on a listener's ServeOther, say) reaches
// its state on the loop only through these.

// Do runs fn on the loop and waits for it to return. It fails if the loop
// is not running, or stops before fn has run. Never call it from the loop
// itself: it would wait for itself.
func (s *Server) Do(fn func(h *Hub)) error {
	return s.onLoop(func() error {
		fn(s.h)
		return nil
	})
}

// Post runs fn on the loop without waiting for it; it reports false if the
// loop has stopped.
func (s *Server) Post(fn func(h *Hub)) bool {
	return s.post(func() { fn(s.h) })
}

// Run runs fn on the loop and waits for it. If ctx ends first, Run returns
// its error and fn may still run later.
func (s *Server) Run(ctx context.Context, fn func(h *Hub)) error {
	done := make(chan struct{})
	if !s.post(func() { fn(s.h); close(done) }) {
		return errors.New("the event loop is not running")
	}
	select {
	case <-done:
		return nil
	case <-s.loopStopped:
		return errors.New("the event loop stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
}
