package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/placeos-gnet/dispatch/codec"
)

// tcpDev is one load device, written by the hot loop only.
type tcpDev struct {
	idx  int
	conn *net.TCPConn
	fd   int
	seq  uint64
	pend [RecordSize]byte // unwritten tail of a partially written record
	plen int
}

// flushPend writes the pending tail; true when nothing is left.
func (d *tcpDev) flushPend() (bool, error) {
	if d.plen == 0 {
		return true, nil
	}
	m, err := writeRaw(d.fd, d.pend[:d.plen])
	if err != nil {
		return false, err
	}
	copy(d.pend[:], d.pend[m:d.plen])
	d.plen -= m
	return d.plen == 0, nil
}

// fanHandler is one driver's receiving side for TCP ingest/fan-out.
type fanHandler struct {
	id      int
	who     string
	streams []*stream // by client id
	opened  atomic.Int64
	closed  atomic.Int64
	records atomic.Int64
	frames  atomic.Int64
	nRec    int64
	nFrm    int64
	now     int64
	hs      histSet
	onRec   func(r *record)
}

func newFanHandler(id int) *fanHandler {
	h := &fanHandler{id: id, who: fmt.Sprintf("driver %d", id)}
	h.onRec = func(r *record) {
		h.nRec++
		h.hs.record(r.step, h.now-r.sendNs)
	}
	return h
}

func (h *fanHandler) begin(now int64) { h.now = now; h.hs.mu.Lock() }
func (h *fanHandler) end() {
	if h.nRec > 0 {
		h.records.Add(h.nRec)
		h.nRec = 0
	}
	if h.nFrm > 0 {
		h.frames.Add(h.nFrm)
		h.nFrm = 0
	}
	h.hs.mu.Unlock()
}

func (h *fanHandler) message(m *codec.Message) error {
	id := m.ID
	switch m.Type {
	case codec.Opened:
		for uint64(len(h.streams)) <= id {
			h.streams = append(h.streams, nil)
		}
		if s := h.streams[id]; s != nil && !s.closed {
			return fmt.Errorf("%s: second OPENED for client id %d", h.who, id)
		}
		h.streams[id] = newStream()
		h.opened.Add(1)
	case codec.Received:
		if id >= uint64(len(h.streams)) || h.streams[id] == nil {
			return fmt.Errorf("%s: RECEIVED for client id %d before its OPENED", h.who, id)
		}
		s := h.streams[id]
		if s.closed {
			return fmt.Errorf("%s: RECEIVED for client id %d after its CLOSED", h.who, id)
		}
		if len(m.Data) == 0 {
			return fmt.Errorf("%s: empty RECEIVED for client id %d", h.who, id)
		}
		h.nFrm++
		if err := s.feed(m.Data, h.who, h.onRec); err != nil {
			return fmt.Errorf("%w (client id %d, RECEIVED of %d bytes)", err, id, len(m.Data))
		}
		return nil
	case codec.Closed:
		if id >= uint64(len(h.streams)) || h.streams[id] == nil {
			return fmt.Errorf("%s: CLOSED for unknown client id %d", h.who, id)
		}
		h.streams[id].closed = true
		h.closed.Add(1)
	default:
		return fmt.Errorf("%s: unexpected %v from server", h.who, m.Type)
	}
	return nil
}

// tcpIngest drives M devices into D drivers on one TCP port. The hot loop
// writes the devices (one record per write(2), round-robin) and reads the drivers.
type tcpIngest struct {
	loop    *hotLoop
	conns   []*net.TCPConn
	devs    []*tcpDev
	rr      int
	drivers []*Driver
	hs      []*fanHandler
	sent    atomic.Int64
}

