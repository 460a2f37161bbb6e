package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Series read from /metrics before and after each window. The floor exports
// the same names.
const (
	seriesFramesOut = `dispatch_driver_messages_total{direction="out"}`
	seriesWrites    = `dispatch_driver_writes_total`
	seriesPasses    = `dispatch_loop_passes_total`
)

// everydayTarget is one of the two processes the everyday load is offered
// to: bin/dispatch or the floor.
type everydayTarget struct {
	name      string // "server" or "floor"
	short     string // step label
	proc      *Server
	metrics   string // host:port serving /metrics
	g         *tcpIngest
	step      uint8
	scrapeErr error
	noPasses  bool // /metrics answered without dispatch_loop_passes_total
}

// failure is what ended a window: a receiver's finding first (a write error
// is its consequence), then err, then the process's death.
func (t *everydayTarget) failure(err error) error {
	if aerr := t.g.asyncErr(); aerr != nil {
		return aerr
	}
	if err != nil {
		return err
	}
	if e := t.proc.ExitError(); e != "" {
		return errors.New(e)
	}
	return nil
}

func runEveryday(ctx context.Context, s *scenario) error {
	cfg := s.cfg
	nDev, nDrv := cfg.EverydayDevices, cfg.EverydayDrivers
	s.res.Params["devices"] = nDev
	s.res.Params["drivers"] = nDrv
	s.res.Params["record_bytes"] = RecordSize
	s.res.Params["records_per_second_per_device"] = cfg.EverydayRates
	s.res.Params["warmup_seconds"] = cfg.EverydayWarmup.Seconds()
	s.res.Params["window_seconds"] = cfg.EverydayDur.Seconds()
	s.metrics = true
	srv, err := s.startServer(ctx)
	if err != nil {
		return err
	}
	floor, err := StartServer(ctx, ServerOpts{Bin: cfg.FloorBin, CPU: cfg.ServerCPU, Secret: cfg.Secret, LogLevel: cfg.LogLevel})
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	s.note("floor: `%s` (CPUs %s)", floor.Cmdline, floor.Affinity())
	defer func() {
		alive := floor.Alive()
		d, clean := floor.Stop()
		switch {
		case !alive:
			s.note("floor: %s", floor.ExitError())
		case !clean:
			s.note("floor: no clean exit 0 within 5s of SIGTERM (took %v)", d.Round(time.Millisecond))
		}
	}()
	loop, err := newHotLoop()
	if err != nil {
		return err
	}
	targets := []*everydayTarget{
		{name: "server", short: "srv", proc: srv, metrics: srv.MetricsAddr, g: &tcpIngest{loop: loop}},
		{name: "floor", short: "floor", proc: floor, metrics: floor.Addr, g: &tcpIngest{loop: loop}},
	}
	defer func() {
		loop.stop()
		for _, t := range targets {
			t.g.close()
		}
	}()
	for _, t := range targets {
		addr := t.proc.Addr
		if err := t.g.connect(ctx, func(int) string { return addr }, cfg.Secret, nDrv, nDev, nil); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
	}
	// Server and floor alternate, rate by rate, so that a drift of the
	// machine shows in both.
	for _, perDev := range cfg.EverydayRates {
		rate := float64(perDev * nDev)
		win := make([]Step, len(targets))
		for i, t := range targets {
			label := fmt.Sprintf("%s@%d", t.short, perDev)
			st, err := s.retryNoisy(ctx, func() (Step, error) { return s.everydayWindow(ctx, t, targets, rate, label) })
			if err != nil {
				return fmt.Errorf("%s at %d records/s per device: %w", t.name, perDev, err)
			}
			s.res.Steps = append(s.res.Steps, st)
			if !st.OK {
				s.note("%s at %d records/s per device: %s", t.name, perDev, st.Why)
			}
			win[i] = st
		}
		everydayMetrics(s, perDev, targets, win)
	}
	for _, t := range targets {
		g := t.g
		want := g.sentTotal() * int64(g.fanout())
		if !waitFor(ctx, 10*time.Second, func() bool {
			d, _ := g.deliveredTotal()
			return d >= want || g.asyncErr() != nil
		}) {
			d, _ := g.deliveredTotal()
			return fmt.Errorf("%s: after the run %d of %d records never arrived at the drivers (LOST)", t.name, want-d, want)
		}
		if err := g.asyncErr(); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if err := g.finalCheck(); err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		if t.scrapeErr != nil {
			s.note("%s: /metrics could not be read (%v): frames per write and passes/s are n/a", t.name, t.scrapeErr)
		} else if t.noPasses {
			s.note("%s: passes/s n/a: its /metrics has no %s", t.name, seriesPasses)
		}
	}
	s.note("correctness: server %d, floor %d records per driver, every one verified in order per device at each of the %d drivers, no loss",
		targets[0].g.sentTotal(), targets[1].g.sentTotal(), nDrv)
	s.note("each rate: %v warm-up (not measured), then a %v steady window, on bin/dispatch and then on the floor; %d devices write one %d-byte record per write(2), round-robin, paced every %v; both processes pinned to the server CPU",
		cfg.EverydayWarmup, cfg.EverydayDur, nDev, RecordSize, hotTick)
	s.note("CPU per delivery = utime+stime of the measured process over the steady window ÷ records delivered to the drivers in it (sum over drivers); ratio = server ÷ floor. The floor (bench/cmd/fanoutfloor) is a bare epoll fan-out on raw system calls: one read per ready device, one writev per driver per pass, the same bytes on the wire")
	s.note("frames per driver write and passes/s come from /metrics (%s, %s, %s) read before and after the window; bin/dispatch publishes its counters once a second, so only ratios of their deltas are used: frames/write = Δframes ÷ Δwrites, passes/s = Δpasses ÷ Δframes × frames/s measured at the drivers",
		seriesFramesOut, seriesWrites, seriesPasses)
	return nil
}

