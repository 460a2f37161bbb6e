package harness

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// loadGen is a paced load: items (records, datagrams, WRITEs) sent by the
// harness and delivered by the server to `fanout` receivers each.
type loadGen interface {
	// run offers rate items/s for dur, tagging records with step.
	run(ctx context.Context, rate float64, dur time.Duration, step uint8) (int64, error)
	sentTotal() int64
	fanout() int
	// deliveredTotal: items verified at the receivers (sum over receivers),
	// and protocol frames that carried them.
	deliveredTotal() (items, frames int64)
	lossy() bool // UDP: missing items are loss, not backlog
	takeHist(step uint8) *hdrhistogram.Histogram
	// asyncErr reports a failure seen by a receiver (corruption, dead driver).
	asyncErr() error
}

// Step is one bounded measurement at a fixed offered rate.
type Step struct {
	TargetRate      float64 `json:"target_rate"`
	Seconds         float64 `json:"seconds"`
	OfferedRate     float64 `json:"offered_rate"`
	DeliveredRate   float64 `json:"delivered_rate"`  // items/s summed over receivers, during the window
	FrameRate       float64 `json:"frame_rate"`      // protocol frames/s summed over receivers
	DeliveredRatio  float64 `json:"delivered_ratio"` // window deliveries / (offered × fanout)
	BacklogAtEnd    int64   `json:"backlog_at_end"`  // deliveries outstanding when the window closed
	DrainMs         float64 `json:"drain_ms"`        // time to deliver that backlog
	Lost            int64   `json:"lost,omitempty"`  // UDP: never delivered
	LossFraction    float64 `json:"loss_fraction,omitempty"`
	ServerCPUPct    float64 `json:"server_cpu_pct"`          // % of one core
	HarnessCPUPct   float64 `json:"harness_cpu_pct"`         // % of one core
	ServerCoreBusy  float64 `json:"server_core_busy_pct"`    // whole core from /proc/stat incl. softirq; -1 if unpinned
	HarnessCoreBusy float64 `json:"harness_core_busy_pct"`   // idem for the harness core
	OtherCPUPct     float64 `json:"other_processes_cpu_pct"` // CPU used by other processes: >10 means the machine was not quiet
	StealPct        float64 `json:"steal_pct"`               // hypervisor steal on the two pinned cores (max of the two)
	UnexplainedPct  float64 `json:"unexplained_core_pct"`    // max over the two cores of core busy − its process's CPU (softirq, or something unseen)
	ServerUsPerFrm  float64 `json:"server_cpu_us_per_frame"`
	ServerUsPerItem float64 `json:"server_cpu_us_per_item"`
	P50us           float64 `json:"lat_p50_us"`
	P99us           float64 `json:"lat_p99_us"`
	P999us          float64 `json:"lat_p999_us"`
	MaxUs           float64 `json:"lat_max_us"`
	Samples         int64   `json:"lat_samples"`
	// Everyday scenario only: from the measured process's /metrics; nil
	// when it does not export the counters.
	FramesPerWrite *float64 `json:"frames_per_driver_write,omitempty"`
	PassesPerSec   *float64 `json:"passes_per_second,omitempty"`
	OK             bool     `json:"ok"`
	Why            string   `json:"why,omitempty"`
	Purpose        string   `json:"purpose,omitempty"`
}

type stepper struct {
	sc       *scenario
	g        loadGen
	dur      time.Duration
	drainMax time.Duration
	step     uint8
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, 120e9, 3) }

func quantUs(h *hdrhistogram.Histogram, q float64) float64 {
	return float64(h.ValueAtQuantile(q)) / 1e3
}

// runStep measures one step.
func (s *stepper) runStep(ctx context.Context, rate float64, dur time.Duration, purpose string) (Step, error) {
	return s.sc.retryNoisy(ctx, func() (Step, error) { return s.measureStep(ctx, rate, dur, purpose) })
}

// retryNoisy runs measure. With -wait-quiet, a measurement during which
// other processes used more than 10 % of a core is discarded and repeated
// (twice at most) once the machine is quiet again.
func (sc *scenario) retryNoisy(ctx context.Context, measure func() (Step, error)) (Step, error) {
	for try := 0; ; try++ {
		st, err := measure()
		noisy := st.OtherCPUPct > 10 || st.UnexplainedPct > 20
		if err != nil || !noisy || sc.cfg.WaitQuiet <= 0 || try >= 2 || ctx.Err() != nil {
			if st.OtherCPUPct > sc.maxOther {
				sc.maxOther = st.OtherCPUPct
			}
			return st, err
		}
		sc.logf("  step disturbed (other processes %.0f%% of a core, unexplained core time %.0f%%): repeating it when the machine is quiet", st.OtherCPUPct, st.UnexplainedPct)
		sc.res.Retried++
		waitQuiet(ctx, sc.cfg)
	}
}

