package loop

import (
	"io"
	"log/slog"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"
)

// Hooks for the fan-out tests and benchmarks in package loop_test, which
// drive the hub directly over stand-in connections and a stand-in loop.

// NewTestHub returns a hub whose event loop is el and whose logs are
// discarded; nothing listens.
func NewTestHub(el gnet.EventLoop) *Hub {
	cfg := DefaultConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s := &Server{cfg: cfg, log: cfg.Logger, el: el}
	s.h = newHub(s)
	return s.h
}

// TestEndpoint makes conn an open endpoint of the class.
func (h *Hub) TestEndpoint(conn gnet.Conn, class *Class, out Output) *Endpoint {
	c := &TCPConn{role: nopRole{}, out: out, admitted: true}
	c.init(h, conn, class, c, out)
	return &c.Endpoint
}

// Flush runs the end-of-pass flush now.
func (h *Hub) Flush() {
	h.out.scheduled = false
	h.flush()
}

type nopRole struct{}

func (nopRole) Open(*TCPConn) bool                   { return true }
func (nopRole) Data(_ *TCPConn, d []byte) int        { return len(d) }
func (nopRole) Ended(*TCPConn, EndReason)            {}
func (nopRole) end(EndReason, ws.StatusCode, string) {}

// AttachTestBus attaches a bus to a test hub.
func (h *Hub) AttachTestBus(b Bus) { h.bus = b }
