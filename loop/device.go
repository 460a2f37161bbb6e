package loop

import (
	"net"
	"net/netip"

	"github.com/gobwas/ws"
	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/codec"
)

// device is a TCP connection a device opened to a dispatch port: a member
// of that port's channel.
type device struct {
	ch     *channel
	ip     netip.Addr
	ipText []byte // the peer IP as the protocol carries it
	id     uint64
	conn   gnet.Conn
	open   bool // counted in the channel and announced with OPENED

	// interest caches which drivers admit this device, valid while
	// interestVersion matches the channel's version.
	interest        []*driver
	interestVersion uint64
}

// newDevice runs on an accept goroutine: it only reads immutable data.
func newDevice(ch *channel, c net.Conn) *device {
	ip := peerIP(c)
	return &device{ch: ch, ip: ip, ipText: []byte(ip.String())}
}

// openDevice admits a device if its port is still open, a session lists its
// IP and the caps allow it; otherwise it is closed at once, silently for the
// drivers and without consuming an id.
func (st *state) openDevice(c gnet.Conn, dv *device) gnet.Action {
	ch := dv.ch
	switch {
	case ch.closed || st.s.stopping.Load():
		st.c.DevicesRefusedStale++
		return gnet.Close
	case !ch.admits(dv.ip):
		st.c.DevicesRefusedIP++
		ch.refused.note(st, ch, dv.ip)
		return gnet.Close
	case len(ch.members) >= st.cfg.MaxPortConns || st.deviceConns >= st.cfg.MaxConns:
		st.c.DevicesRefusedCap++
		ch.refused.note(st, ch, dv.ip)
		return gnet.Close
	}
	dv.conn = c
	dv.id = ch.nextID
	ch.nextID++
	dv.open = true
	ch.members[dv.id] = dv
	st.deviceConns++
	st.c.DevicesAccepted++
	st.emitToInterested(dv, codec.Opened, nil)
	return gnet.None
}

func (st *state) deviceTraffic(c gnet.Conn, dv *device) gnet.Action {
	// Devices are always drained completely, so Next returns gnet's read
	// buffer itself: no copy until the frame is encoded.
	data, _ := c.Next(-1)
	if !dv.open || len(data) == 0 {
		return gnet.None
	}
	st.c.TCPReads++
	st.c.TCPBytesIn += uint64(len(data))
	st.emitToInterested(dv, codec.Received, data)
	return gnet.None
}

// closeDevice runs when a device connection ends, whichever side closed it.
func (st *state) closeDevice(dv *device, _ error) {
	if !dv.open {
		return
	}
	dv.open = false
	ch := dv.ch
	delete(ch.members, dv.id)
	st.deviceConns--
	st.c.DevicesClosed++
	st.emitToInterested(dv, codec.Closed, nil)
}

// dropDevice closes a device from the server side; closeDevice follows.
func (st *state) dropDevice(dv *device) {
	if dv.open {
		st.closeConn(dv.conn)
	}
}

// interestedDrivers are the sessions whose accept list admits the device,
// looked up afresh whenever the channel's sessions changed.
func (st *state) interestedDrivers(dv *device) []*driver {
	ch := dv.ch
	if dv.interestVersion != ch.version {
		dv.interest = dv.interest[:0]
		for _, d := range ch.upstreams {
			if d.accept.contains(dv.ip) {
				dv.interest = append(dv.interest, d)
			}
		}
		dv.interestVersion = ch.version
	}
	return dv.interest
}

// emitToInterested encodes one message once and queues it for every
// interested driver; a large one is written to each at once instead.
func (st *state) emitToInterested(dv *device, t codec.MsgType, data []byte) {
	targets := st.interestedDrivers(dv)
	if len(targets) == 0 {
		return
	}
	if len(data) >= directWriteBytes {
		st.emitNow(targets, t, dv.ipText, dv.id, data)
		return
	}
	start, end := st.out.appendDispatchFrame(t, dv.ipText, dv.id, data)
	for _, d := range targets {
		st.queue(d, start, end)
	}
	st.scheduleFlush()
}

// emitNow writes one large message to every target without copying its
// data. Cutting a target can change the device's interest list, so the
// targets are copied first.
func (st *state) emitNow(targets []*driver, t codec.MsgType, ip []byte, id uint64, data []byte) {
	header := codec.AppendFrameHeader(st.directHeader[:0], ws.OpBinary, codec.HeaderLen(len(ip))+len(data))
	header = codec.AppendHeader(header, t, ip, id, len(data))
	st.directHeader = header
	st.c.FramesToDrivers += uint64(len(targets))
	direct := append(st.direct[:0], targets...)
	for _, d := range direct {
		if !st.writeNow(&d.sink, header, data) {
			d.cutSlow(st)
		}
	}
	clear(direct)
	st.direct = direct[:0]
}

// writeToDevice carries a driver's WRITE to a device. A device that does not
// read is closed once its unsent bytes pass the bound.
func (st *state) writeToDevice(dv *device, data []byte) {
	if !dv.open {
		return
	}
	if dv.conn.OutboundBuffered()+len(data) > st.cfg.MaxDevicePending {
		st.c.SlowDeviceCuts++
		st.log.Info("device not reading, closing it", "port", dv.ch.port, "peer", dv.ip.String(), "id", dv.id,
			"pending_bytes", dv.conn.OutboundBuffered())
		st.dropDevice(dv)
		return
	}
	st.c.TCPWrites++
	st.c.TCPBytesOut += uint64(len(data))
	_, _ = dv.conn.Write(data)
}
