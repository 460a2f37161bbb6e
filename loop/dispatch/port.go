package dispatch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
)

// proto names a device port's transport: TCP and UDP ports are separate
// namespaces.
type proto uint8

const (
	protoTCP proto = iota
	protoUDP
)

func (p proto) String() string {
	if p == protoUDP {
		return "udp"
	}
	return "tcp"
}

// port is an open device port: its channel, its socket, and its devices.
// It exists exactly while at least one driver listens.
type port struct {
	k      *Kind
	proto  proto
	number int
	ch     *loop.Channel

	ln      net.Listener       // TCP
	devices map[uint64]*device // TCP: admitted devices by id
	nextID  uint64             // TCP: ids count from 0 per opening of the port
	udp     *loop.UDPPort      // UDP
	source  loop.Member        // UDP: the sender of the datagram being routed
	refused refusalLog
}

var policy = loop.Policy{ToUpstreams: true}

func (k *Kind) ports(p proto) map[int]*port {
	if p == protoUDP {
		return k.udp
	}
	return k.tcp
}

// portFor returns the open port, opening (binding) it if this is its first
// driver.
func (k *Kind) portFor(p proto, number int) (*port, error) {
	if pt, ok := k.ports(p)[number]; ok {
		return pt, nil
	}
	h := k.hub
	if h.Stopping() {
		return nil, errors.New("server shutting down")
	}
	pt := &port{k: k, proto: p, number: number}
	ch, err := h.OpenChannel(loop.Key{Kind: KindName, Name: p.String() + ":" + fmt.Sprint(number)}, policy, pt, k.cfg.MaxPorts)
	if err != nil {
		k.c.PortsRefused++
		return nil, err
	}
	pt.ch = ch
	addr := net.JoinHostPort(k.cfg.DeviceHost, fmt.Sprint(number))
	if p == protoUDP {
		pt.source.Transient = true
		pt.udp, err = h.OpenUDP(addr, k.cfg.UDPQueueBytes, &k.udpCounters, pt)
	} else {
		pt.devices = make(map[uint64]*device)
		out := loop.Output{Format: loop.Raw, Limit: k.cfg.MaxDevicePending}
		pt.ln, err = h.Listen(addr, "device", func(c net.Conn) *loop.TCPConn {
			return h.NewTCPConn(c, k.devices, out, &device{p: pt})
		})
	}
	if err != nil {
		ch.Close()
		return nil, err
	}
	k.ports(p)[number] = pt
	k.c.PortsOpened++
	h.Log().Info("device port opened", "proto", p.String(), "port", number)
	return pt, nil
}

// close unbinds the port and closes every device on it.
func (pt *port) close() {
	k := pt.k
	if k.ports(pt.proto)[pt.number] != pt {
		return
	}
	delete(k.ports(pt.proto), pt.number)
	if pt.ln != nil {
		_ = pt.ln.Close()
	}
	if pt.udp != nil {
		pt.udp.Close()
	}
	pt.ch.Close()
	pt.refused.flush(k.hub, pt)
	k.hub.Log().Info("device port closed", "proto", pt.proto.String(), "port", pt.number)
}

// Detached implements loop.Owner: the last driver closes the port;
// otherwise devices whose IP no driver admits any more are closed.
func (pt *port) Detached(ch *loop.Channel, u *loop.Upstream) {
	k := pt.k
	if u.Out != nil {
		k.hub.Log().Info("driver left", "proto", pt.proto.String(), "port", pt.number)
	}
	if ch.Upstreams() == 0 {
		pt.close()
		return
	}
	for _, dv := range pt.devices {
		if !ch.Admits(&dv.Member) {
			dv.c.End(loop.EndRefused, "no driver admits it any more")
		}
	}
}

// device is a TCP connection a device opened to a dispatch port: a member
// of the port's channel.
type device struct {
	loop.Member
	p *port
	c *loop.TCPConn
}

// Open admits a device if its port is still open, a driver lists its IP and
// the caps allow it; otherwise it is closed at once, silently for the
// drivers and without consuming an id.
func (dv *device) Open(c *loop.TCPConn) bool {
	pt := dv.p
	k := pt.k
	dv.c = c
	dv.IP, dv.IPText, dv.Conn = c.IP, c.IPText, &c.Endpoint
	switch {
	case pt.ch.Closed():
		k.c.DevicesRefusedStale++
		return false
	case !pt.ch.Admits(&dv.Member):
		k.c.DevicesRefusedIP++
		pt.refused.note(k.hub, pt, dv.IP.String())
		return false
	case len(pt.devices) >= k.cfg.MaxPortConns || k.hub.AtConnCap():
		k.c.DevicesRefusedCap++
		pt.refused.note(k.hub, pt, dv.IP.String())
		return false
	}
	dv.ID = k.hub.IDBase() | pt.nextID // the node number keeps ids unique across replicas
	pt.nextID++
	pt.devices[dv.ID] = dv
	pt.ch.Join(&dv.Member)
	return true
}

