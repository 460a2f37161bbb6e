package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"

	"github.com/placeos-gnet/dispatch/codec"
)

// wpDriverHandler collects the client ids the write-path driver may address.
type wpDriverHandler struct {
	mu     sync.Mutex
	ids    []uint64
	closed atomic.Int64
}

func (h *wpDriverHandler) begin(int64) {}
func (h *wpDriverHandler) end()        {}
func (h *wpDriverHandler) message(m *codec.Message) error {
	switch m.Type {
	case codec.Opened:
		h.mu.Lock()
		h.ids = append(h.ids, m.ID)
		h.mu.Unlock()
	case codec.Closed:
		h.closed.Add(1)
	case codec.Received:
		return fmt.Errorf("write-path driver: unexpected RECEIVED from client %d (devices send nothing)", m.ID)
	}
	return nil
}

type writeGen struct {
	loop     *hotLoop
	drv      *Driver
	bw       *batchWriter
	ids      []uint64
	seqs     []uint64
	rr       int
	sent     atomic.Int64
	got      atomic.Int64
	hs       histSet
	devs     []*wpDevice
	rbuf     []byte
	errp     atomic.Pointer[error]
	stopping atomic.Bool
}

// wpDevice is a device socket read by the hot loop.
type wpDevice struct {
	g     *writeGen
	idx   int
	who   string
	conn  *net.TCPConn
	fd    int
	s     *stream
	n     int64
	now   int64
	onRec func(r *record)
}

func (d *wpDevice) fdNum() int { return d.fd }
func (d *wpDevice) closeSock() { d.conn.Close() }
func (d *wpDevice) readable() bool {
	g := d.g
	for i := 0; i < 8; i++ {
		n, err := unix.Read(d.fd, g.rbuf)
		if err == unix.EAGAIN {
			return false
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			if !g.stopping.Load() {
				if err == nil {
					err = io.EOF
				}
				g.fail(fmt.Errorf("device %d: connection ended by the server during the run (%v)", d.idx, err))
			}
			return true
		}
		d.now = nanotime()
		g.hs.mu.Lock()
		ferr := d.s.feed(g.rbuf[:n], d.who, d.onRec)
		g.hs.mu.Unlock()
		g.got.Add(d.n)
		d.n = 0
		if ferr != nil {
			g.fail(ferr)
			return true
		}
	}
	return false
}

func (g *writeGen) fanout() int      { return 1 }
func (g *writeGen) lossy() bool      { return false }
func (g *writeGen) sentTotal() int64 { return g.sent.Load() }
func (g *writeGen) deliveredTotal() (int64, int64) {
	n := g.got.Load()
	return n, n
}
func (g *writeGen) asyncErr() error {
	if p := g.errp.Load(); p != nil {
		return *p
	}
	return g.drv.Err()
}
func (g *writeGen) fail(err error) {
	g.errp.CompareAndSwap(nil, &err)
}
func (g *writeGen) takeHist(step uint8) *hdrhistogram.Histogram {
	out := newHist()
	g.hs.take(step, out)
	return out
}

var ip127 = []byte("127.0.0.1")

func (g *writeGen) run(ctx context.Context, rate float64, dur time.Duration, step uint8) (int64, error) {
	var rec [RecordSize]byte
	return g.loop.offer(rate, dur, func(n int) (int, error) {
		now := nanotime()
		for i := 0; i < n; i++ {
			k := g.rr
			g.rr++
			if g.rr == len(g.ids) {
				g.rr = 0
			}
			fillRecord(rec[:], now, g.seqs[k], uint32(g.ids[k]), step)
			g.seqs[k]++
			g.bw.AddMessage(codec.Write, ip127, g.ids[k], rec[:])
		}
		if err := g.bw.Flush(); err != nil {
			return 0, fmt.Errorf("driver write: %w", err)
		}
		g.sent.Add(int64(n))
		return n, nil
	}, nil)
}

func (g *writeGen) finalCheck() error {
	sentByID := map[uint64]uint64{}
	for k, id := range g.ids {
		sentByID[id] = g.seqs[k]
	}
	seen := map[uint64]int{}
	g.hs.mu.Lock()
	defer g.hs.mu.Unlock()
	for _, d := range g.devs {
		if d.s.dev < 0 {
			continue
		}
		id := uint64(d.s.dev)
		if prev, dup := seen[id]; dup {
			return fmt.Errorf("devices %d and %d both received WRITEs for client id %d", prev, d.idx, id)
		}
		seen[id] = d.idx
		want, ok := sentByID[id]
		if !ok {
			return fmt.Errorf("device %d received WRITEs addressed to client id %d that was never written", d.idx, id)
		}
		if d.s.next != want || d.s.plen != 0 {
			return fmt.Errorf("device %d (client id %d): received %d of %d WRITE records (+%d stray bytes): bytes LOST", d.idx, id, d.s.next, want, d.s.plen)
		}
	}
	for id, want := range sentByID {
		if _, ok := seen[id]; !ok && want > 0 {
			return fmt.Errorf("client id %d: %d WRITE records sent, no device received any: LOST", id, want)
		}
	}
	return nil
}

