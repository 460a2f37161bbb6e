package loop

import (
	"time"

	"github.com/panjf2000/gnet/v2"
)

// handler routes gnet's callbacks to the kind of endpoint each connection
// carries as its context. Every method runs on the loop except OnTick and
// OnBoot/OnShutdown, which only post to it.
type handler struct {
	gnet.BuiltinEventEngine
	s *Server
}

func (h *handler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	st := h.s.st
	st.current = c
	action := gnet.None
	switch x := c.Context().(type) {
	case *httpConn:
		action = st.openHTTP(c, x)
	case *device:
		action = st.openDevice(c, x)
	case *groupMember:
		action = st.openGroupMember(c, x)
	}
	st.current = nil
	return nil, action
}

func (h *handler) OnTraffic(c gnet.Conn) gnet.Action {
	st := h.s.st
	st.current = c
	action := gnet.None
	switch x := c.Context().(type) {
	case *device:
		action = st.deviceTraffic(c, x)
	case *driver:
		action = st.driverTraffic(c, x)
	case *httpConn:
		action = st.httpTraffic(c, x)
	case *groupMember:
		action = st.groupMemberTraffic(c, x)
	default:
		_, _ = c.Discard(-1)
	}
	st.current = nil
	return action
}

func (h *handler) OnClose(c gnet.Conn, err error) gnet.Action {
	st := h.s.st
	switch x := c.Context().(type) {
	case *device:
		st.closeDevice(x, err)
	case *driver:
		st.closeDriver(x, err)
	case *httpConn:
		st.closeHTTP(x)
	case *groupMember:
		st.closeGroupMember(x)
	case controlConn:
		// The loop only closes this connection when it exits, for whatever reason.
		_ = x.far.Close()
		close(h.s.loopStopped)
	}
	return gnet.None
}

func (h *handler) OnTick() (time.Duration, gnet.Action) {
	if h.s.ready.Load() {
		posted := time.Now()
		h.s.post(func() { h.s.st.tick(posted) })
	}
	return h.s.tickInterval(), gnet.None
}

// tickInterval is how often the loop sweeps handshake and group join
// deadlines and publishes counters: fine enough that a deadline is kept to
// within a quarter of itself.
func (s *Server) tickInterval() time.Duration {
	return min(max(min(s.cfg.HandshakeTimeout, s.cfg.GroupJoinTimeout)/4, 50*time.Millisecond), time.Second)
}