// Data publishes each read as it came: one RECEIVED per read.
func (dv *device) Data(_ *loop.TCPConn, data []byte) int {
	dv.p.ch.Publish(loop.MemberData, &dv.Member, false, data)
	return len(data)
}

// Ended announces CLOSED to the drivers that heard the device.
func (dv *device) Ended(*loop.TCPConn, loop.EndReason) {
	pt := dv.p
	delete(pt.devices, dv.ID)
	pt.ch.Leave(&dv.Member)
}

// Write carries a driver's WRITE: to a device by id on a TCP port (the IP
// is not checked, as in the original), as a datagram to ip:port on a UDP
// port, from the replica that last heard from ip:port (in a cluster; the
// peer expects its answer from the address it sent to).
func (pt *port) Write(d *driver.Driver, ip []byte, id uint64, data []byte) {
	if pt.proto == protoUDP {
		if !pt.ch.SendTransient(id, ip, data) {
			pt.sendDatagram(d, ip, id, data)
		}
		return
	}
	if dv := pt.devices[id]; dv != nil {
		pt.k.hub.Send(&dv.Member, false, data)
	} else if m := pt.ch.Remote(id, ip); m != nil {
		pt.k.hub.Send(m, false, data) // to the replica that holds it
	}
}

// Close carries a driver's CLOSE to a device on a TCP port.
func (pt *port) Close(_ *driver.Driver, ip []byte, id uint64) {
	if pt.proto != protoTCP {
		return
	}
	if dv := pt.devices[id]; dv != nil {
		dv.c.End(loop.EndClosedByUpstream, "")
	} else if m := pt.ch.Remote(id, ip); m != nil {
		pt.ch.CloseRemote(m)
	}
}

// Datagram routes one datagram as RECEIVED, carrying the source port, to
// every driver that admits the source IP; otherwise it is dropped.
func (pt *port) Datagram(_ *loop.UDPPort, from netip.AddrPort, data []byte) {
	k := pt.k
	k.c.DatagramsIn++
	k.c.UDPBytesIn += uint64(len(data))
	src := &pt.source
	src.ID = uint64(from.Port())
	src.IP = from.Addr()
	src.IPText = src.IP.AppendTo(src.IPText[:0])
	if pt.ch.Publish(loop.MemberData, src, false, data) == 0 {
		k.c.DatagramsRefusedIP++
		pt.refused.note(k.hub, pt, src.IP.String())
	}
}

// SendTransient carries a UDP WRITE of a driver on another replica to a
// peer this replica heard last (loop.TransientOwner).
func (pt *port) SendTransient(_ *loop.Channel, dport uint64, ip []byte, data []byte) {
	pt.sendDatagram(nil, ip, dport, data)
}

// sendDatagram carries a UDP WRITE: one datagram from the port's own
// socket. An unusable destination or a full socket buffer drops it
// (counted); neither blocks the loop. d is the driver that sent it, nil
// when it is on another replica (which checked the destination first).
func (pt *port) sendDatagram(d *driver.Driver, ipText []byte, dport uint64, data []byte) {
	k := pt.k
	ip, err := netip.ParseAddr(string(ipText))
	var sa unix.Sockaddr
	ok := err == nil && dport >= 1 && dport <= 65535
	if ok {
		sa, ok = pt.udp.Sockaddr(netip.AddrPortFrom(ip, uint16(dport)))
	}
	if !ok {
		k.c.DatagramsOutDropped++
		if d != nil && !d.WarnedBadWrite {
			d.WarnedBadWrite = true
			k.hub.Log().Warn("ignoring UDP WRITE with an unusable destination", "peer", d.Conn.Peer, "port", pt.number,
				"ip", string(ipText), "dest_port", dport)
		}
		return
	}
	if err := pt.udp.SendTo(sa, data); err != nil {
		k.c.DatagramsOutDropped++
		k.hub.Log().Debug("udp send failed", "port", pt.number, "err", err)
		return
	}
	k.c.DatagramsOut++
	k.c.UDPBytesOut += uint64(len(data))
}