func runWritePath(ctx context.Context, s *scenario) error {
	cfg := s.cfg
	nDev := cfg.WriteDevices
	s.res.Params["drivers"] = 1
	s.res.Params["devices"] = nDev
	s.res.Params["record_bytes"] = RecordSize
	srv, err := s.startServer(ctx)
	if err != nil {
		return err
	}
	port, err := devicePort()
	if err != nil {
		return err
	}
	h := &wpDriverHandler{}
	loop, err := newHotLoop()
	if err != nil {
		return err
	}
	drv, err := dialDriver(ctx, 0, DriverDialOpts{Addr: srv.Addr, Port: port, Accept: "127.0.0.1", Secret: cfg.Secret, BigBufs: true, Manual: true}, h)
	if err != nil {
		loop.stop()
		return err
	}
	defer drv.Close()
	g := &writeGen{loop: loop, drv: drv, bw: newBatchWriter(drv), rbuf: make([]byte, 64<<10)}
	var conns []*net.TCPConn
	defer func() {
		g.stopping.Store(true)
		loop.stop()
		closeAll(conns)
	}()
	loop.add(hotDriver{drv})
	conns, err = dialDevices(ctx, port, nDev, 16, nil)
	if err != nil {
		return err
	}
	for i, c := range conns {
		fd, err := connFd(c)
		if err != nil {
			return err
		}
		d := &wpDevice{g: g, idx: i, who: fmt.Sprintf("device %d", i), conn: c, fd: fd, s: newStream()}
		d.onRec = func(r *record) {
			d.n++
			g.hs.record(r.step, d.now-r.sendNs)
		}
		g.devs = append(g.devs, d)
		loop.add(d)
	}
	if !waitFor(ctx, 30*time.Second, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.ids) >= nDev || drv.Err() != nil
	}) {
		return fmt.Errorf("driver saw %d of %d OPENED within 30s", len(h.ids), nDev)
	}
	if err := drv.Err(); err != nil {
		return err
	}
	h.mu.Lock()
	g.ids = append([]uint64(nil), h.ids...)
	h.mu.Unlock()
	g.seqs = make([]uint64, len(g.ids))
	st := &stepper{sc: s, g: g, dur: cfg.StepDur, drainMax: cfg.DrainMax}
	steps, best, err := st.searchPeak(ctx, cfg.RateStart, cfg.RateMax, cfg.Refine)
	s.res.Steps = steps
	if err != nil {
		return err
	}
	best = fallbackPeak(s, steps, best)
	s.metric("peak_writes", "peak: WRITEs/s delivered to devices", best.DeliveredRate, "writes/s")
	s.metric("peak_offered", "peak: WRITEs/s sent by the driver", best.OfferedRate, "writes/s")
	s.metric("peak_server_cpu_pct", "peak: server CPU (% of one core)", best.ServerCPUPct, "%")
	s.metric("peak_server_us_per_write", "peak: server CPU per delivered WRITE", best.ServerUsPerItem, "µs/item")
	s.metric("peak_harness_cpu_pct", "peak: harness CPU (% of one core)", best.HarnessCPUPct, "%")
	s.metric("peak_server_core_busy", "peak: server core busy (/proc/stat, incl. softirq)", best.ServerCoreBusy, "%")
	s.metric("peak_harness_core_busy", "peak: harness core busy (/proc/stat, incl. softirq)", best.HarnessCoreBusy, "%")
	saturationNote(s, steps, best)
	lat, err := st.runStep(ctx, best.OfferedRate/2, cfg.LatencyDur, "lat@50%")
	if err != nil {
		return err
	}
	s.res.Steps = append(s.res.Steps, lat)
	s.metric("lat_p50_us", "latency p50 at 50% of peak (driver write → device read)", lat.P50us, "µs")
	s.metric("lat_p99_us", "latency p99", lat.P99us, "µs")
	s.metric("lat_p999_us", "latency p99.9", lat.P999us, "µs")
	if cfg.ProfileDir != "" {
		profileStep(ctx, s, st, best.OfferedRate)
	}
	if !waitFor(ctx, 10*time.Second, func() bool { d, _ := g.deliveredTotal(); return d >= g.sentTotal() || g.asyncErr() != nil }) {
		d, _ := g.deliveredTotal()
		return fmt.Errorf("after the run %d of %d WRITE records never reached the devices (LOST)", g.sentTotal()-d, g.sentTotal())
	}
	if err := g.asyncErr(); err != nil {
		return err
	}
	if err := g.finalCheck(); err != nil {
		return err
	}
	if n := h.closed.Load(); n > 0 {
		return fmt.Errorf("driver saw %d CLOSED during the run: the server dropped devices (device pending bound?)", n)
	}
	s.note("correctness: %d WRITE records verified at the devices, in order per client id, none lost", g.sentTotal())
	s.note("WRITEs are sent in batches (up to 32 WebSocket frames, one per WRITE, per write(2)), round-robin over %d client ids", len(g.ids))
	return nil
}
