package harness

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/codec"
)

// The rooms scenario: the room balancer (OpenTogetherTube) with the harness
// as its one Monolith (the server dials the harness's balancing port) and
// as its browser clients. Three loads, each stepped to its peak:
//
//   - broadcast to C clients of one room (C = 100, then 1000): the
//     Monolith writes room_msg without client_id, the balancer encodes it
//     once and writes it to every client; items are broadcasts, deliveries
//     are broadcasts × C;
//   - ingest: C clients each send JSON objects, round-robin, one frame per
//     write(2); the balancer wraps each in client_msg on the Monolith link.
//
// Every record carries its send time and a sequence number: each client
// must see every broadcast in order, the Monolith every client's messages
// in order per client.

const (
	roomsBenchRoom = "bench-room"
	// roomsRecordHex is a record as 64 hex digits: send time (16), sequence
	// (16), client index or 0 (8), filler derived from the sequence (24).
	roomsRecordHex = 64
)

func putRoomsRecord(dst []byte, sendNs int64, seq uint64, client uint32) {
	var raw [32]byte
	binary.BigEndian.PutUint64(raw[0:], uint64(sendNs))
	binary.BigEndian.PutUint64(raw[8:], seq)
	binary.BigEndian.PutUint32(raw[16:], client)
	for i := 20; i < 32; i++ {
		raw[i] = byte(seq) ^ byte(i)
	}
	hex.Encode(dst[:roomsRecordHex], raw[:])
}

func parseRoomsRecord(src []byte) (sendNs int64, seq uint64, client uint32, ok bool) {
	var raw [32]byte
	if len(src) < roomsRecordHex {
		return 0, 0, 0, false
	}
	if _, err := hex.Decode(raw[:], src[:roomsRecordHex]); err != nil {
		return 0, 0, 0, false
	}
	seq = binary.BigEndian.Uint64(raw[8:])
	for i := 20; i < 32; i++ {
		if raw[i] != byte(seq)^byte(i) {
			return 0, 0, 0, false
		}
	}
	return int64(binary.BigEndian.Uint64(raw[0:])), seq, binary.BigEndian.Uint32(raw[16:]), true
}

// wsFrames reads WebSocket frames from a non-blocking socket: both sides
// of the balancer (client frames are masked, server frames are not).
type wsFrames struct {
	fd     int
	rb     []byte
	rr, rw int
}

// readable reads what is there and calls text for every complete text
// frame; it returns io.EOF-like errors when the peer went away.
func (r *wsFrames) readable(text func(payload []byte) error) error {
	for range 8 {
		if r.rw == len(r.rb) {
			if r.rr > 0 {
				r.rw = copy(r.rb, r.rb[r.rr:r.rw])
				r.rr = 0
			} else {
				nb := make([]byte, 2*len(r.rb))
				copy(nb, r.rb[:r.rw])
				r.rb = nb
			}
		}
		n, err := unix.Read(r.fd, r.rb[r.rw:])
		if err == unix.EAGAIN {
			return nil
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.EOF
		}
		r.rw += n
		for {
			b := r.rb[r.rr:r.rw]
			if len(b) < 2 {
				break
			}
			op := ws.OpCode(b[0] & 0x0f)
			hl, plen := 2, int(b[1]&0x7f)
			switch plen {
			case 126:
				if len(b) < 4 {
					goto more
				}
				plen, hl = int(binary.BigEndian.Uint16(b[2:])), 4
			case 127:
				if len(b) < 10 {
					goto more
				}
				plen, hl = int(binary.BigEndian.Uint64(b[2:])), 10
			}
			if b[1]&0x80 != 0 {
				hl += 4
			}
			if len(b) < hl+plen {
				if hl+plen > len(r.rb) {
					nb := make([]byte, hl+plen+len(r.rb))
					r.rw = copy(nb, b)
					r.rr = 0
					r.rb = nb
				}
				goto more
			}
			payload := b[hl : hl+plen]
			if b[1]&0x80 != 0 {
				ws.Cipher(payload, [4]byte(b[hl-4:hl]), 0)
			}
			r.rr += hl + plen
			switch op {
			case ws.OpText:
				if err := text(payload); err != nil {
					return err
				}
			case ws.OpClose:
				code := 0
				if len(payload) >= 2 {
					code = int(binary.BigEndian.Uint16(payload))
				}
				return fmt.Errorf("closed by the server with %d %q", code, payload[min(2, len(payload)):])
			}
		}
	more:
		if r.rr == r.rw {
			r.rr, r.rw = 0, 0
		}
	}
	return nil
}