// connect attaches nDrivers drivers, read by the hot loop, to a fresh device
// port (driver i at driverAddr(i)), connects nDevices devices to that port
// on 127.0.0.1 once ready (if given) says they can, and waits until every
// driver has seen every OPENED. close releases whatever it opened, also
// after a failure.
func (g *tcpIngest) connect(ctx context.Context, driverAddr func(int) string, secret string, nDrivers, nDevices int,
	ready func(ctx context.Context, port int) error) error {
	port, err := devicePort()
	if err != nil {
		return err
	}
	for i := 0; i < nDrivers; i++ {
		g.hs = append(g.hs, newFanHandler(i))
	}
	g.drivers, err = dialDrivers(ctx, nDrivers, func(i int) DriverDialOpts {
		return DriverDialOpts{Addr: driverAddr(i), Port: port, Accept: "127.0.0.1", Secret: secret, BigBufs: true, Manual: true}
	}, func(i int) msgHandler { return g.hs[i] })
	if err != nil {
		return err
	}
	for _, d := range g.drivers {
		g.loop.add(hotDriver{d})
	}
	if ready != nil {
		if err := ready(ctx, port); err != nil {
			return err
		}
	}
	g.conns, err = dialDevices(ctx, port, nDevices, 16, nil)
	if err != nil {
		return err
	}
	for i, c := range g.conns {
		fd, err := connFd(c)
		if err != nil {
			return err
		}
		g.devs = append(g.devs, &tcpDev{idx: i, conn: c, fd: fd})
	}
	if !waitFor(ctx, 30*time.Second, func() bool {
		if driversErr(g.drivers) != nil {
			return true
		}
		for _, h := range g.hs {
			if h.opened.Load() < int64(nDevices) {
				return false
			}
		}
		return true
	}) {
		return fmt.Errorf("drivers did not see OPENED for all %d devices within 30s (driver 0 saw %d)", nDevices, g.hs[0].opened.Load())
	}
	return driversErr(g.drivers)
}

// close closes the devices and the drivers; stop the hot loop first.
func (g *tcpIngest) close() {
	closeAll(g.conns)
	closeDrivers(g.drivers)
}

func (g *tcpIngest) fanout() int      { return len(g.drivers) }
func (g *tcpIngest) lossy() bool      { return false }
func (g *tcpIngest) sentTotal() int64 { return g.sent.Load() }
func (g *tcpIngest) deliveredTotal() (int64, int64) {
	var r, f int64
	for _, h := range g.hs {
		r += h.records.Load()
		f += h.frames.Load()
	}
	return r, f
}
func (g *tcpIngest) asyncErr() error {
	if err := driversErr(g.drivers); err != nil {
		return err
	}
	return nil
}
func (g *tcpIngest) takeHist(step uint8) *hdrhistogram.Histogram {
	out := newHist()
	for _, h := range g.hs {
		h.hs.take(step, out)
	}
	return out
}

func (g *tcpIngest) run(ctx context.Context, rate float64, dur time.Duration, step uint8) (int64, error) {
	var rec [RecordSize]byte
	emit := func(n int) (int, error) {
		done := 0
		for tries := 0; done < n && tries < 2*n+len(g.devs); tries++ {
			d := g.devs[g.rr]
			g.rr++
			if g.rr == len(g.devs) {
				g.rr = 0
			}
			if d.plen > 0 {
				ok, err := d.flushPend()
				if err != nil {
					return done, fmt.Errorf("device %d write: %w", d.idx, err)
				}
				if !ok {
					continue
				}
			}
			fillRecord(rec[:], nanotime(), d.seq, uint32(d.idx), step)
			m, err := writeRaw(d.fd, rec[:])
			if err != nil {
				return done, fmt.Errorf("device %d write: %w", d.idx, err)
			}
			if m == 0 {
				continue // socket full: not offered
			}
			if m < RecordSize {
				d.plen = copy(d.pend[:], rec[m:])
			}
			d.seq++
			done++
		}
		g.sent.Add(int64(done))
		return done, nil
	}
	flush := func() bool {
		all := true
		for _, d := range g.devs {
			if d.plen > 0 {
				// a write error leaves the tail unsent: the final check reports the loss
				if ok, err := d.flushPend(); err == nil && !ok {
					all = false
				}
			}
		}
		return all
	}
	return g.loop.offer(rate, dur, emit, flush)
}

// finalCheck: every driver received every record of every device, exactly.
func (g *tcpIngest) finalCheck() error {
	for _, h := range g.hs {
		h.hs.mu.Lock()
		defer h.hs.mu.Unlock()
	}
	for di, h := range g.hs {
		byDev := make(map[int64]*stream, len(h.streams))
		for _, s := range h.streams {
			if s != nil && s.dev >= 0 {
				if byDev[s.dev] != nil {
					return fmt.Errorf("driver %d: device %d appeared on two client ids", di, s.dev)
				}
				byDev[s.dev] = s
			}
		}
		for _, d := range g.devs {
			s := byDev[int64(d.idx)]
			got := uint64(0)
			if s != nil {
				got = s.next
			}
			if got != d.seq || (s != nil && s.plen != 0) {
				part := 0
				if s != nil {
					part = s.plen
				}
				return fmt.Errorf("driver %d: device %d: received %d of %d records (+%d stray bytes): bytes LOST", di, d.idx, got, d.seq, part)
			}
		}
	}
	return nil
}

