package harness

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/codec"
)

// msgHandler consumes the dispatch messages one driver receives. All calls
// come from that driver's read goroutine. begin/end bracket one read(2).
type msgHandler interface {
	begin(now int64)
	message(m *codec.Message) error
	end()
}

// Driver is a harness-side dispatch driver: a WebSocket client speaking the
// binary protocol, with its own frame parser (one read returns many frames).
type Driver struct {
	ID   int
	conn net.Conn
	pre  []byte // bytes the handshake reader had buffered

	wmu  sync.Mutex
	wbuf []byte
	rnd  uint64

	h           msgHandler
	done        chan struct{}
	err         atomic.Pointer[error] // why the read loop ended
	closing     atomic.Bool           // we initiated the close
	closeCode   int
	closeReason string

	Frames atomic.Int64 // binary frames received
	rbuf   int

	// read state (owned by whoever reads: the goroutine or the hot loop)
	rb      []byte
	rr, rw  int
	frag    []byte
	fragOn  bool
	stopped bool
	fd      int  // raw fd (hot-loop mode)
	manual  bool // no read goroutine: a hotLoop reads it
}

// DriverDialOpts configures dialDriver.
type DriverDialOpts struct {
	Addr    string // server host:port
	UDP     bool
	Port    int
	Accept  string
	Secret  string
	BigBufs bool // 4 MiB socket buffers
	Manual  bool // no read goroutine: a hotLoop reads this driver
}

type sockBufs int

func (b sockBufs) control(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if b > 0 {
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, int(b))
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, int(b))
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// ErrHTTPStatus carries a refused upgrade.
type ErrHTTPStatus struct {
	Code int
	Body string
}

func (e ErrHTTPStatus) Error() string {
	return fmt.Sprintf("upgrade refused: HTTP %d %s", e.Code, e.Body)
}

func dialDriver(ctx context.Context, id int, o DriverDialOpts, h msgHandler) (*Driver, error) {
	kind := "tcp_dispatch"
	if o.UDP {
		kind = "udp_dispatch"
	}
	u := fmt.Sprintf("ws://%s/api/dispatch/v1/%s?port=%d&accept=%s", o.Addr, kind, o.Port, url.QueryEscape(o.Accept))
	var nd net.Dialer
	nd.Timeout = 10 * time.Second
	if o.BigBufs {
		nd.Control = sockBufs(4 << 20).control
	}
	d := ws.Dialer{
		Header: ws.HandshakeHeaderHTTP(http.Header{
			"Authorization": []string{"Bearer " + o.Secret},
			"X-Module-ID":   []string{fmt.Sprintf("mod-bench-%d", id)},
		}),
		Timeout: 10 * time.Second,
		NetDial: nd.DialContext,
	}
	var body string
	d.OnStatusError = func(status int, reason []byte, resp io.Reader) {
		if r, err := http.ReadResponse(bufio.NewReader(resp), nil); err == nil {
			b, _ := io.ReadAll(io.LimitReader(r.Body, 512))
			body = strings.TrimSpace(string(b))
		}
	}
	conn, br, _, err := d.Dial(ctx, u)
	if err != nil {
		var se ws.StatusError
		if errors.As(err, &se) {
			return nil, ErrHTTPStatus{int(se), body}
		}
		return nil, err
	}
	dr := &Driver{ID: id, conn: conn, h: h, done: make(chan struct{}), rnd: uint64(time.Now().UnixNano()) | 1, rbuf: 16 << 10}
	if o.BigBufs {
		dr.rbuf = 1 << 20
	}
	if br != nil {
		if n := br.Buffered(); n > 0 {
			dr.pre, _ = br.Peek(n)
			dr.pre = append([]byte(nil), dr.pre...)
		}
		ws.PutReader(br)
	}
	if o.Manual {
		dr.manual = true
		rc, err := conn.(syscall.Conn).SyscallConn()
		if err != nil {
			conn.Close()
			return nil, err
		}
		rc.Control(func(fd uintptr) { dr.fd = int(fd) })
		return dr, nil
	}
	go dr.readLoop()
	return dr, nil
}

// Done is closed when the read loop ends.
func (d *Driver) Done() <-chan struct{} { return d.done }