// benchMonolith is the harness's Monolith: one balancing link.
type benchMonolith struct {
	ln   net.Listener
	conn net.Conn
	fd   int
}

func listenBenchMonolith() (*benchMonolith, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &benchMonolith{ln: ln}, nil
}

// accept takes the balancer's link: upgrade, our init, its init.
func (m *benchMonolith) accept(timeout time.Duration) error {
	_ = m.ln.(*net.TCPListener).SetDeadline(time.Now().Add(timeout))
	conn, err := m.ln.Accept()
	if err != nil {
		return fmt.Errorf("the balancer did not dial the Monolith: %w", err)
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := ws.Upgrade(conn); err != nil {
		conn.Close()
		return fmt.Errorf("Monolith handshake: %w", err)
	}
	init := fmt.Sprintf(`{"type":"init","payload":{"port":%d,"region":"bench","id":"bench-monolith"}}`, m.ln.Addr().(*net.TCPAddr).Port)
	if err := wsutil.WriteServerText(conn, []byte(init)); err != nil {
		conn.Close()
		return err
	}
	msg, _, err := wsutil.ReadClientData(conn)
	if err != nil || !bytes.Contains(msg, []byte(`"type":"init"`)) {
		conn.Close()
		return fmt.Errorf("balancer init: %q %v", msg, err)
	}
	_ = conn.SetDeadline(time.Time{})
	m.conn = conn
	m.fd, err = connFd(conn.(*net.TCPConn))
	return err
}

// expectJoins reads n joins and returns the client ids in order.
func (m *benchMonolith) expectJoins(n int, timeout time.Duration) ([]string, error) {
	_ = m.conn.SetReadDeadline(time.Now().Add(timeout))
	defer m.conn.SetReadDeadline(time.Time{})
	ids := make([]string, 0, n)
	for len(ids) < n {
		msg, _, err := wsutil.ReadClientData(m.conn)
		if err != nil {
			return ids, fmt.Errorf("after %d of %d joins: %w", len(ids), n, err)
		}
		var env struct {
			Type    string
			Payload struct{ Client string }
		}
		if json.Unmarshal(msg, &env) != nil || env.Type != "join" {
			return ids, fmt.Errorf("expected a join, got %.100q", msg)
		}
		ids = append(ids, env.Payload.Client)
	}
	return ids, nil
}

func (m *benchMonolith) close() {
	m.ln.Close()
	if m.conn != nil {
		m.conn.Close()
	}
}

// roomsClient is one browser-side WebSocket: its read state and, for
// ingest, its sequence and unwritten tail.
type roomsClient struct {
	idx    int
	conn   net.Conn
	frames wsFrames
	next   uint64 // broadcast: the next sequence expected
	seq    uint64 // ingest: the next sequence to send
	pend   []byte
}

// dialRoomsClients opens n clients of the bench room with conc dialers
// and authenticates each.
func dialRoomsClients(ctx context.Context, addr string, n, conc int) ([]*roomsClient, error) {
	out := make([]*roomsClient, n)
	errs := make([]error, n)
	slots := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := range n {
		slots <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			out[i], errs[i] = dialRoomsClient(ctx, addr, i)
		}()
	}
	wg.Wait()
	var firstErr error
	for i, err := range errs {
		if err != nil {
			firstErr = fmt.Errorf("room client %d: %w", i, err)
			break
		}
	}
	if firstErr != nil {
		for _, c := range out {
			if c != nil {
				c.conn.Close()
			}
		}
		return nil, firstErr
	}
	return out, nil
}

