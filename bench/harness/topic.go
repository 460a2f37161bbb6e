package harness

// Scenario "topic": relay topics. One publisher sends 64-byte records, each
// a binary WebSocket message of its own, to a topic with S subscribers
// (100, then 1000, each level on a fresh server). Deliveries/s are records
// × subscribers verified at the subscribers; every frame must hold exactly
// one record (frames = messages: the server never merges), in order per
// subscriber. A subscriber that falls behind its bound loses whole records
// (the relay drops for slow readers): gaps count as loss, and a step with
// more than 0.1 % loss fails, so the peak is the highest rate at which
// every subscriber got everything.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/loop/relay"
)

var relayListenRe = regexp.MustCompile(`msg="relay listening" addr=(\S+) access_url=(\S+)`)

const topicSecret = "bench-relay-secret-0123456789"

// topicSub is one subscriber, read by the hot loop.
type topicSub struct {
	idx  int
	conn net.Conn
	fd   int
	g    *topicLoad
	rb   []byte
	rr   int
	rw   int
	next uint64 // next expected sequence number
}

func (s *topicSub) fdNum() int     { return s.fd }
func (s *topicSub) closeSock()     { s.conn.Close() }
func (s *topicSub) fail(err error) { s.g.setErr(err) }
func (s *topicSub) readable() bool {
	g := s.g
	now := nanotime()
	var recs, lost int64
	g.hs.mu.Lock()
	defer func() {
		g.hs.mu.Unlock()
		g.records.Add(recs)
		g.lost.Add(lost)
	}()
	for i := 0; i < 8; i++ {
		if s.rw == len(s.rb) {
			s.rw = copy(s.rb, s.rb[s.rr:s.rw])
			s.rr = 0
		}
		n, err := unix.Read(s.fd, s.rb[s.rw:])
		if err == unix.EAGAIN {
			return false
		}
		if err != nil || n == 0 {
			s.fail(fmt.Errorf("subscriber %d: connection ended (%v)", s.idx, err))
			return true
		}
		s.rw += n
	frames:
		for {
			b := s.rb[s.rr:s.rw]
			if len(b) < 2 {
				break
			}
			op := ws.OpCode(b[0] & 0x0f)
			l := int(b[1] & 0x7f)
			hl := 2
			switch l {
			case 126:
				if len(b) < 4 {
					break frames
				}
				l, hl = int(binary.BigEndian.Uint16(b[2:])), 4
			case 127:
				if len(b) < 10 {
					break frames
				}
				l, hl = int(binary.BigEndian.Uint64(b[2:])), 10
			}
			if hl+l > len(s.rb) {
				s.fail(fmt.Errorf("subscriber %d: a %d-byte frame", s.idx, l))
				return true
			}
			if len(b) < hl+l {
				break
			}
			payload := b[hl : hl+l]
			s.rr += hl + l
			switch {
			case op == ws.OpClose:
				code := 0
				if len(payload) >= 2 {
					code = int(binary.BigEndian.Uint16(payload))
				}
				s.fail(fmt.Errorf("subscriber %d: server closed it: %d %q", s.idx, code, payload[min(2, len(payload)):]))
				return true
			case op == ws.OpPing || op == ws.OpPong:
				continue
			case op != ws.OpBinary || b[0]&0x80 == 0 || l != RecordSize:
				s.fail(fmt.Errorf("subscriber %d: frame opcode %v fin %v of %d bytes: want one %d-byte record per binary frame (MERGED or split)",
					s.idx, op, b[0]&0x80 != 0, l, RecordSize))
				return true
			}
			r, ok := parseRecord(payload)
			switch {
			case !ok:
				s.fail(fmt.Errorf("subscriber %d: record %d CORRUPTED", s.idx, r.seq))
				return true
			case r.seq < s.next:
				s.fail(fmt.Errorf("subscriber %d: record %d after %d: DUPLICATE or REORDERED", s.idx, r.seq, s.next-1))
				return true
			}
			lost += int64(r.seq - s.next)
			s.next = r.seq + 1
			recs++
			g.hs.record(r.step, now-r.sendNs)
		}
		if s.rr == s.rw {
			s.rr, s.rw = 0, 0
		}
	}
	return false
}

// topicLoad is one publisher and S subscribers on one topic.
type topicLoad struct {
	loop    *hotLoop
	batch   int // messages per publisher write(2)
	pub     net.Conn
	pubFd   int
	subs    []*topicSub
	seq     uint64
	rnd     uint64
	pend    []byte // frames not yet written
	buf     []byte
	sent    atomic.Int64
	records atomic.Int64
	lost    atomic.Int64
	hs      histSet
	errMu   sync.Mutex
	err     error
}

func (g *topicLoad) setErr(err error) {
	g.errMu.Lock()
	if g.err == nil {
		g.err = err
	}
	g.errMu.Unlock()
}

func (g *topicLoad) fanout() int      { return len(g.subs) }
func (g *topicLoad) lossy() bool      { return true }
func (g *topicLoad) sentTotal() int64 { return g.sent.Load() }