// Err is why the read loop ended (nil while running or after our own Close).
func (d *Driver) Err() error {
	if p := d.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (d *Driver) fail(err error) {
	if d.err.Load() == nil {
		d.err.Store(&err)
	}
}

// Close sends a close frame and closes the connection.
func (d *Driver) Close() {
	if d.closing.Swap(true) {
		return
	}
	d.wmu.Lock()
	d.wbuf = d.appendFrame(d.wbuf[:0], ws.OpClose, []byte{0x03, 0xe8}) // 1000
	d.conn.SetWriteDeadline(time.Now().Add(time.Second))
	d.conn.Write(d.wbuf)
	d.wmu.Unlock()
	d.conn.Close()
	if d.manual {
		close(d.done)
		return
	}
	<-d.done
}

// mask draws a masking key; callers hold wmu.
func (d *Driver) mask() [4]byte { return nextMask(&d.rnd) }

func nextMask(x *uint64) [4]byte {
	*x ^= *x << 13
	*x ^= *x >> 7
	*x ^= *x << 17
	var m [4]byte
	binary.LittleEndian.PutUint32(m[:], uint32(*x))
	return m
}

// appendFrame appends one masked client frame. Callers hold wmu.
func (d *Driver) appendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	dst = appendClientHeader(dst, op, len(payload))
	m := d.mask()
	dst = append(dst, m[:]...)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], m, 0)
	return dst
}

func appendClientHeader(dst []byte, op ws.OpCode, n int) []byte {
	dst = append(dst, 0x80|byte(op))
	switch {
	case n < 126:
		return append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126)
		return binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0x80|127)
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
}

// batchWriter collects masked frames and writes them with one write(2).
// It is used by one goroutine and has its own masking-key state.
type batchWriter struct {
	d   *Driver
	buf []byte
	rnd uint64
}

func newBatchWriter(d *Driver) *batchWriter {
	return &batchWriter{d: d, rnd: uint64(time.Now().UnixNano())<<1 | 1}
}

// AddMessage appends one WRITE-style dispatch message as a masked binary frame.
func (b *batchWriter) AddMessage(t codec.MsgType, ip []byte, id uint64, data []byte) {
	n := codec.HeaderLen(len(ip)) + len(data)
	b.buf = appendClientHeader(b.buf, ws.OpBinary, n)
	m := nextMask(&b.rnd)
	b.buf = append(b.buf, m[:]...)
	start := len(b.buf)
	b.buf = codec.AppendMessage(b.buf, t, ip, id, data)
	ws.Cipher(b.buf[start:], m, 0)
}

// Flush writes the batch.
func (b *batchWriter) Flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	b.d.wmu.Lock()
	_, err := b.d.conn.Write(b.buf)
	b.d.wmu.Unlock()
	b.buf = b.buf[:0]
	return err
}

func (d *Driver) writeControl(op ws.OpCode, payload []byte) {
	d.wmu.Lock()
	d.wbuf = d.appendFrame(d.wbuf[:0], op, payload)
	d.conn.Write(d.wbuf)
	d.wmu.Unlock()
}

// errWouldBlock is returned by a raw read that found no data.
var errWouldBlock = errors.New("would block")

// errStopped ends a read loop after a close frame or a failure (see Err).
var errStopped = errors.New("driver stopped")

// readLoop is the goroutine mode: blocking reads through the net.Conn.
func (d *Driver) readLoop() {
	defer close(d.done)
	for {
		if _, err := d.readOnce(d.conn.Read); err != nil {
			return
		}
	}
}

