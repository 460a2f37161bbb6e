// Package inproc runs the server inside a test's own process: the core on
// loopback with the dispatch and socket-group kinds registered as
// cmd/dispatch registers them, so that tests of the kinds talk to it over
// real sockets.
package inproc

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/dispatch"
	"github.com/placeos-gnet/dispatch/loop/driver"
	"github.com/placeos-gnet/dispatch/loop/groups"
)

// Secret is the bearer token drivers and stats requests must present.
const Secret = "s3cret"

// Options changes the defaults before the kinds are registered.
type Options struct {
	// Core adjusts the core's configuration (flow control, caps).
	Core func(*loop.Config)
	// Groups adjusts the socket-group configuration; its listeners are off
	// unless it sets their addresses.
	Groups func(*groups.Config)
}

// Server is a started server and its kinds.
type Server struct {
	*loop.Server
	Dispatch *dispatch.Kind
	Groups   *groups.Kind
}

// Start builds a server with HTTP on 127.0.0.1:0 and device ports on
// 127.0.0.1, starts it, and shuts it down when the test ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	core := loop.DefaultConfig()
	core.HTTPAddr = "127.0.0.1:0"
	core.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if o.Core != nil {
		o.Core(&core)
	}
	drv := &driver.Config{Secret: Secret, MaxMessageBytes: 1 << 20, MaxPending: 16 << 20}
	dcfg := dispatch.DefaultConfig()
	dcfg.DeviceHost = "127.0.0.1"
	gcfg := groups.DefaultConfig()
	gcfg.DeviceHost = dcfg.DeviceHost
	if o.Groups != nil {
		o.Groups(&gcfg)
	}

	s, err := loop.New(core)
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Server: s}
	if srv.Dispatch, err = dispatch.Register(s, dcfg, drv); err != nil {
		t.Fatal(err)
	}
	if srv.Groups, err = groups.Register(s, gcfg, drv); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return srv
}
