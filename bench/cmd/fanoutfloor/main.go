// Command fanoutfloor is the floor for the everyday-load scenario: about the
// least CPU any fan-out of device records to drivers can spend per delivery
// on this machine. One goroutine locked to its OS thread runs one epoll set
// on raw system calls and does the minimum: one read per ready device, and
// at the end of each pass one writev per driver carrying everything read in
// that pass. What it writes are exactly the bytes bin/dispatch writes (a
// WebSocket binary frame around a dispatch OPENED, RECEIVED or CLOSED
// message), so the harness's drivers attach to it and verify every record
// unchanged. It has nothing else: no accept lists (every driver on a port
// hears every device), no bounds, no UDP, no WRITEs from drivers, and a
// driver that cannot take a pass's bytes at once blocks the loop until it
// has.
//
//	go build -o bin/fanoutfloor ./bench/cmd/fanoutfloor
//	taskset -c 0 bin/fanoutfloor -p 0 -b 127.0.0.1
//
// It logs "msg=listening addr=HOST:PORT" on stderr like bin/dispatch, so the
// harness starts both the same way. Drivers attach with a WebSocket upgrade
// on any path ending in /tcp_dispatch?port=P; the handshake is blocking
// (attaching is not what is measured). GET /metrics returns its counters
// under the names bin/dispatch exports, so one scrape reads either.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/codec"
)

func main() {
	port := flag.Int("p", 0, "HTTP/WebSocket port (0: any free port)")
	host := flag.String("b", "127.0.0.1", "IPv4 address to bind the HTTP port and the device ports to")
	flag.Parse()
	ip, err := netip.ParseAddr(*host)
	if err != nil || !ip.Is4() {
		fail(fmt.Errorf("-b %q: an IPv4 address is needed", *host))
	}
	// The process exits on SIGTERM with status 0, as bin/dispatch does. The
	// goroutine runs when sysmon preempts the loop, which waits in a raw
	// epoll_pwait (within about 10 ms: the wait ends with EINTR).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		os.Exit(0)
	}()
	runtime.LockOSThread()
	f, err := newFloor(ip.As4(), *port)
	if err != nil {
		fail(err)
	}
	fmt.Fprintf(os.Stderr, "msg=listening addr=%s\n", netip.AddrPortFrom(ip, uint16(f.httpPort)))
	if err := f.run(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "fanoutfloor:", err)
	os.Exit(1)
}

type kind uint8

const (
	httpListener kind = iota
	deviceListener
	device
	driver
)

// conn is any descriptor in the epoll set.
type conn struct {
	kind kind
	fd   int
	port *port
	// header is a device's whole dispatch RECEIVED header, computed when it
	// connects; only its data_size changes from one read to the next.
	header []byte
}

// port is a device port with the drivers attached to it.
type port struct {
	num     int
	lfd     int
	nextID  uint64
	drivers []*conn
	// out holds this pass's frames for every driver of the port.
	out    []byte
	frames uint64
	queued bool
}

type floor struct {
	bind     [4]byte
	epfd     int
	httpPort int
	conns    []*conn // by fd
	ports    map[int]*port
	dirty    []*port
	events   []unix.EpollEvent
	rbuf     []byte
	iov      unix.Iovec

	// Counters, under bin/dispatch's names at GET /metrics.
	passes, writes, framesOut, deviceReads uint64
}

func newFloor(bind [4]byte, httpPort int) (*floor, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	f := &floor{bind: bind, epfd: epfd, ports: map[int]*port{}, events: make([]unix.EpollEvent, 1024), rbuf: make([]byte, 64<<10)}
	lfd, err := f.listen(httpPort)
	if err != nil {
		return nil, fmt.Errorf("HTTP port: %w", err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		return nil, err
	}
	f.httpPort = sa.(*unix.SockaddrInet4).Port
	if err := f.add(&conn{kind: httpListener, fd: lfd}); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *floor) listen(p int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: p, Addr: f.bind}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func (f *floor) add(c *conn) error {
	for len(f.conns) <= c.fd {
		f.conns = append(f.conns, nil)
	}
	f.conns[c.fd] = c
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(c.fd)}
	return unix.EpollCtl(f.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev)
}