// measureStep offers rate for dur, then drains and measures.
func (s *stepper) measureStep(ctx context.Context, rate float64, dur time.Duration, purpose string) (Step, error) {
	g := s.g
	s.step++
	id := s.step
	fan := int64(g.fanout())
	d0, f0 := g.deliveredTotal()
	exp0 := g.sentTotal() * fan
	miss0 := exp0 - d0
	srv0, h0, c0 := s.sc.serverCPU(), selfCPU(), readCPUSample()
	t0 := time.Now()
	sent, err := g.run(ctx, rate, dur, id)
	el := time.Since(t0)
	d1, f1 := g.deliveredTotal()
	srv1, h1, c1 := s.sc.serverCPU(), selfCPU(), readCPUSample()
	if aerr := g.asyncErr(); aerr != nil {
		err = aerr // the receivers' finding is the cause; a write error is its consequence
	}
	if err != nil {
		return Step{}, err
	}
	if e := s.sc.serverExitError(); e != "" {
		return Step{}, fmt.Errorf("%s", e)
	}
	exp := g.sentTotal() * fan
	st := Step{TargetRate: rate, Seconds: el.Seconds(), Purpose: purpose}
	st.OfferedRate = float64(sent) / el.Seconds()
	st.DeliveredRate = float64(d1-d0) / el.Seconds()
	st.FrameRate = float64(f1-f0) / el.Seconds()
	if sent > 0 {
		st.DeliveredRatio = float64(d1-d0) / float64(sent*fan)
	}
	st.BacklogAtEnd = exp - d1
	if g.lossy() {
		st.BacklogAtEnd -= miss0 // earlier losses are not backlog
	}
	st.ServerCPUPct = 100 * (srv1 - srv0).Seconds() / el.Seconds()
	st.HarnessCPUPct = 100 * (h1 - h0).Seconds() / el.Seconds()
	st.ServerCoreBusy = busyPct(c0, c1, s.sc.cfg.ServerCPU)
	st.HarnessCoreBusy = busyPct(c0, c1, s.sc.cfg.HarnessCPU)
	st.OtherCPUPct = otherPct(c0, c1, (srv1-srv0)+(h1-h0), el)
	st.StealPct = max(stealPct(c0, c1, s.sc.cfg.ServerCPU), stealPct(c0, c1, s.sc.cfg.HarnessCPU))
	if st.ServerCoreBusy >= 0 && st.HarnessCoreBusy >= 0 {
		st.UnexplainedPct = max(0, st.ServerCoreBusy-st.ServerCPUPct, st.HarnessCoreBusy-st.HarnessCPUPct)
	}
	if f1 > f0 {
		st.ServerUsPerFrm = (srv1 - srv0).Seconds() * 1e6 / float64(f1-f0)
	}
	if d1 > d0 {
		st.ServerUsPerItem = (srv1 - srv0).Seconds() * 1e6 / float64(d1-d0)
	}
	// drain
	td := time.Now()
	last, lastChange := d1, td
	drained := true
	for {
		d, _ := g.deliveredTotal()
		if d >= exp {
			break
		}
		if err := g.asyncErr(); err != nil {
			return st, err
		}
		if d != last {
			last, lastChange = d, time.Now()
		}
		if g.lossy() && time.Since(lastChange) > 300*time.Millisecond {
			break
		}
		if time.Since(td) > s.drainMax || ctx.Err() != nil {
			drained = false
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st.BacklogAtEnd > 0 {
		st.DrainMs = float64(time.Since(td).Microseconds()) / 1e3
	}
	dEnd, _ := g.deliveredTotal()
	if g.lossy() {
		st.Lost = (exp - dEnd) - miss0
		if sent > 0 {
			st.LossFraction = float64(st.Lost) / float64(sent*fan)
		}
	}
	if h := g.takeHist(id); h != nil && h.TotalCount() > 0 {
		st.P50us, st.P99us, st.P999us = quantUs(h, 50), quantUs(h, 99), quantUs(h, 99.9)
		st.MaxUs = float64(h.Max()) / 1e3
		st.Samples = h.TotalCount()
	}
	offeredFrac := st.OfferedRate / rate
	var why []string
	if offeredFrac < 0.97 && rate*el.Seconds()-float64(sent) > 5 {
		why = append(why, fmt.Sprintf("harness offered only %.0f%% of the target (harness core %.0f%% busy, server core %.0f%%)", 100*offeredFrac, st.HarnessCoreBusy, st.ServerCoreBusy))
	}
	if !g.lossy() {
		if st.DeliveredRatio < 0.95 {
			why = append(why, fmt.Sprintf("delivered %.0f%% of offered during the window", 100*st.DeliveredRatio))
		}
		if float64(st.BacklogAtEnd) > math.Max(0.05*float64(sent*fan), 50) {
			why = append(why, fmt.Sprintf("backlog %d at end of window (%.0f ms to drain)", st.BacklogAtEnd, st.DrainMs))
		}
	} else if st.LossFraction > 0.001 {
		why = append(why, fmt.Sprintf("lost %.2f%% of datagrams", 100*st.LossFraction))
	}
	if !drained {
		why = append(why, fmt.Sprintf("backlog not drained within %v", s.drainMax))
	}
	st.OK = len(why) == 0
	for i, w := range why {
		if i > 0 {
			st.Why += "; "
		}
		st.Why += w
	}
	s.sc.logf("  step %-8s rate %8.0f/s offered %8.0f/s delivered %8.0f/s frames %8.0f/s srv %5.1f%% (core %3.0f%%) harness %5.1f%% (core %3.0f%%) other %3.0f%% steal %2.0f%% p50 %6.0fµs p99 %7.0fµs %s %s",
		purpose, rate, st.OfferedRate, st.DeliveredRate, st.FrameRate, st.ServerCPUPct, st.ServerCoreBusy, st.HarnessCPUPct, st.HarnessCoreBusy, st.OtherCPUPct, st.StealPct, st.P50us, st.P99us, okStr(st.OK), st.Why)
	if !drained {
		// give it more time so the next step starts clean
		tw := time.Now()
		for time.Since(tw) < 4*s.drainMax && ctx.Err() == nil {
			d, _ := g.deliveredTotal()
			if d >= exp || g.asyncErr() != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return st, nil
}

func okStr(ok bool) string {
	if ok {
		return "ok"
	}
	return "OVER"
}

// backlogged reports whether deliveries are still outstanding (TCP only).
func (s *stepper) backlogged() bool {
	if s.g.lossy() {
		return false
	}
	d, _ := s.g.deliveredTotal()
	return d < s.g.sentTotal()*int64(s.g.fanout())
}

// searchPeak steps the rate up (×2) until a step fails, then bisects.
func (s *stepper) searchPeak(ctx context.Context, start, maxRate float64, refine int) (steps []Step, best *Step, err error) {
	rate := start
	bad := 0.0
	for rate <= maxRate {
		st, err := s.runStep(ctx, rate, s.dur, "search")
		if err != nil {
			return steps, best, err
		}
		steps = append(steps, st)
		if !st.OK {
			bad = rate
			break
		}
		b := st
		best = &b
		rate *= 2
	}
	if best == nil {
		// even the start rate failed: step down
		for i := 0; i < 3 && best == nil && !s.backlogged(); i++ {
			rate = rate / 4
			st, err := s.runStep(ctx, rate, s.dur, "search")
			if err != nil {
				return steps, best, err
			}
			steps = append(steps, st)
			if st.OK {
				b := st
				best = &b
			} else {
				bad = rate
			}
		}
	}
	for i := 0; i < refine && best != nil && bad > 0 && bad/best.TargetRate > 1.12 && !s.backlogged(); i++ {
		mid := (best.TargetRate + bad) / 2
		st, err := s.runStep(ctx, mid, s.dur, "refine")
		if err != nil {
			return steps, best, err
		}
		steps = append(steps, st)
		if st.OK {
			b := st
			best = &b
		} else {
			bad = mid
		}
	}
	return steps, best, nil
}

// histSet is a mutex-guarded map of per-step latency histograms.
type histSet struct {
	mu    sync.Mutex
	m     map[uint8]*hdrhistogram.Histogram
	lastS int
	lastH *hdrhistogram.Histogram
}

// record must be called with mu held.
func (h *histSet) record(step uint8, ns int64) {
	if int(step) != h.lastS || h.lastH == nil {
		if h.m == nil {
			h.m = map[uint8]*hdrhistogram.Histogram{}
		}
		hh := h.m[step]
		if hh == nil {
			hh = newHist()
			h.m[step] = hh
		}
		h.lastS, h.lastH = int(step), hh
	}
	if ns < 1 {
		ns = 1
	}
	h.lastH.RecordValue(ns)
}

func (h *histSet) take(step uint8, into *hdrhistogram.Histogram) {
	h.mu.Lock()
	if hh := h.m[step]; hh != nil {
		into.Merge(hh)
		delete(h.m, step)
		if h.lastS == int(step) {
			h.lastH = nil
		}
	}
	h.mu.Unlock()
}

// fallbackPeak: when no step met the criteria (an overloaded or busy
// machine), report the step that delivered most, and say so.
func fallbackPeak(s *scenario, steps []Step, best *Step) *Step {
	if best != nil {
		return best
	}
	b := steps[0]
	for _, st := range steps[1:] {
		if st.DeliveredRate > b.DeliveredRate {
			b = st
		}
	}
	s.note("NO CLEAN PEAK: no step met the criteria; the peak figures are from the step that delivered most (target %.0f/s): %s", b.TargetRate, b.Why)
	return &b
}