// everydayWindow offers rate to one target for a warm-up and then for the
// steady window, which alone is measured.
func (s *scenario) everydayWindow(ctx context.Context, t *everydayTarget, all []*everydayTarget, rate float64, label string) (Step, error) {
	cfg := s.cfg
	g := t.g
	fan := int64(g.fanout())
	t.step++
	warm := t.step
	if _, err := g.run(ctx, rate, cfg.EverydayWarmup, warm); err != nil {
		return Step{}, t.failure(err)
	}
	if err := t.failure(nil); err != nil {
		return Step{}, err
	}
	t.step++
	id := t.step
	m0, err0 := scrapeCounters(t.metrics)
	cpuAll := func() (mine, sum time.Duration) {
		for _, x := range all {
			c := x.proc.CPU()
			sum += c
			if x == t {
				mine = c
			}
		}
		return mine, sum
	}
	d0, f0 := g.deliveredTotal()
	p0, all0 := cpuAll()
	h0, c0 := selfCPU(), readCPUSample()
	t0 := time.Now()
	sent, err := g.run(ctx, rate, cfg.EverydayDur, id)
	el := time.Since(t0)
	d1, f1 := g.deliveredTotal()
	p1, all1 := cpuAll()
	h1, c1 := selfCPU(), readCPUSample()
	if err := t.failure(err); err != nil {
		return Step{}, err
	}
	m1, err1 := scrapeCounters(t.metrics)
	exp := g.sentTotal() * fan
	td := time.Now()
	drained := waitFor(ctx, cfg.DrainMax, func() bool {
		d, _ := g.deliveredTotal()
		return d >= exp || g.asyncErr() != nil
	})
	if err := t.failure(nil); err != nil {
		return Step{}, err
	}
	g.takeHist(warm) // warm-up latencies are not reported
	hist := g.takeHist(id)

	secs := el.Seconds()
	st := Step{TargetRate: rate, Seconds: secs, Purpose: label}
	st.OfferedRate = float64(sent) / secs
	st.DeliveredRate = float64(d1-d0) / secs
	st.FrameRate = float64(f1-f0) / secs
	if sent > 0 {
		st.DeliveredRatio = float64(d1-d0) / float64(sent*fan)
	}
	st.BacklogAtEnd = exp - d1
	if st.BacklogAtEnd > 0 {
		st.DrainMs = float64(time.Since(td).Microseconds()) / 1e3
	}
	cpu := p1 - p0
	st.ServerCPUPct = 100 * cpu.Seconds() / secs
	st.HarnessCPUPct = 100 * (h1 - h0).Seconds() / secs
	st.ServerCoreBusy = busyPct(c0, c1, cfg.ServerCPU)
	st.HarnessCoreBusy = busyPct(c0, c1, cfg.HarnessCPU)
	st.OtherCPUPct = otherPct(c0, c1, (all1-all0)+(h1-h0), el)
	st.StealPct = max(stealPct(c0, c1, cfg.ServerCPU), stealPct(c0, c1, cfg.HarnessCPU))
	if st.ServerCoreBusy >= 0 && st.HarnessCoreBusy >= 0 {
		pinned := 100 * (all1 - all0).Seconds() / secs // both processes share the server CPU
		st.UnexplainedPct = max(0, st.ServerCoreBusy-pinned, st.HarnessCoreBusy-st.HarnessCPUPct)
	}
	if f1 > f0 {
		st.ServerUsPerFrm = cpu.Seconds() * 1e6 / float64(f1-f0)
	}
	if d1 > d0 {
		st.ServerUsPerItem = cpu.Seconds() * 1e6 / float64(d1-d0)
	}
	if hist.TotalCount() > 0 {
		st.P50us, st.P99us, st.P999us = quantUs(hist, 50), quantUs(hist, 99), quantUs(hist, 99.9)
		st.MaxUs = float64(hist.Max()) / 1e3
		st.Samples = hist.TotalCount()
	}
	if err := errors.Join(err0, err1); err != nil {
		t.scrapeErr = err
	} else {
		frames := m1[seriesFramesOut] - m0[seriesFramesOut]
		if w := m1[seriesWrites] - m0[seriesWrites]; w > 0 {
			v := frames / w
			st.FramesPerWrite = &v
		}
		pa0, ok0 := m0[seriesPasses]
		pa1, ok1 := m1[seriesPasses]
		t.noPasses = !ok0 || !ok1
		if !t.noPasses && frames > 0 {
			v := (pa1 - pa0) / frames * st.FrameRate
			st.PassesPerSec = &v
		}
	}

	var why []string
	if st.OfferedRate < 0.97*rate {
		why = append(why, fmt.Sprintf("harness offered only %.0f%% of the target (harness core %.0f%% busy)", 100*st.OfferedRate/rate, st.HarnessCoreBusy))
	}
	if st.DeliveredRatio < 0.95 {
		why = append(why, fmt.Sprintf("delivered %.0f%% of offered during the window", 100*st.DeliveredRatio))
	}
	if !drained {
		why = append(why, fmt.Sprintf("backlog not drained within %v", cfg.DrainMax))
	}
	st.OK = len(why) == 0
	st.Why = strings.Join(why, "; ")
	s.logf("  %-9s offered %7.0f/s delivered %7.0f/s CPU %5.1f%% (core %3.0f%%) %5.2f µs/delivery, %s frames/write, %s passes/s; harness %5.1f%% (core %3.0f%%) other %3.0f%%; p50 %5.0fµs p99 %6.0fµs p99.9 %6.0fµs %s %s",
		label, st.OfferedRate, st.DeliveredRate, st.ServerCPUPct, st.ServerCoreBusy, st.ServerUsPerItem, fmtPtr(st.FramesPerWrite, "%.2f"), fmtPtr(st.PassesPerSec, "%.0f"),
		st.HarnessCPUPct, st.HarnessCoreBusy, st.OtherCPUPct, st.P50us, st.P99us, st.P999us, okStr(st.OK), st.Why)
	return st, nil
}

