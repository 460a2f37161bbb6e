package loop

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/bytebufferpool"
	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/codec"
)

// udpPort is an open UDP device port. gnet cannot enroll a UDP listener
// into a running engine, so a reader goroutine blocks on the socket and
// hands datagrams to the loop through a queue bounded in count and bytes;
// WRITEs go out from the loop with a non-blocking sendto on the same socket,
// so their source port is the dispatch port.
type udpPort struct {
	ch     *channel
	conn   *net.UDPConn
	fd     int
	family int // unix.AF_INET or unix.AF_INET6: the socket's own family

	queue       chan datagram
	queuedBytes atomic.Int64
	maxBytes    int64
	scheduled   atomic.Bool // a drain task is posted to the loop
	closed      atomic.Bool
	drainTask   gnet.Runnable
}

type datagram struct {
	from netip.AddrPort
	buf  *bytebufferpool.ByteBuffer
	held int64 // the buffer's capacity: what it costs against the queue's byte budget
}

const (
	// udpQueueLen lets the reader run ahead of a busy loop for tens of
	// milliseconds at hundreds of thousands of datagrams a second; the
	// byte budget (Config.UDPQueueBytes) is what bounds memory.
	udpQueueLen      = 16384
	udpDrainBatch    = 1024
	udpSocketBufSize = 4 << 20
	maxDatagram      = 64 << 10
)

func (st *state) openUDP(ch *channel, addr string) (*udpPort, error) {
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, err
	}
	_ = conn.SetReadBuffer(udpSocketBufSize)
	_ = conn.SetWriteBuffer(udpSocketBufSize)
	u := &udpPort{
		ch:       ch,
		conn:     conn,
		queue:    make(chan datagram, udpQueueLen),
		maxBytes: int64(st.cfg.UDPQueueBytes),
	}
	raw, err := conn.SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { u.fd = int(fd) })
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	sa, err := unix.Getsockname(u.fd)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	u.family = unix.AF_INET6
	if _, ok := sa.(*unix.SockaddrInet4); ok {
		u.family = unix.AF_INET
	}
	u.drainTask = gnet.RunnableFunc(func(context.Context) error {
		st.drainUDP(u)
		return nil
	})
	st.s.acceptWG.Add(1)
	go u.read(st.s)
	return u, nil
}

// read runs on its own goroutine until the socket is closed.
func (u *udpPort) read(s *Server) {
	defer s.acceptWG.Done()
	buf := make([]byte, maxDatagram)
	dropping := false
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || u.closed.Load() {
				return
			}
			s.log.Warn("udp read failed", "port", u.ch.port, "err", err)
			continue
		}
		if n == 0 {
			// The original stops reading here; an empty datagram carries nothing.
			s.udpEmpty.Add(1)
			continue
		}
		b := bytebufferpool.Get()
		b.B = append(b.B[:0], buf[:n]...)
		held := int64(cap(b.B))
		if u.queuedBytes.Load()+held > u.maxBytes || len(u.queue) == cap(u.queue) {
			bytebufferpool.Put(b)
			s.udpDropped.Add(1)
			if !dropping {
				dropping = true
				s.log.Warn("udp port backlogged, dropping datagrams", "port", u.ch.port)
			}
			continue
		}
		dropping = false
		u.queuedBytes.Add(held)
		u.queue <- datagram{from: from, buf: b, held: held}
		if u.scheduled.CompareAndSwap(false, true) {
			_ = s.el.Execute(context.Background(), u.drainTask)
		}
	}
}

// drainUDP runs on the loop: it routes a batch of queued datagrams.
func (st *state) drainUDP(u *udpPort) {
	u.scheduled.Store(false)
	for range udpDrainBatch {
		select {
		case dg := <-u.queue:
			u.queuedBytes.Add(-dg.held)
			switch {
			case u.ch.closed:
			case u.ch.policy == toMembers:
				st.forwardGroupDatagram(u, dg)
			default:
				st.routeDatagram(u, dg)
			}
			bytebufferpool.Put(dg.buf)
		default:
			return
		}
	}
	if len(u.queue) > 0 && u.scheduled.CompareAndSwap(false, true) {
		_ = st.s.el.Execute(context.Background(), u.drainTask)
	}
}

// routeDatagram sends one datagram as RECEIVED, carrying the source port,
// to every session that admits the source IP; otherwise it is dropped.
func (st *state) routeDatagram(u *udpPort, dg datagram) {
	ch := u.ch
	ip := dg.from.Addr().Unmap().WithZone("")
	st.c.DatagramsIn++
	st.c.UDPBytesIn += uint64(dg.buf.Len())
	targets := st.targets[:0]
	for _, d := range ch.upstreams {
		if d.accept.contains(ip) {
			targets = append(targets, d)
		}
	}
	st.targets = targets[:0]
	if len(targets) == 0 {
		st.c.DatagramsRefusedIP++
		ch.refused.note(st, ch, ip)
		return
	}
	var text [64]byte
	start, end := st.out.appendDispatchFrame(codec.Received, ip.AppendTo(text[:0]), uint64(dg.from.Port()), dg.buf.B)
	for _, d := range targets {
		st.queue(d, start, end)
	}
	clear(targets)
	st.scheduleFlush()
}

// sendDatagram carries a UDP WRITE: one datagram from the port's own socket.
// An unusable destination or a full socket buffer drops it; neither blocks
// the loop.
func (st *state) sendDatagram(d *driver, ipText []byte, port uint64, data []byte) {
	u := d.ch.udp
	ip, err := netip.ParseAddr(string(ipText))
	if err != nil || port < 1 || port > 65535 || (u.family == unix.AF_INET && !ip.Unmap().Is4()) {
		st.c.DatagramsOutDropped++
		if !d.warnedBadWrite {
			d.warnedBadWrite = true
			st.log.Warn("ignoring UDP WRITE with an unusable destination", "peer", d.peer, "port", d.port(),
				"ip", string(ipText), "dest_port", port)
		}
		return
	}
	var sa unix.Sockaddr
	if u.family == unix.AF_INET {
		sa = &unix.SockaddrInet4{Port: int(port), Addr: ip.Unmap().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(port), Addr: ip.As16()}
	}
	if err := unix.Sendto(u.fd, data, unix.MSG_DONTWAIT, sa); err != nil {
		st.c.DatagramsOutDropped++
		st.log.Debug("udp send failed", "port", d.port(), "err", err)
		return
	}
	st.c.DatagramsOut++
	st.c.UDPBytesOut += uint64(len(data))
}

func (st *state) closeUDP(u *udpPort) {
	u.closed.Store(true)
	_ = u.conn.Close()
}
