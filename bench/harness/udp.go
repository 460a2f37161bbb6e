package harness

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/placeos-gnet/dispatch/codec"
)

type udpSrc struct {
	idx  int
	conn *net.UDPConn
	fd   int
	port int
	seq  uint64
}

type ustream struct {
	dev  int64
	next uint64
	got  uint64
	lost uint64
}

// udpHandler is one driver's side of the UDP scenario: datagrams must arrive
// whole; per source they must never go backwards; gaps are counted as loss.
type udpHandler struct {
	id      int
	who     string
	streams []*ustream // by source port
	records atomic.Int64
	frames  atomic.Int64
	gaps    atomic.Int64
	nRec    int64
	nGap    int64
	now     int64
	hs      histSet
}

func (h *udpHandler) begin(now int64) { h.now = now; h.hs.mu.Lock() }
func (h *udpHandler) end() {
	if h.nRec > 0 {
		h.records.Add(h.nRec)
		h.frames.Add(h.nRec)
		h.nRec = 0
	}
	if h.nGap > 0 {
		h.gaps.Add(h.nGap)
		h.nGap = 0
	}
	h.hs.mu.Unlock()
}

func (h *udpHandler) message(m *codec.Message) error {
	if m.Type != codec.Received {
		return fmt.Errorf("%s: unexpected %v on a udp_dispatch port", h.who, m.Type)
	}
	if m.ID == 0 || m.ID > 65535 {
		return fmt.Errorf("%s: RECEIVED with source port %d", h.who, m.ID)
	}
	if len(m.Data) != RecordSize {
		return fmt.Errorf("%s: datagram from port %d arrived with %d bytes, sent %d (datagrams must arrive whole)", h.who, m.ID, len(m.Data), RecordSize)
	}
	r, ok := parseRecord(m.Data)
	if !ok {
		return fmt.Errorf("%s: corrupted datagram from port %d (seq %d)", h.who, m.ID, r.seq)
	}
	s := h.streams[m.ID]
	if s == nil {
		s = &ustream{dev: int64(r.dev)}
		h.streams[m.ID] = s
	}
	if int64(r.dev) != s.dev {
		return fmt.Errorf("%s: source port %d carried datagrams of sources %d and %d", h.who, m.ID, s.dev, r.dev)
	}
	if r.seq < s.next {
		return fmt.Errorf("%s: source %d: datagram seq %d after seq %d: REORDERED or duplicated", h.who, s.dev, r.seq, s.next-1)
	}
	if r.seq > s.next {
		s.lost += r.seq - s.next
		h.nGap += int64(r.seq - s.next)
	}
	s.next = r.seq + 1
	s.got++
	h.nRec++
	h.hs.record(r.step, h.now-r.sendNs)
	return nil
}

type udpGen struct {
	loop    *hotLoop
	srcs    []*udpSrc
	rr      int
	drivers []*Driver
	hs      []*udpHandler
	sent    atomic.Int64
}

func (g *udpGen) fanout() int      { return len(g.drivers) }
func (g *udpGen) lossy() bool      { return true }
func (g *udpGen) sentTotal() int64 { return g.sent.Load() }
func (g *udpGen) asyncErr() error  { return driversErr(g.drivers) }
func (g *udpGen) deliveredTotal() (int64, int64) {
	var r, f int64
	for _, h := range g.hs {
		r += h.records.Load()
		f += h.frames.Load()
	}
	return r, f
}
func (g *udpGen) takeHist(step uint8) *hdrhistogram.Histogram {
	out := newHist()
	for _, h := range g.hs {
		h.hs.take(step, out)
	}
	return out
}

func (g *udpGen) run(ctx context.Context, rate float64, dur time.Duration, step uint8) (int64, error) {
	var rec [RecordSize]byte
	return g.loop.offer(rate, dur, func(n int) (int, error) {
		done := 0
		for tries := 0; done < n && tries < 2*n; tries++ {
			src := g.srcs[g.rr]
			g.rr++
			if g.rr == len(g.srcs) {
				g.rr = 0
			}
			fillRecord(rec[:], nanotime(), src.seq, uint32(src.idx), step)
			m, err := writeRaw(src.fd, rec[:])
			if err != nil {
				g.sent.Add(int64(done))
				return done, fmt.Errorf("udp source %d send: %w", src.idx, err)
			}
			if m == 0 {
				continue // send buffer full: not offered
			}
			src.seq++
			done++
		}
		g.sent.Add(int64(done))
		return done, nil
	}, nil)
}

