package groups_test

import (
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/internal/inproc"
	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/groups"
)

// groupServer is a test server with both group listeners on loopback.
func groupServer(t *testing.T, tweak func(*groups.Config)) *inproc.Server {
	t.Helper()
	return groupServerWith(t, nil, tweak)
}

// groupServerWith also adjusts the core's configuration.
func groupServerWith(t *testing.T, core func(*loop.Config), tweak func(*groups.Config)) *inproc.Server {
	t.Helper()
	return inproc.Start(t, inproc.Options{Core: core, Groups: func(c *groups.Config) {
		c.TCPAddr = "127.0.0.1:0"
		c.UDPAddr = "127.0.0.1:0"
		c.JoinTimeout = time.Second // the loop ticks, and publishes counters, every 250ms
		if tweak != nil {
			tweak(c)
		}
	}})
}
