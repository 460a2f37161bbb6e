// Package inproc runs the server inside a test's own process: the core on
// loopback with the dispatch and socket-group kinds registered as
// cmd/dispatch registers them, so that tests of the kinds talk to it over
// real sockets. A started Server is a testkit.Server: every helper of the
// kit works against it as against the binary.
package inproc

import (
	"context"
	"log/slog"
	"net"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
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
	tb       testing.TB
	logs     *testkit.LogBuffer
}

var _ testkit.Server = (*Server)(nil)

// Start builds a server with HTTP on 127.0.0.1:0 and device ports on
// 127.0.0.1, logging at debug level into a bounded buffer, and starts it.
// It is stopped when the test ends, and its log tail printed if the test
// failed.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	logs := testkit.NewLogBuffer()
	core := loop.DefaultConfig()
	core.HTTPAddr = "127.0.0.1:0"
	core.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
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
	srv := &Server{Server: s, tb: t, logs: logs}
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
		srv.Stop()
		if t.Failed() {
			t.Logf("server logs:\n%s", logs.Tail(testkit.FailureLogBytes))
		}
	})
	return srv
}

func (s *Server) HTTPAddr() string     { return s.Addr().String() }
func (s *Server) GroupTCPAddr() string { return addrString(s.Groups.TCPAddr()) }
func (s *Server) GroupUDPAddr() string { return addrString(s.Groups.UDPAddr()) }
func (s *Server) Secret() string       { return Secret }
func (s *Server) Logs() string         { return s.logs.String() }

// Stop shuts the server down within testkit.ShutdownTimeout, failing the
// test if it cannot; calling it again does nothing.
func (s *Server) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), testkit.ShutdownTimeout)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		s.tb.Errorf("shutdown: %v", err)
	}
}

// addrString is a listener's address, or "" when it is off.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
