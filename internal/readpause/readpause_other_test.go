//go:build !linux || poll_opt

package readpause

import "testing"

// Where pausing cannot work, Open must say so instead of pretending, so the
// caller falls back to its cut-only policy.
func TestOpenUnsupported(t *testing.T) {
	p, err := Open(nil)
	if err == nil || p != nil {
		t.Fatalf("Open = %v, %v; want an error", p, err)
	}
	if p.Pause(nil) == nil || p.Resume(nil) == nil {
		t.Fatal("Pause/Resume on the stub must fail")
	}
	t.Log(err)
}