func dialRoomsClient(ctx context.Context, addr string, i int) (*roomsClient, error) {
	nd := deviceDialer(loopbackIP(i%200), 0)
	d := ws.Dialer{Timeout: 10 * time.Second, NetDial: nd.DialContext}
	conn, br, _, err := d.Dial(ctx, "ws://"+addr+"/api/room/"+roomsBenchRoom)
	if err != nil {
		return nil, err
	}
	if br != nil {
		ws.PutReader(br)
		conn.Close()
		return nil, errors.New("the balancer sent something before auth")
	}
	if err := wsutil.WriteClientText(conn, []byte(`{"action":"auth","token":"bench"}`)); err != nil {
		conn.Close()
		return nil, err
	}
	fd, err := connFd(conn.(syscall.Conn))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &roomsClient{idx: i, conn: conn, frames: wsFrames{fd: fd, rb: make([]byte, 16<<10)}}, nil
}

// roomsBroadcast is the broadcast load: the hot loop writes room_msg frames
// to the link and reads every client.
type roomsBroadcast struct {
	loop    *hotLoop
	link    int
	clients []*roomsClient
	seq     uint64
	pend    []byte
	buf     []byte
	sent    atomic.Int64
	got     atomic.Int64
	hs      histSet
	err     atomic.Pointer[error]
}

func (g *roomsBroadcast) fanout() int      { return len(g.clients) }
func (g *roomsBroadcast) lossy() bool      { return false }
func (g *roomsBroadcast) sentTotal() int64 { return g.sent.Load() }
func (g *roomsBroadcast) deliveredTotal() (int64, int64) {
	n := g.got.Load()
	return n, n
}
func (g *roomsBroadcast) asyncErr() error {
	if p := g.err.Load(); p != nil {
		return *p
	}
	return nil
}
func (g *roomsBroadcast) fail(err error) {
	g.err.CompareAndSwap(nil, &err)
}
func (g *roomsBroadcast) takeHist(step uint8) *hdrhistogram.Histogram {
	out := newHist()
	g.hs.take(step, out)
	return out
}

// broadcastHead and broadcastTail frame a record as the room_msg payload,
// a JSON string.
var (
	broadcastHead = []byte(`{"type":"room_msg","payload":{"room":"` + roomsBenchRoom + `","payload":"`)
	broadcastTail = []byte(`"}}`) // closes the record's string, the payload and the envelope
)

func (g *roomsBroadcast) run(ctx context.Context, rate float64, dur time.Duration, step uint8) (int64, error) {
	msgLen := len(broadcastHead) + roomsRecordHex + len(broadcastTail)
	emit := func(n int) (int, error) {
		if len(g.pend) > 0 {
			m, err := writeRaw(g.link, g.pend)
			if err != nil {
				return 0, fmt.Errorf("Monolith link write: %w", err)
			}
			g.pend = g.pend[m:]
			if len(g.pend) > 0 {
				return 0, nil // the link is full: not offered
			}
		}
		b := g.buf[:0]
		now := nanotime()
		for i := 0; i < n; i++ {
			b = codec.AppendFrameHeader(b, ws.OpText, msgLen)
			b = append(b, broadcastHead...)
			start := len(b)
			b = append(b, zeros[:roomsRecordHex]...)
			putRoomsRecord(b[start:], now, g.seq+uint64(i), uint32(step)) // the step rides in the client field
			b = append(b, broadcastTail...)
		}
		g.buf = b
		m, err := writeRaw(g.link, b)
		if err != nil {
			return 0, fmt.Errorf("Monolith link write: %w", err)
		}
		if m < len(b) {
			g.pend = append(g.pend[:0], b[m:]...)
		}
		g.seq += uint64(n)
		g.sent.Add(int64(n))
		return n, nil
	}
	flush := func() bool {
		if len(g.pend) == 0 {
			return true
		}
		m, err := writeRaw(g.link, g.pend)
		if err != nil {
			return true
		}
		g.pend = g.pend[m:]
		return len(g.pend) == 0
	}
	return g.loop.offer(rate, dur, emit, flush)
}

var zeros [roomsRecordHex]byte

// roomsReader reads one client's broadcasts on the hot loop.
type roomsReader struct {
	g *roomsBroadcast
	c *roomsClient
}