func fmtPtr(v *float64, format string) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf(format, *v)
}

func orNaN(v *float64) float64 {
	if v == nil {
		return math.NaN()
	}
	return *v
}

// everydayMetrics adds one rate's headline figures, server and floor side by side.
func everydayMetrics(s *scenario, perDev int, targets []*everydayTarget, win []Step) {
	k := fmt.Sprintf("r%d_", perDev)
	l := fmt.Sprintf("%d/s per device: ", perDev)
	each := func(key, label string, unit string, v func(st *Step) float64) {
		for i, t := range targets {
			s.metric(k+t.name+"_"+key, l+t.name+" "+label, v(&win[i]), unit)
		}
	}
	s.metric(k+"offered", l+"records/s offered (server window)", win[0].OfferedRate, "rec/s")
	s.metric(k+"server_deliveries", l+"server deliveries/s (sum over drivers)", win[0].DeliveredRate, "deliveries/s")
	each("us_per_delivery", "CPU per delivery", "µs/delivery", func(st *Step) float64 { return st.ServerUsPerItem })
	ratio := math.NaN()
	if win[1].ServerUsPerItem > 0 {
		ratio = win[0].ServerUsPerItem / win[1].ServerUsPerItem
	}
	s.metric(k+"ratio_to_floor", l+"server CPU per delivery ÷ floor's", ratio, "ratio")
	each("cpu_pct", "CPU (% of one core)", "%", func(st *Step) float64 { return st.ServerCPUPct })
	each("core_busy", "core busy (/proc/stat, incl. softirq)", "%", func(st *Step) float64 { return st.ServerCoreBusy })
	each("frames_per_write", "frames per driver write", "frames/write", func(st *Step) float64 { return orNaN(st.FramesPerWrite) })
	each("passes", "loop passes/s", "passes/s", func(st *Step) float64 { return orNaN(st.PassesPerSec) })
	each("p50_us", "latency p50 (device write → driver read)", "µs", func(st *Step) float64 { return st.P50us })
	each("p99_us", "latency p99", "µs", func(st *Step) float64 { return st.P99us })
	each("p999_us", "latency p99.9", "µs", func(st *Step) float64 { return st.P999us })
}

// scrapeCounters reads a Prometheus text page into series → value, the
// series named as exposed (with labels).
func scrapeCounters(addr string) (map[string]float64, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: HTTP %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}
