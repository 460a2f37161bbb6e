package loop

import (
	"net"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// connection is what every gnet connection carries as its context: the
// transport that serves it (an HTTP request head, a WebSocket, a raw TCP
// peer). The engine only forwards gnet's callbacks to it.
type connection interface {
	opened(c gnet.Conn) gnet.Action
	traffic(c gnet.Conn) gnet.Action
	closed(c gnet.Conn, err error)
}

// engine receives gnet's callbacks. Every method runs on the loop except
// OnTick and OnBoot/OnShutdown, which only post to it.
type engine struct {
	gnet.BuiltinEventEngine
	s *Server
}

func (e *engine) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	h := e.s.h
	h.current = c
	action := c.Context().(connection).opened(c)
	h.current = nil
	return nil, action
}

func (e *engine) OnTraffic(c gnet.Conn) gnet.Action {
	h := e.s.h
	h.current = c
	action := c.Context().(connection).traffic(c)
	h.current = nil
	return action
}

func (e *engine) OnClose(c gnet.Conn, err error) gnet.Action {
	c.Context().(connection).closed(c, err)
	return gnet.None
}

func (e *engine) OnTick() (time.Duration, gnet.Action) {
	s := e.s
	if s.ready.Load() {
		posted := time.Now()
		s.post(func() { s.h.tick(posted) })
	}
	return s.h.tickInterval, gnet.None
}

// controlConn tags the internal connection that provides the loop handle.
type controlConn struct {
	s   *Server
	far net.Conn
}

func (*controlConn) opened(gnet.Conn) gnet.Action { return gnet.None }

func (*controlConn) traffic(c gnet.Conn) gnet.Action {
	_, _ = c.Discard(-1)
	return gnet.None
}

// closed runs when the loop exits, for whatever reason: nothing else
// closes this connection.
func (cc *controlConn) closed(gnet.Conn, error) {
	_ = cc.far.Close()
	close(cc.s.loopStopped)
}