func (r roomsReader) fdNum() int { return r.c.frames.fd }
func (r roomsReader) readable() bool {
	g, c := r.g, r.c
	now := nanotime()
	g.hs.mu.Lock()
	defer g.hs.mu.Unlock()
	n := int64(0)
	err := c.frames.readable(func(p []byte) error {
		// The payload is the JSON string: the record between quotes.
		if len(p) != roomsRecordHex+2 || p[0] != '"' || p[len(p)-1] != '"' {
			return fmt.Errorf("client %d: unexpected message %.80q", c.idx, p)
		}
		sendNs, seq, step, ok := parseRoomsRecord(p[1:])
		if !ok || seq != c.next {
			return fmt.Errorf("client %d: expected broadcast %d, got %d (intact %v): lost, duplicated or reordered", c.idx, c.next, seq, ok)
		}
		c.next++
		n++
		g.hs.record(uint8(step), now-sendNs)
		return nil
	})
	g.got.Add(n)
	if err != nil {
		g.fail(err)
		return true
	}
	return false
}
func (r roomsReader) closeSock() {}

// roomsIngest is the ingest load: the hot loop writes one client message
// per write(2), round-robin over the clients, and reads the link.
type roomsIngest struct {
	loop    *hotLoop
	link    wsFrames
	clients []*roomsClient
	rr      int
	next    []uint64 // per client: the next sequence the Monolith expects
	sent    atomic.Int64
	got     atomic.Int64
	hs      histSet
	err     atomic.Pointer[error]
	rnd     uint64
}

func (g *roomsIngest) fanout() int      { return 1 }
func (g *roomsIngest) lossy() bool      { return false }
func (g *roomsIngest) sentTotal() int64 { return g.sent.Load() }
func (g *roomsIngest) deliveredTotal() (int64, int64) {
	n := g.got.Load()
	return n, n
}
func (g *roomsIngest) asyncErr() error {
	if p := g.err.Load(); p != nil {
		return *p
	}
	return nil
}
func (g *roomsIngest) takeHist(step uint8) *hdrhistogram.Histogram {
	out := newHist()
	g.hs.take(step, out)
	return out
}

// ingestMsg is a client's message: {"r":"<record>","s":"<step, 3 digits>"}.
const ingestMsgLen = len(`{"r":"`) + roomsRecordHex + len(`","s":"000"}`)

func (g *roomsIngest) run(ctx context.Context, rate float64, dur time.Duration, step uint8) (int64, error) {
	var frame [4 + 4 + ingestMsgLen]byte
	emit := func(n int) (int, error) {
		done := 0
		for tries := 0; done < n && tries < 2*n+len(g.clients); tries++ {
			c := g.clients[g.rr]
			g.rr = (g.rr + 1) % len(g.clients)
			if len(c.pend) > 0 {
				m, err := writeRaw(c.frames.fd, c.pend)
				if err != nil {
					return done, fmt.Errorf("client %d write: %w", c.idx, err)
				}
				c.pend = c.pend[m:]
				if len(c.pend) > 0 {
					continue
				}
			}
			mask := nextMask(&g.rnd)
			b := appendClientHeader(frame[:0], ws.OpText, ingestMsgLen)
			b = append(b, mask[:]...)
			p := len(b)
			b = append(b, `{"r":"`...)
			rec := len(b)
			b = append(b, zeros[:roomsRecordHex]...)
			putRoomsRecord(b[rec:], nanotime(), c.seq, uint32(c.idx))
			b = append(b, `","s":"`...)
			b = append(b, '0'+step/100, '0'+step/10%10, '0'+step%10, '"', '}')
			ws.Cipher(b[p:], mask, 0)
			m, err := writeRaw(c.frames.fd, b)
			if err != nil {
				return done, fmt.Errorf("client %d write: %w", c.idx, err)
			}
			if m == 0 {
				continue // socket full: not offered
			}
			if m < len(b) {
				c.pend = append(c.pend[:0], b[m:]...)
			}
			c.seq++
			done++
		}
		g.sent.Add(int64(done))
		return done, nil
	}
	flush := func() bool {
		all := true
		for _, c := range g.clients {
			if len(c.pend) > 0 {
				if m, err := writeRaw(c.frames.fd, c.pend); err == nil {
					c.pend = c.pend[m:]
				}
				all = all && len(c.pend) == 0
			}
		}
		return all
	}
	return g.loop.offer(rate, dur, emit, flush)
}