// deliveredTotal: records that arrived; a frame holds exactly one.
func (g *topicLoad) deliveredTotal() (int64, int64) {
	r := g.records.Load()
	return r, r
}
func (g *topicLoad) asyncErr() error {
	g.errMu.Lock()
	defer g.errMu.Unlock()
	return g.err
}
func (g *topicLoad) takeHist(step uint8) *hdrhistogram.Histogram {
	out := newHist()
	g.hs.take(step, out)
	return out
}

func (g *topicLoad) run(ctx context.Context, rate float64, dur time.Duration, step uint8) (int64, error) {
	var rec [RecordSize]byte
	write := func() (bool, error) {
		if len(g.pend) == 0 {
			return true, nil
		}
		m, err := writeRaw(g.pubFd, g.pend)
		if err != nil {
			return false, fmt.Errorf("publisher write: %w", err)
		}
		g.pend = g.pend[:copy(g.pend, g.pend[m:])]
		return len(g.pend) == 0, nil
	}
	// Up to TopicBatch messages per write(2): 1 is a publisher that writes
	// each message as it has it; more lets the server read several at once.
	batch := max(1, g.batch)
	emit := func(n int) (int, error) {
		done := 0
		for done < n {
			if ok, err := write(); err != nil || !ok {
				return done, err // socket full: the rest is not offered
			}
			k := min(batch, n-done)
			g.buf = g.buf[:0]
			for range k {
				fillRecord(rec[:], nanotime(), g.seq, 0, step)
				g.buf = appendClientHeader(g.buf, ws.OpBinary, RecordSize)
				m := nextMask(&g.rnd)
				g.buf = append(g.buf, m[:]...)
				start := len(g.buf)
				g.buf = append(g.buf, rec[:]...)
				ws.Cipher(g.buf[start:], m, 0)
				g.seq++
			}
			g.pend = append(g.pend, g.buf...)
			done += k
			g.sent.Add(int64(k))
		}
		_, err := write()
		return done, err
	}
	flush := func() bool {
		ok, err := write()
		return ok || err != nil
	}
	return g.loop.offer(rate, dur, emit, flush)
}