func runFanout(ctx context.Context, s *scenario) error {
	return runTCPIngest(ctx, s, s.cfg.FanoutDrivers, s.cfg.FanoutDevices)
}

func runIngest(ctx context.Context, s *scenario) error {
	return runTCPIngest(ctx, s, 1, s.cfg.IngestDevices)
}

func runTCPIngest(ctx context.Context, s *scenario, nDrivers, nDevices int) error {
	return runTCPIngestOn(ctx, s, nDrivers, nDevices, "", nil)
}

// ingestTopology places the servers of an ingest run: it starts them and
// says where driver i attaches; devices always connect to 127.0.0.1. nil
// is one server.
type ingestTopology struct {
	start func(ctx context.Context, s *scenario) (driverAddr func(i int) string, err error)
	// ready waits until devices can connect (the port is open where they do).
	ready func(ctx context.Context, port int) error
}

// runTCPIngestOn is runTCPIngest on a topology; prefix names its metrics
// and steps when one scenario measures several.
func runTCPIngestOn(ctx context.Context, s *scenario, nDrivers, nDevices int, prefix string, topo *ingestTopology) error {
	cfg := s.cfg
	s.res.Params["drivers"] = nDrivers
	s.res.Params["devices"] = nDevices
	s.res.Params["record_bytes"] = RecordSize
	s.res.Params["step_seconds"] = cfg.StepDur.Seconds()
	metric := s.metric
	if prefix != "" {
		metric = func(key, label string, v float64, unit string) { s.metric(prefix+"_"+key, prefix+": "+label, v, unit) }
	}
	driverAddr := func(int) string { return s.srv.Addr }
	if topo == nil {
		if _, err := s.startServer(ctx); err != nil {
			return err
		}
	} else {
		var err error
		if driverAddr, err = topo.start(ctx, s); err != nil {
			return err
		}
	}
	loop, err := newHotLoop()
	if err != nil {
		return err
	}
	g := &tcpIngest{loop: loop}
	defer func() {
		loop.stop()
		g.close()
	}()
	var ready func(ctx context.Context, port int) error
	if topo != nil {
		ready = topo.ready
	}
	if err := g.connect(ctx, driverAddr, cfg.Secret, nDrivers, nDevices, ready); err != nil {
		return err
	}
	st := &stepper{sc: s, g: g, dur: cfg.StepDur, drainMax: cfg.DrainMax}
	steps, best, err := st.searchPeak(ctx, cfg.RateStart, cfg.RateMax, cfg.Refine)
	if prefix != "" {
		for i := range steps {
			steps[i].Purpose = prefix + " " + steps[i].Purpose
		}
	}
	s.res.Steps = append(s.res.Steps, steps...)
	if err != nil {
		return err
	}
	best = fallbackPeak(s, steps, best)
	metric("peak_offered_rate", "peak: records/s written by devices", best.OfferedRate, "rec/s")
	metric("peak_delivered_records", "peak: records/s delivered (sum over drivers)", best.DeliveredRate, "rec/s")
	metric("peak_received_frames", "peak: RECEIVED frames/s delivered (sum over drivers)", best.FrameRate, "frames/s")
	metric("peak_server_cpu_pct", "peak: server CPU (% of one core)", best.ServerCPUPct, "%")
	metric("peak_server_us_per_frame", "peak: server CPU per delivered frame", best.ServerUsPerFrm, "µs/frame")
	metric("peak_harness_cpu_pct", "peak: harness CPU (% of one core)", best.HarnessCPUPct, "%")
	// latency at 50% of the measured peak
	lat, err := st.runStep(ctx, best.OfferedRate/2, cfg.LatencyDur, strings.TrimSpace(prefix+" lat@50%"))
	if err != nil {
		return err
	}
	s.res.Steps = append(s.res.Steps, lat)
	metric("lat_rate", "latency step: offered records/s (50% of peak)", lat.OfferedRate, "rec/s")
	metric("lat_p50_us", "latency p50 (device write → driver read)", lat.P50us, "µs")
	metric("lat_p99_us", "latency p99", lat.P99us, "µs")
	metric("lat_p999_us", "latency p99.9", lat.P999us, "µs")
	metric("lat_server_cpu_pct", "latency step: server CPU", lat.ServerCPUPct, "%")
	if cfg.ProfileDir != "" {
		profileStep(ctx, s, st, best.OfferedRate)
	}
	// every byte, in order, to every driver
	if !waitFor(ctx, 10*time.Second, func() bool {
		d, _ := g.deliveredTotal()
		return d >= g.sentTotal()*int64(nDrivers) || g.asyncErr() != nil
	}) {
		d, _ := g.deliveredTotal()
		return fmt.Errorf("after the run %d of %d records never arrived at the drivers (LOST)", g.sentTotal()*int64(nDrivers)-d, g.sentTotal()*int64(nDrivers))
	}
	if err := g.asyncErr(); err != nil {
		return err
	}
	if err := g.finalCheck(); err != nil {
		return err
	}
	s.note(strings.TrimSpace(prefix+" correctness: %d records (%d bytes) per driver verified in order per device, no loss"), g.sentTotal(), g.sentTotal()*RecordSize)
	s.note("peak = highest step with offered ≥97%% of target, ≥95%% delivered within the window and backlog ≤5%% at its end")
	metric("peak_server_core_busy", "peak: server core busy (/proc/stat, incl. softirq)", best.ServerCoreBusy, "%")
	metric("peak_harness_core_busy", "peak: harness core busy (/proc/stat, incl. softirq)", best.HarnessCoreBusy, "%")
	saturationNote(s, steps, best)
	return nil
}