// linkReader reads client_msg envelopes on the Monolith link.
type linkReader struct{ g *roomsIngest }

var ingestMarker = []byte(`"payload":{"r":"`)

func (r linkReader) fdNum() int { return r.g.link.fd }
func (r linkReader) readable() bool {
	g := r.g
	now := nanotime()
	g.hs.mu.Lock()
	defer g.hs.mu.Unlock()
	n := int64(0)
	err := g.link.readable(func(p []byte) error {
		i := bytes.Index(p, ingestMarker)
		if i < 0 || !bytes.HasPrefix(p, []byte(`{"type":"client_msg"`)) {
			if bytes.HasPrefix(p, []byte(`{"type":"leave"`)) {
				return nil
			}
			return fmt.Errorf("Monolith: unexpected message %.100q", p)
		}
		rec := p[i+len(ingestMarker):]
		sendNs, seq, client, ok := parseRoomsRecord(rec)
		if !ok || int(client) >= len(g.next) || seq != g.next[client] {
			return fmt.Errorf("Monolith: client %d: expected message %d, got %d (intact %v): lost, duplicated or reordered", client, g.next[min(int(client), len(g.next)-1)], seq, ok)
		}
		g.next[client]++
		step, _ := strconv.Atoi(string(rec[roomsRecordHex+7 : roomsRecordHex+10]))
		n++
		g.hs.record(uint8(step), now-sendNs)
		return nil
	})
	g.got.Add(n)
	if err != nil {
		g.err.CompareAndSwap(nil, &err)
		return true
	}
	return false
}
func (r linkReader) closeSock() {}

// runRooms runs the three loads against one server each.
func runRooms(ctx context.Context, s *scenario) error {
	cfg := s.cfg
	s.res.Params["broadcast_clients"] = cfg.RoomsClients
	s.res.Params["ingest_clients"] = cfg.RoomsIngestClients
	s.res.Params["record_bytes"] = roomsRecordHex
	s.res.Params["step_seconds"] = cfg.StepDur.Seconds()
	for _, n := range cfg.RoomsClients {
		if err := roomsLoad(ctx, s, n, false); err != nil {
			return err
		}
	}
	if cfg.RoomsIngestClients > 0 {
		return roomsLoad(ctx, s, cfg.RoomsIngestClients, true)
	}
	return nil
}