// relayConnect mints a token, asks the access API for a code and opens the
// WebSocket; bufs sets the socket buffers (0: the kernel's).
func relayConnect(ctx context.Context, access, topic string, scopes []string, bufs int) (net.Conn, error) {
	now := time.Now()
	claims := &relay.Claims{Topic: topic, Prefix: relay.PrefixSession, Scopes: scopes, BookingID: "bench",
		RegisteredClaims: jwt.RegisteredClaims{Audience: jwt.ClaimStrings{access}, IssuedAt: jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}}
	token, err := relay.Mint(claims, []byte(topicSecret))
	if err != nil {
		return nil, err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, access+"/session/"+topic, nil)
	req.Header.Set("Authorization", token)
	resp, err := topicHTTP.Do(req)
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	var answer struct {
		URI string `json:"uri"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &answer) != nil {
		return nil, fmt.Errorf("relay access: %d %s", resp.StatusCode, bytes.TrimSpace(body))
	}
	var nd net.Dialer
	nd.Timeout = 10 * time.Second
	if bufs > 0 {
		nd.Control = sockBufs(bufs).control
	}
	conn, br, _, err := ws.Dialer{Timeout: 10 * time.Second, NetDial: nd.DialContext}.Dial(ctx, answer.URI)
	if err != nil {
		return nil, err
	}
	if br != nil && br.Buffered() > 0 {
		conn.Close()
		return nil, fmt.Errorf("relay sent data before anything was published")
	}
	return conn, nil
}

var topicHTTP = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func runTopic(ctx context.Context, s *scenario) error {
	cfg := s.cfg
	s.res.Params["subscribers"] = cfg.TopicSubscribers
	s.res.Params["record_bytes"] = RecordSize
	s.res.Params["messages_per_publisher_write"] = max(1, cfg.TopicBatch)
	s.res.Params["step_seconds"] = cfg.StepDur.Seconds()
	for i, n := range cfg.TopicSubscribers {
		if i > 0 {
			s.stopServer()
		}
		if err := runTopicLevel(ctx, s, n); err != nil {
			return fmt.Errorf("%d subscribers: %w", n, err)
		}
	}
	return nil
}

func runTopicLevel(ctx context.Context, s *scenario, nSubs int) error {
	cfg := s.cfg
	srv, err := s.startServerEnv(ctx, []string{"DISPATCH_RELAY_SECRET=" + topicSecret},
		"--relay-listen", "127.0.0.1:0", "--relay-ping-interval", "1h", "--relay-max-conns", "1000000")
	if err != nil {
		return err
	}
	m := relayListenRe.FindStringSubmatch(srv.Tail())
	if m == nil {
		return fmt.Errorf("no \"relay listening\" line; stderr:\n%s", srv.Tail())
	}
	access := m[2]
	loop, err := newHotLoop()
	if err != nil {
		return err
	}
	g := &topicLoad{loop: loop, batch: cfg.TopicBatch, rnd: uint64(time.Now().UnixNano()) | 1}
	defer func() {
		loop.stop()
		if g.pub != nil {
			g.pub.Close()
		}
		for _, sub := range g.subs {
			sub.conn.Close()
		}
	}()
	topic := fmt.Sprintf("bench-%d", nSubs)
	g.subs = make([]*topicSub, nSubs)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= nSubs {
					return
				}
				c, err := relayConnect(ctx, access, topic, []string{relay.ScopeRead}, 1<<20)
				if err != nil {
					errs <- fmt.Errorf("subscriber %d: %w", i, err)
					return
				}
				fd, err := connFd(c.(syscall.Conn))
				if err != nil {
					c.Close()
					errs <- err
					return
				}
				g.subs[i] = &topicSub{idx: i, conn: c, fd: fd, g: g, rb: make([]byte, 64<<10)}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	for _, sub := range g.subs {
		if err := unix.SetNonblock(sub.fd, true); err != nil {
			return err
		}
		loop.add(sub)
	}
	g.pub, err = relayConnect(ctx, access, topic, []string{relay.ScopeWrite}, 4<<20)
	if err != nil {
		return fmt.Errorf("publisher: %w", err)
	}
	if g.pubFd, err = connFd(g.pub.(syscall.Conn)); err != nil {
		return err
	}
	if err := unix.SetNonblock(g.pubFd, true); err != nil {
		return err
	}

	tag := fmt.Sprintf("s%d", nSubs)
	st := &stepper{sc: s, g: g, dur: cfg.StepDur, drainMax: cfg.DrainMax}
	start := cfg.TopicDeliveryStart / float64(nSubs)
	steps, best, err := st.searchPeak(ctx, start, cfg.RateMax, cfg.Refine)
	for i := range steps {
		steps[i].Purpose = tag + " " + steps[i].Purpose
	}
	s.res.Steps = append(s.res.Steps, steps...)
	if err != nil {
		return err
	}
	best = fallbackPeak(s, steps, best)
	s.metric(tag+"_peak_messages", fmt.Sprintf("%d subscribers, peak: messages/s published", nSubs), best.OfferedRate, "msg/s")
	s.metric(tag+"_peak_deliveries", fmt.Sprintf("%d subscribers, peak: deliveries/s (messages × subscribers, verified)", nSubs), best.DeliveredRate, "deliv/s")
	s.metric(tag+"_peak_frames", fmt.Sprintf("%d subscribers, peak: frames/s received (= deliveries: one message per frame)", nSubs), best.FrameRate, "frames/s")
	s.metric(tag+"_peak_server_cpu_pct", fmt.Sprintf("%d subscribers, peak: server CPU (%% of one core)", nSubs), best.ServerCPUPct, "%")
	s.metric(tag+"_peak_server_us_per_delivery", fmt.Sprintf("%d subscribers, peak: server CPU per delivery", nSubs), best.ServerUsPerItem, "µs")
	s.metric(tag+"_peak_server_core_busy", fmt.Sprintf("%d subscribers, peak: server core busy", nSubs), best.ServerCoreBusy, "%")
	s.metric(tag+"_peak_harness_core_busy", fmt.Sprintf("%d subscribers, peak: harness core busy", nSubs), best.HarnessCoreBusy, "%")
	lat, err := st.runStep(ctx, best.OfferedRate/2, cfg.LatencyDur, tag+" lat@50%")
	if err != nil {
		return err
	}
	s.res.Steps = append(s.res.Steps, lat)
	s.metric(tag+"_lat_rate", fmt.Sprintf("%d subscribers, latency step: messages/s (50%% of peak)", nSubs), lat.OfferedRate, "msg/s")
	s.metric(tag+"_lat_p50_us", fmt.Sprintf("%d subscribers, latency p50 (publisher write → subscriber read)", nSubs), lat.P50us, "µs")
	s.metric(tag+"_lat_p99_us", fmt.Sprintf("%d subscribers, latency p99", nSubs), lat.P99us, "µs")
	s.metric(tag+"_lat_server_us_per_delivery", fmt.Sprintf("%d subscribers, latency step: server CPU per delivery", nSubs), lat.ServerUsPerItem, "µs")
	if err := g.asyncErr(); err != nil {
		return err
	}
	lost := g.lost.Load()
	s.note("%d subscribers: %d messages published, %d deliveries verified (one record per binary frame, in order), %d dropped for subscribers behind their bound",
		nSubs, g.sentTotal(), g.records.Load(), lost)
	saturationNote(s, steps, best)
	return nil
}

// startServerEnv is startServer with extra environment.
func (s *scenario) startServerEnv(ctx context.Context, env []string, extra ...string) (*Server, error) {
	saved := s.cfg.ServerEnv
	s.cfg.ServerEnv = append(append([]string(nil), saved...), env...)
	defer func() { s.cfg.ServerEnv = saved }()
	return s.startServer(ctx, extra...)
}