func (f *floor) remove(c *conn) {
	_ = unix.EpollCtl(f.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	f.conns[c.fd] = nil
	unix.Close(c.fd)
}

func (f *floor) run() error {
	for {
		// Raw: the loop keeps its P while it waits, so a wake-up does not
		// pay the runtime's syscall hand-off (gnet's blocking wait does).
		n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(f.epfd), uintptr(unsafe.Pointer(&f.events[0])), uintptr(len(f.events)), ^uintptr(0), 0, 0)
		if e == unix.EINTR {
			// Mostly sysmon asking the loop to yield: without a call that
			// checks for preemption the signal goroutine would never run.
			runtime.Gosched()
			continue
		}
		if e != 0 {
			return fmt.Errorf("epoll_pwait: %w", e)
		}
		for i := range int(n) {
			fd := int(f.events[i].Fd)
			if fd >= len(f.conns) || f.conns[fd] == nil {
				continue // closed earlier in this pass
			}
			c := f.conns[fd]
			switch c.kind {
			case httpListener:
				f.acceptHTTP(c.fd)
			case deviceListener:
				f.acceptDevices(c.port)
			case device:
				f.readDevice(c)
			case driver:
				f.readDriver(c)
			}
		}
		f.flush()
	}
}

// readDevice does the one read of a ready device and queues what it got.
func (f *floor) readDevice(c *conn) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(c.fd), uintptr(unsafe.Pointer(&f.rbuf[0])), uintptr(len(f.rbuf)))
	switch {
	case e == unix.EAGAIN || e == unix.EINTR:
	case e == 0 && n > 0:
		f.deviceReads++
		f.queue(c.port, codec.Received, c.header, f.rbuf[:n])
	default: // end of stream or an error
		f.queue(c.port, codec.Closed, c.header, nil)
		f.remove(c)
	}
}

// queue appends one frame for every driver of p: the WebSocket header, the
// device's dispatch header with its type and data_size set, and data.
func (f *floor) queue(p *port, t codec.MsgType, header, data []byte) {
	p.out = codec.AppendFrameHeader(p.out, ws.OpBinary, len(header)+len(data))
	h := len(p.out)
	p.out = append(p.out, header...)
	p.out[h] = byte(t)
	binary.BigEndian.PutUint32(p.out[len(p.out)-4:], uint32(len(data)))
	p.out = append(p.out, data...)
	p.frames++
	if !p.queued {
		p.queued = true
		f.dirty = append(f.dirty, p)
	}
}

// flush writes each driver once: everything its port read in this pass.
func (f *floor) flush() {
	wrote := false
	for _, p := range f.dirty {
		for i := 0; i < len(p.drivers); i++ {
			d := p.drivers[i]
			if err := f.writeDriver(d.fd, p.out); err != nil {
				f.dropDriver(d)
				i--
				continue
			}
			f.writes++
			f.framesOut += p.frames
			wrote = true
		}
		p.out, p.frames, p.queued = p.out[:0], 0, false
	}
	f.dirty = f.dirty[:0]
	if wrote {
		f.passes++
	}
}

// writeDriver is one writev; only a driver whose socket is full costs more.
func (f *floor) writeDriver(fd int, b []byte) error {
	for len(b) > 0 {
		f.iov.Base = &b[0]
		f.iov.SetLen(len(b))
		n, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&f.iov)), 1)
		switch e {
		case 0:
			b = b[n:]
		case unix.EAGAIN:
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, 5000); err != nil && err != unix.EINTR {
				return err
			}
		case unix.EINTR:
		default:
			return e
		}
	}
	return nil
}

func (f *floor) dropDriver(d *conn) {
	p := d.port
	for i, x := range p.drivers {
		if x == d {
			p.drivers = append(p.drivers[:i], p.drivers[i+1:]...)
			break
		}
	}
	f.remove(d)
}