// profileStep repeats a step at rate while fetching a server CPU profile.
func profileStep(ctx context.Context, s *scenario, st *stepper, rate float64) {
	path := filepath.Join(s.cfg.ProfileDir, s.res.Name+"-server-cpu.pprof")
	errc := make(chan error, 1)
	go func() { errc <- s.srv.CPUProfile(s.cfg.ProfileDur, path) }()
	time.Sleep(100 * time.Millisecond)
	ps, err := st.runStep(ctx, rate, s.cfg.ProfileDur+500*time.Millisecond, "profile")
	if err == nil {
		s.res.Steps = append(s.res.Steps, ps)
	}
	if perr := <-errc; perr != nil {
		s.note("server CPU profile not captured: %v", perr)
		os.Remove(path)
	} else {
		s.note("server CPU profile at %.0f/s: %s", rate, path)
	}
	apath := filepath.Join(s.cfg.ProfileDir, s.res.Name+"-server-allocs.pprof")
	if err := s.srv.AllocsProfile(apath); err == nil {
		s.note("server allocation profile (whole run): %s", apath)
	}
}

// saturationNote says which side ran out of CPU at the peak and, when only
// the harness did, extrapolates the server's capacity from its CPU per item.
func saturationNote(s *scenario, steps []Step, best *Step) {
	srv, hrn := best.ServerCoreBusy, best.HarnessCoreBusy
	if srv < 0 || hrn < 0 {
		srv, hrn = best.ServerCPUPct, best.HarnessCPUPct
	}
	harnessLimited := false
	for _, st := range steps {
		if !st.OK && st.TargetRate > best.TargetRate && st.OfferedRate < 0.97*st.TargetRate &&
			(st.HarnessCoreBusy >= 95 || st.HarnessCPUPct >= 95) && st.ServerCoreBusy < st.HarnessCoreBusy {
			harnessLimited = true
		}
	}
	facts := fmt.Sprintf("server core %.0f%% busy, harness core %.0f%% busy; process CPU server %.0f%%, harness %.0f%%", srv, hrn, best.ServerCPUPct, best.HarnessCPUPct)
	switch {
	case srv >= 90 && hrn >= 90:
		s.note("BOTH SIDES SATURATED at the peak (%s): the peak is close to the server's limit", facts)
	case srv >= 90:
		s.note("SERVER-LIMITED PEAK (%s)", facts)
	case harnessLimited && best.ServerCPUPct > 0:
		est := best.DeliveredRate / (best.ServerCPUPct / 100)
		s.metric("server_capacity_estimate", "server-limited capacity, extrapolated (delivered/s ÷ server CPU share)", est, "items/s")
		s.note("HARNESS-LIMITED PEAK (%s): above it the harness could not offer the load while the server still had CPU to spare; the extrapolated server capacity (%.0f deliveries/s at 100%% of its core) assumes CPU per item stays constant, which batching makes pessimistic", facts, est)
	default:
		side := "server"
		if hrn > srv {
			side = "harness"
		}
		s.note("at the peak the busier side was the %s (%s)", side, facts)
	}
}