// rawRead reads from the socket directly (hot-loop mode; the fd is non-blocking).
func (d *Driver) rawRead(b []byte) (int, error) {
	n, err := unix.Read(d.fd, b)
	if err == unix.EAGAIN {
		return 0, errWouldBlock
	}
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// readOnce does one read into the frame buffer and handles every complete
// frame in it. It returns errWouldBlock (raw mode, no data), or a non-nil
// error when the driver is finished (a failure is recorded in Err).
func (d *Driver) readOnce(read func([]byte) (int, error)) (int, error) {
	if d.rb == nil {
		d.rb = make([]byte, max(d.rbuf, len(d.pre)))
		d.rw = copy(d.rb, d.pre)
		d.pre = nil
		if d.rw > 0 {
			if !d.parse() {
				return 0, errStopped
			}
		}
	}
	if d.rw == len(d.rb) {
		if d.rr > 0 {
			d.rw = copy(d.rb, d.rb[d.rr:d.rw])
			d.rr = 0
		} else {
			nb := make([]byte, 2*len(d.rb))
			copy(nb, d.rb[:d.rw])
			d.rb = nb
		}
	}
	n, err := read(d.rb[d.rw:])
	if n > 0 {
		d.rw += n
		if !d.parse() {
			return n, errStopped
		}
	}
	if err != nil {
		if err == errWouldBlock {
			return n, err
		}
		d.stopped = true
		if !d.closing.Load() {
			if err == io.EOF {
				err = errors.New("server closed the TCP connection without a close frame")
			}
			d.fail(fmt.Errorf("driver %d: read: %w", d.ID, err))
		}
		d.closeConn()
		return n, errStopped
	}
	return n, nil
}

// parse handles the complete frames in rb[rr:rw]; false means stop reading.
func (d *Driver) parse() bool {
	d.h.begin(nanotime())
	defer d.h.end()
	for {
		b := d.rb[d.rr:d.rw]
		if len(b) < 2 {
			break
		}
		fin := b[0]&0x80 != 0
		op := ws.OpCode(b[0] & 0x0f)
		masked := b[1]&0x80 != 0
		hl := 2
		var plen int
		switch l := b[1] & 0x7f; l {
		case 126:
			if len(b) < 4 {
				return d.compact()
			}
			plen = int(binary.BigEndian.Uint16(b[2:]))
			hl = 4
		case 127:
			if len(b) < 10 {
				return d.compact()
			}
			plen = int(binary.BigEndian.Uint64(b[2:]))
			hl = 10
		default:
			plen = int(l)
		}
		if masked {
			hl += 4
		}
		if len(b) < hl+plen {
			if hl+plen > len(d.rb) {
				nb := make([]byte, hl+plen+d.rbuf)
				d.rw = copy(nb, b)
				d.rr = 0
				d.rb = nb
			}
			return d.compact()
		}
		payload := b[hl : hl+plen]
		if masked {
			ws.Cipher(payload, [4]byte(b[hl-4:hl]), 0)
		}
		d.rr += hl + plen
		switch op {
		case ws.OpBinary, ws.OpContinuation:
			if op == ws.OpContinuation && !d.fragOn {
				return d.stop(fmt.Errorf("driver %d: continuation frame without a start", d.ID))
			}
			if !fin || d.fragOn {
				d.frag = append(d.frag, payload...)
				d.fragOn = !fin
				if !fin {
					continue
				}
				payload = d.frag
			}
			m, err := codec.ParseMessage(payload)
			if err != nil {
				return d.stop(fmt.Errorf("driver %d: malformed dispatch message from server: %v (% x)", d.ID, err, head(payload, 40)))
			}
			d.Frames.Add(1)
			if err := d.h.message(&m); err != nil {
				return d.stop(err)
			}
			d.frag = d.frag[:0]
		case ws.OpText:
			// ignored
		case ws.OpPing:
			d.writeControl(ws.OpPong, payload)
		case ws.OpPong:
		case ws.OpClose:
			if len(payload) >= 2 {
				d.closeCode = int(binary.BigEndian.Uint16(payload))
				d.closeReason = string(payload[2:])
			}
			if !d.closing.Load() {
				d.fail(fmt.Errorf("driver %d: server sent close %d %q", d.ID, d.closeCode, d.closeReason))
				d.writeControl(ws.OpClose, payload[:min(2, len(payload))])
			}
			d.stopped = true
			d.closeConn()
			return false
		default:
			return d.stop(fmt.Errorf("driver %d: unexpected opcode %d", d.ID, op))
		}
	}
	return d.compact()
}

func (d *Driver) compact() bool {
	if d.rr == d.rw {
		d.rr, d.rw = 0, 0
	} else if d.rr > len(d.rb)/2 {
		d.rw = copy(d.rb, d.rb[d.rr:d.rw])
		d.rr = 0
	}
	return true
}

func (d *Driver) stop(err error) bool {
	d.fail(err)
	d.stopped = true
	d.closeConn()
	return false
}

func head(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

var monoBase = time.Now()

// nanotime is monotonic nanoseconds since harness start.
func nanotime() int64 { return int64(time.Since(monoBase)) }

// closeConn closes the socket after the read side stopped; in hot-loop mode
// the loop does it after removing the fd from its epoll set.
func (d *Driver) closeConn() {
	if !d.manual {
		d.conn.Close()
	}
}