// readDriver discards what a driver sends (it sends nothing but its close)
// and drops it at end of stream.
func (f *floor) readDriver(c *conn) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(c.fd), uintptr(unsafe.Pointer(&f.rbuf[0])), uintptr(len(f.rbuf)))
	if e == unix.EAGAIN || e == unix.EINTR || (e == 0 && n > 0) {
		return
	}
	f.dropDriver(c)
}

func (f *floor) acceptDevices(p *port) {
	for {
		fd, sa, err := unix.Accept4(p.lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		if err != nil {
			return // EAGAIN: all taken; anything else: the next pass retries
		}
		var ip netip.Addr
		switch a := sa.(type) {
		case *unix.SockaddrInet4:
			ip = netip.AddrFrom4(a.Addr)
		case *unix.SockaddrInet6:
			ip = netip.AddrFrom16(a.Addr).Unmap()
		}
		c := &conn{kind: device, fd: fd, port: p,
			header: codec.AppendHeader(nil, codec.Received, []byte(ip.String()), p.nextID, 0)}
		p.nextID++
		if err := f.add(c); err != nil {
			unix.Close(fd)
			continue
		}
		f.queue(p, codec.Opened, c.header, nil)
	}
}

// acceptHTTP serves one request on a blocking socket: a driver's upgrade or
// a scrape of the counters.
func (f *floor) acceptHTTP(lfd int) {
	fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
	if err != nil {
		return
	}
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	req, err := readRequest(fd)
	if err != nil {
		unix.Close(fd)
		return
	}
	switch {
	case req.URL.Path == "/metrics":
		body := fmt.Sprintf("dispatch_loop_passes_total %d\ndispatch_driver_writes_total %d\ndispatch_driver_messages_total{direction=\"out\"} %d\ndispatch_device_messages_total{direction=\"in\",proto=\"tcp\"} %d\n",
			f.passes, f.writes, f.framesOut, f.deviceReads)
		writeAll(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
		unix.Close(fd)
	case strings.HasSuffix(req.URL.Path, "/tcp_dispatch") && req.Header.Get("Sec-WebSocket-Key") != "":
		if err := f.attach(fd, req); err != nil {
			body := err.Error() + "\n"
			writeAll(fd, "HTTP/1.1 409 Conflict\r\nConnection: close\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
			unix.Close(fd)
		}
	default:
		writeAll(fd, "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
		unix.Close(fd)
	}
}

// attach answers the upgrade once the device port listens, and makes fd a
// driver of it.
func (f *floor) attach(fd int, req *http.Request) error {
	num, err := strconv.Atoi(req.URL.Query().Get("port"))
	if err != nil || num < 1 || num > 65535 {
		return fmt.Errorf("bad port %q", req.URL.Query().Get("port"))
	}
	p := f.ports[num]
	if p == nil {
		lfd, err := f.listen(num)
		if err != nil {
			return fmt.Errorf("device port %d: %w", num, err)
		}
		p = &port{num: num, lfd: lfd}
		if err := f.add(&conn{kind: deviceListener, fd: lfd, port: p}); err != nil {
			unix.Close(lfd)
			return err
		}
		f.ports[num] = p
	}
	sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if !writeAll(fd, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+base64.StdEncoding.EncodeToString(sum[:])+"\r\n\r\n") {
		unix.Close(fd)
		return nil
	}
	// Small frames go out at once, as from bin/dispatch's sockets.
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil
	}
	d := &conn{kind: driver, fd: fd, port: p}
	if err := f.add(d); err != nil {
		unix.Close(fd)
		return nil
	}
	p.drivers = append(p.drivers, d)
	return nil
}

// readRequest reads a request head; the client sends nothing after it
// before it has the answer, so reading past it loses nothing.
func readRequest(fd int) (*http.Request, error) {
	var head []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(head, []byte("\r\n\r\n")) {
		if len(head) > 16<<10 {
			return nil, errors.New("request head too large")
		}
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, errors.New("connection closed in the request head")
		}
		head = append(head, buf[:n]...)
	}
	return http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
}

// writeAll writes s to a blocking socket.
func writeAll(fd int, s string) bool {
	b := []byte(s)
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false
		}
		b = b[n:]
	}
	return true
}
