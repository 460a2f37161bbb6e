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
)

// UDPRole is what a UDP port is for: its datagrams are handed to it on the
// loop, one at a time, in the order they arrived.
type UDPRole interface {
	Datagram(p *UDPPort, from netip.AddrPort, data []byte)
}

// UDPCounters are counted by a port's reader goroutine; a kind shares one
// set between its ports so that totals survive a port closing.
type UDPCounters struct {
	Dropped atomic.Uint64 // the queue to the loop was full
	Empty   atomic.Uint64 // zero-length datagrams, which carry nothing
}

// UDPPort is an open UDP socket whose peers are members of some channel.
// gnet cannot enroll a UDP listener into a running engine, so a reader
// goroutine blocks on the socket and hands datagrams to the loop through a
// queue bounded in count and bytes; datagrams go out from the loop with a
// non-blocking sendto on the same socket, so their source port is the
// port's own.
type UDPPort struct {
	hub      *Hub
	role     UDPRole
	conn     *net.UDPConn
	fd       int
	family   int // unix.AF_INET or unix.AF_INET6: the socket's own family
	counters *UDPCounters

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
	// milliseconds at hundreds of thousands of datagrams a second; the byte
	// budget is what bounds memory.
	udpQueueLen      = 16384
	udpDrainBatch    = 1024
	udpSocketBufSize = 4 << 20
	maxDatagram      = 64 << 10
)

// OpenUDP binds a UDP port; queueBytes bounds the datagram bytes waiting
// for the loop.
func (h *Hub) OpenUDP(addr string, queueBytes int, counters *UDPCounters, role UDPRole) (*UDPPort, error) {
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
	p := &UDPPort{
		hub:      h,
		role:     role,
		conn:     conn,
		counters: counters,
		queue:    make(chan datagram, udpQueueLen),
		maxBytes: int64(queueBytes),
	}
	raw, err := conn.SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { p.fd = int(fd) })
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	sa, err := unix.Getsockname(p.fd)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("udp socket: %w", err)
	}
	p.family = unix.AF_INET6
	if _, ok := sa.(*unix.SockaddrInet4); ok {
		p.family = unix.AF_INET
	}
	p.drainTask = gnet.RunnableFunc(func(context.Context) error {
		p.drain()
		return nil
	})
	h.s.acceptWG.Add(1)
	go p.read()
	return p, nil
}

// LocalAddr is the bound address.
func (p *UDPPort) LocalAddr() *net.UDPAddr { return p.conn.LocalAddr().(*net.UDPAddr) }

// Close closes the socket; the reader goroutine ends.
func (p *UDPPort) Close() {
	p.closed.Store(true)
	_ = p.conn.Close()
}

// read runs on its own goroutine until the socket is closed.
func (p *UDPPort) read() {
	s := p.hub.s
	defer s.acceptWG.Done()
	buf := make([]byte, maxDatagram)
	dropping := false
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.closed.Load() {
				return
			}
			s.log.Warn("udp read failed", "addr", p.conn.LocalAddr().String(), "err", err)
			continue
		}
		if n == 0 {
			p.counters.Empty.Add(1)
			continue
		}
		b := bytebufferpool.Get()
		b.B = append(b.B[:0], buf[:n]...)
		held := int64(cap(b.B))
		if p.queuedBytes.Load()+held > p.maxBytes || len(p.queue) == cap(p.queue) {
			bytebufferpool.Put(b)
			p.counters.Dropped.Add(1)
			if !dropping {
				dropping = true
				s.log.Warn("udp port backlogged, dropping datagrams", "addr", p.conn.LocalAddr().String())
			}
			continue
		}
		dropping = false
		p.queuedBytes.Add(held)
		p.queue <- datagram{from: from, buf: b, held: held}
		if p.scheduled.CompareAndSwap(false, true) {
			_ = s.el.Execute(context.Background(), p.drainTask)
		}
	}
}

// drain runs on the loop: it hands a batch of queued datagrams to the role.
func (p *UDPPort) drain() {
	p.scheduled.Store(false)
	for range udpDrainBatch {
		select {
		case dg := <-p.queue:
			p.queuedBytes.Add(-dg.held)
			if !p.closed.Load() {
				from := netip.AddrPortFrom(dg.from.Addr().Unmap().WithZone(""), dg.from.Port())
				p.role.Datagram(p, from, dg.buf.B)
			}
			bytebufferpool.Put(dg.buf)
		default:
			return
		}
	}
	if len(p.queue) > 0 && p.scheduled.CompareAndSwap(false, true) {
		_ = p.hub.s.el.Execute(context.Background(), p.drainTask)
	}
}

// Sockaddr is the destination for a peer as the socket's family needs it;
// an IPv4 socket cannot reach an IPv6 peer.
func (p *UDPPort) Sockaddr(a netip.AddrPort) (unix.Sockaddr, bool) {
	ip := a.Addr().Unmap()
	if p.family == unix.AF_INET {
		if !ip.Is4() {
			return nil, false
		}
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: ip.As4()}, true
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}, true
}

// SendTo sends one datagram from the port. A full socket buffer fails it
// rather than block the loop.
func (p *UDPPort) SendTo(sa unix.Sockaddr, data []byte) error {
	return unix.Sendto(p.fd, data, unix.MSG_DONTWAIT, sa)
}