func runUDP(ctx context.Context, s *scenario) error {
	cfg := s.cfg
	nDrivers, nSrc := cfg.UDPDrivers, cfg.UDPSources
	s.res.Params["drivers"] = nDrivers
	s.res.Params["sources"] = nSrc
	s.res.Params["datagram_bytes"] = RecordSize
	srv, err := s.startServer(ctx)
	if err != nil {
		return err
	}
	port, err := devicePort()
	if err != nil {
		return err
	}
	loop, err := newHotLoop()
	if err != nil {
		return err
	}
	g := &udpGen{loop: loop}
	for i := 0; i < nDrivers; i++ {
		g.hs = append(g.hs, &udpHandler{id: i, who: fmt.Sprintf("udp driver %d", i), streams: make([]*ustream, 65536)})
	}
	g.drivers, err = dialDrivers(ctx, nDrivers, func(i int) DriverDialOpts {
		return DriverDialOpts{Addr: srv.Addr, UDP: true, Port: port, Accept: "127.0.0.1", Secret: cfg.Secret, BigBufs: true, Manual: true}
	}, func(i int) msgHandler { return g.hs[i] })
	if err != nil {
		loop.stop()
		return err
	}
	defer closeDrivers(g.drivers)
	defer loop.stop()
	for _, d := range g.drivers {
		loop.add(hotDriver{d})
	}
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}
	for i := 0; i < nSrc; i++ {
		c, err := net.DialUDP("udp", nil, dst)
		if err != nil {
			return err
		}
		defer c.Close()
		fd, err := connFd(c)
		if err != nil {
			return err
		}
		g.srcs = append(g.srcs, &udpSrc{idx: i, conn: c, fd: fd, port: c.LocalAddr().(*net.UDPAddr).Port})
	}
	drops0 := udpRcvbufErrors()
	st := &stepper{sc: s, g: g, dur: cfg.StepDur, drainMax: cfg.DrainMax}
	steps, best, err := st.searchPeak(ctx, cfg.RateStart, cfg.RateMax, cfg.Refine)
	s.res.Steps = steps
	if err != nil {
		return err
	}
	drops := udpRcvbufErrors() - drops0
	best = fallbackPeak(s, steps, best)
	s.metric("peak_offered_rate", "peak: datagrams/s sent by sources", best.OfferedRate, "dgram/s")
	s.metric("peak_delivered", "peak: datagrams/s delivered (sum over drivers)", best.DeliveredRate, "dgram/s")
	s.metric("peak_server_cpu_pct", "peak: server CPU (% of one core)", best.ServerCPUPct, "%")
	s.metric("peak_server_us_per_frame", "peak: server CPU per delivered frame", best.ServerUsPerFrm, "µs/frame")
	s.metric("peak_harness_cpu_pct", "peak: harness CPU (% of one core)", best.HarnessCPUPct, "%")
	s.metric("peak_server_core_busy", "peak: server core busy (/proc/stat, incl. softirq)", best.ServerCoreBusy, "%")
	s.metric("peak_harness_core_busy", "peak: harness core busy (/proc/stat, incl. softirq)", best.HarnessCoreBusy, "%")
	saturationNote(s, steps, best)
	lat, err := st.runStep(ctx, best.OfferedRate/2, cfg.LatencyDur, "lat@50%")
	if err != nil {
		return err
	}
	s.res.Steps = append(s.res.Steps, lat)
	s.metric("lat_p50_us", "latency p50 at 50% of peak (sendto → driver read)", lat.P50us, "µs")
	s.metric("lat_p99_us", "latency p99", lat.P99us, "µs")
	s.metric("lat_p999_us", "latency p99.9", lat.P999us, "µs")
	if cfg.ProfileDir != "" {
		profileStep(ctx, s, st, best.OfferedRate)
	}
	if err := g.asyncErr(); err != nil {
		return err
	}
	var lostTotal int64
	for _, h := range g.hs {
		var got uint64
		h.hs.mu.Lock()
		for _, src := range g.srcs {
			if us := h.streams[src.port]; us != nil {
				got += us.got
			}
		}
		h.hs.mu.Unlock()
		lostTotal += g.sentTotal() - int64(got)
	}
	s.metric("lost_total", "datagrams lost over the whole run (all steps, sum over drivers)", float64(lostTotal), "dgram")
	s.note("UDP Rcvbuf drops counted by the kernel during the search (all UDP sockets): %d", drops)
	s.note("correctness: every datagram arrived whole and uncorrupted; per source, never reordered or duplicated; loss is reported, not failed (UDP)")
	s.note("peak = highest step with offered ≥97%% of target and loss ≤0.1%%")
	return nil
}
