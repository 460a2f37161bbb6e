package testkit

import (
	"testing"
	"time"
)

// Poll evaluates cond until it holds or timeout passes, and reports whether
// it held. It is the kit's one polling loop: the interval starts at a
// millisecond, so prompt events are seen promptly, and grows to 20 ms, so a
// long wait does not hammer the server. It never fails the test, so it may
// run on any goroutine.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	interval := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval) // polling interval, not synchronisation
		interval = min(interval*3/2+time.Millisecond, 20*time.Millisecond)
	}
	return true
}

// Eventually waits for cond with Poll and fails the test, saying what was
// awaited, if it does not hold within timeout.
func Eventually(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if !Poll(timeout, cond) {
		tb.Fatalf("%s: not within %v", what, timeout)
	}
}
