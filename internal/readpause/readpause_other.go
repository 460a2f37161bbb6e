//go:build !linux || poll_opt

package readpause

import (
	"errors"
	"runtime"

	"github.com/panjf2000/gnet/v2"
)

// Poller is unavailable here; see the Linux build for the real one.
type Poller struct{}

// errUnsupported explains why: pausing needs Linux epoll with gnet's default
// poller, which stores the fd as the event data. Under -tags poll_opt gnet
// stores a pointer there instead, and rewriting it would crash the loop.
var errUnsupported = func() error {
	if runtime.GOOS == "linux" {
		return errors.New("readpause: unavailable in a -tags poll_opt build (gnet keeps pointers in epoll event data)")
	}
	return errors.New("readpause: unavailable on " + runtime.GOOS + " (needs Linux epoll)")
}()

// Open always fails here, so the caller falls back to its cut-only policy.
func Open(gnet.Conn) (*Poller, error) { return nil, errUnsupported }

// Pause always fails here.
func (*Poller) Pause(gnet.Conn) error { return errUnsupported }

// Resume always fails here.
func (*Poller) Resume(gnet.Conn) error { return errUnsupported }