func roomsLoad(ctx context.Context, s *scenario, n int, ingest bool) error {
	cfg := s.cfg
	mono, err := listenBenchMonolith()
	if err != nil {
		return err
	}
	defer mono.close()
	s.stopServer()
	srv, err := s.startServer(ctx, "--rooms-addr", "127.0.0.1:0", "--rooms-monoliths", mono.ln.Addr().String(),
		"--rooms-max-client-pending", strconv.Itoa(64<<20), "--rooms-max-clients", strconv.Itoa(n+100),
		"--rooms-max-room-clients", strconv.Itoa(n+100))
	if err != nil {
		return err
	}
	defer s.stopServer() // before the Monolith goes: the server would log its loss
	addr := srv.Listener("rooms")
	if addr == "" {
		return errors.New("the server logged no rooms listener")
	}
	if err := mono.accept(15 * time.Second); err != nil {
		return err
	}
	// The balancer refuses upgrades until it has read the Monolith's init;
	// retry the first client until it is in.
	var first *roomsClient
	if !waitFor(ctx, 10*time.Second, func() bool {
		c, err := dialRoomsClient(ctx, addr, 0)
		first = c
		return err == nil
	}) {
		return errors.New("the balancer never accepted a room client")
	}
	rest, err := dialRoomsClients(ctx, addr, n-1, 16)
	if err != nil {
		first.conn.Close()
		return err
	}
	clients := append([]*roomsClient{first}, rest...)
	for i, c := range clients {
		c.idx = i
	}
	defer func() {
		for _, c := range clients {
			c.conn.Close()
		}
	}()
	if _, err := mono.expectJoins(n, 30*time.Second); err != nil {
		return err
	}
	loop, err := newHotLoop()
	if err != nil {
		return err
	}
	defer loop.stop()

	var g loadGen
	tag, label := fmt.Sprintf("bcast%d", n), fmt.Sprintf("broadcast to %d clients", n)
	start := max(50, cfg.RateStart*5/float64(n))
	if ingest {
		tag, label, start = fmt.Sprintf("ingest%d", n), fmt.Sprintf("%d clients sending", n), cfg.RateStart
		ig := &roomsIngest{loop: loop, link: wsFrames{fd: mono.fd, rb: make([]byte, 1<<20)}, clients: clients,
			next: make([]uint64, n), rnd: uint64(time.Now().UnixNano()) | 1}
		loop.add(linkReader{ig})
		g = ig
	} else {
		bg := &roomsBroadcast{loop: loop, link: mono.fd, clients: clients}
		for _, c := range clients {
			loop.add(roomsReader{bg, c})
		}
		g = bg
	}
	s.logf("  rooms: %s", label)
	st := &stepper{sc: s, g: g, dur: cfg.StepDur, drainMax: cfg.DrainMax}
	steps, best, err := st.searchPeak(ctx, start, cfg.RateMax, cfg.Refine)
	for i := range steps {
		steps[i].Purpose = tag + " " + steps[i].Purpose
	}
	s.res.Steps = append(s.res.Steps, steps...)
	if err != nil {
		return err
	}
	best = fallbackPeak(s, steps, best)
	if cfg.ProfileDir != "" {
		profileStep(ctx, s, st, best.OfferedRate) // one file per scenario: the last load's remains
	}
	lat, err := st.runStep(ctx, best.OfferedRate/2, cfg.LatencyDur, tag+" lat@50%")
	if err != nil {
		return err
	}
	s.res.Steps = append(s.res.Steps, lat)
	if !waitFor(ctx, 10*time.Second, func() bool {
		d, _ := g.deliveredTotal()
		return d >= g.sentTotal()*int64(g.fanout()) || g.asyncErr() != nil
	}) {
		d, _ := g.deliveredTotal()
		return fmt.Errorf("%s: %d of %d deliveries never arrived (LOST)", label, g.sentTotal()*int64(g.fanout())-d, g.sentTotal()*int64(g.fanout()))
	}
	if err := g.asyncErr(); err != nil {
		return err
	}
	unit := "broadcasts/s"
	if ingest {
		unit = "msgs/s"
	}
	s.metric(tag+"_peak_offered", label+": peak messages/s offered", best.OfferedRate, unit)
	s.metric(tag+"_peak_delivered", label+": peak deliveries/s (messages × receivers)", best.DeliveredRate, "deliveries/s")
	s.metric(tag+"_peak_server_cpu_pct", label+": server CPU at the peak (% of one core)", best.ServerCPUPct, "%")
	s.metric(tag+"_peak_server_us_per_delivery", label+": server CPU per delivery at the peak", best.ServerUsPerItem, "µs/item")
	s.metric(tag+"_peak_server_core_busy", label+": server core busy at the peak (incl. softirq)", best.ServerCoreBusy, "%")
	s.metric(tag+"_peak_harness_core_busy", label+": harness core busy at the peak (incl. softirq)", best.HarnessCoreBusy, "%")
	s.metric(tag+"_lat_rate", label+": latency step, messages/s (50% of peak)", lat.OfferedRate, unit)
	s.metric(tag+"_lat_p50_us", label+": latency p50", lat.P50us, "µs")
	s.metric(tag+"_lat_p99_us", label+": latency p99", lat.P99us, "µs")
	s.metric(tag+"_lat_server_us_per_delivery", label+": server CPU per delivery at 50% of peak", lat.ServerUsPerItem, "µs/item")
	s.note("%s: %d messages, every one delivered to every receiver in order (%d deliveries verified)", label, g.sentTotal(), g.sentTotal()*int64(g.fanout()))
	saturationNote(s, steps, best)
	return nil
}
