package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// Config is one harness run. Suites fill it; flags override single fields.
type Config struct {
	Suite      string        `json:"suite"`
	Scenarios  []string      `json:"scenarios"`
	ServerBin  string        `json:"server_bin"`
	ServerCPU  int           `json:"server_cpu"`  // -1: not pinned
	HarnessCPU int           `json:"harness_cpu"` // -1: not pinned
	Secret     string        `json:"-"`
	LogLevel   string        `json:"server_log_level"`
	ServerArgs []string      `json:"server_args"`
	ServerEnv  []string      `json:"server_env,omitempty"`
	Repeat     int           `json:"repeat"`
	ProfileDir string        `json:"profile_dir,omitempty"`
	ProfileDur time.Duration `json:"profile_duration"`
	WaitQuiet  time.Duration `json:"wait_quiet,omitempty"` // before each scenario, wait up to this long for an idle machine

	StepDur    time.Duration `json:"step_duration"`
	DrainMax   time.Duration `json:"drain_max"`
	LatencyDur time.Duration `json:"latency_duration"`
	Refine     int           `json:"refine_steps"`
	RateStart  float64       `json:"rate_start"`
	RateMax    float64       `json:"rate_max"`

	FanoutDrivers int `json:"fanout_drivers"`
	FanoutDevices int `json:"fanout_devices"`
	IngestDevices int `json:"ingest_devices"`

	UDPSources int `json:"udp_sources"`
	UDPDrivers int `json:"udp_drivers"`

	WriteDevices int `json:"write_devices"`

	BulkDur   time.Duration `json:"bulk_duration"`
	BulkReps  int           `json:"bulk_reps"`
	BulkChunk int           `json:"bulk_chunk"`

	IdleDevices []int `json:"idle_devices"`
	IdleDrivers int   `json:"idle_drivers"`

	ChurnConc []int         `json:"churn_concurrency"`
	ChurnDur  time.Duration `json:"churn_duration"`

	TopicSubscribers   []int         `json:"topic_subscribers"`
	TopicDeliveryStart float64       `json:"topic_delivery_start"` // first step, in deliveries/s
	TopicBatch         int           `json:"topic_batch"`          // messages per publisher write(2)
	RoomsClients       []int         `json:"rooms_broadcast_clients"`
	RoomsIngestClients int           `json:"rooms_ingest_clients"`
	EverydayDevices    int           `json:"everyday_devices"`
	EverydayDrivers    int           `json:"everyday_drivers"`
	EverydayRates      []int         `json:"everyday_rates"` // records/s per device, one measurement each
	EverydayWarmup     time.Duration `json:"everyday_warmup"`
	EverydayDur        time.Duration `json:"everyday_duration"` // the steady window
	FloorBin           string        `json:"floor_bin"`

	Logf func(format string, args ...any) `json:"-"`
}

// AllScenarios in suite order.
var AllScenarios = []string{"fanout", "ingest", "udp", "write", "bulk", "idle", "churn", "topic", "rooms", "cluster", "everyday"}

// SuiteConfig returns the preset for "quick" or "standard".
func SuiteConfig(name string) (Config, error) {
	c := Config{
		Suite:      name,
		Scenarios:  AllScenarios,
		ServerBin:  "bin/dispatch",
		FloorBin:   "bin/fanoutfloor",
		ServerCPU:  0,
		HarnessCPU: 1,
		Secret:     "bench-secret-0123456789",
		LogLevel:   "info",
		Repeat:     1,
		ProfileDur: 5 * time.Second,
		Logf:       func(string, ...any) {},
	}
	switch name {
	case "standard":
		c.StepDur = 2 * time.Second
		c.DrainMax = 2 * time.Second
		c.LatencyDur = 3 * time.Second
		c.Refine = 3
		c.RateStart = 20000
		c.RateMax = 5e6
		c.FanoutDrivers = 4
		c.FanoutDevices = 1000
		c.IngestDevices = 2000
		c.UDPSources = 200
		c.UDPDrivers = 4
		c.WriteDevices = 1000
		c.BulkDur = 2 * time.Second
		c.BulkReps = 3
		c.BulkChunk = 64 << 10
		c.IdleDevices = []int{10000, 50000}
		c.IdleDrivers = 1000
		c.ChurnConc = []int{1, 8, 32}
		c.ChurnDur = 3 * time.Second
		c.TopicSubscribers = []int{100, 1000}
		c.TopicDeliveryStart = 100000
		c.TopicBatch = 1
		c.RoomsClients = []int{100, 1000}
		c.RoomsIngestClients = 1000
		c.EverydayDevices = 200
		c.EverydayDrivers = 4
		c.EverydayRates = []int{125, 250}
		c.EverydayWarmup = 2 * time.Second
		c.EverydayDur = 6 * time.Second
	case "quick":
		c.StepDur = 300 * time.Millisecond
		c.DrainMax = time.Second
		c.LatencyDur = 300 * time.Millisecond
		c.Refine = 0
		c.RateStart = 2000
		c.RateMax = 8000
		c.FanoutDrivers = 2
		c.FanoutDevices = 50
		c.IngestDevices = 100
		c.UDPSources = 10
		c.UDPDrivers = 2
		c.WriteDevices = 50
		c.BulkDur = 300 * time.Millisecond
		c.BulkReps = 1
		c.BulkChunk = 64 << 10
		c.IdleDevices = []int{200, 500}
		c.IdleDrivers = 20
		c.ChurnConc = []int{4}
		c.ChurnDur = 500 * time.Millisecond
		c.TopicSubscribers = []int{10, 50}
		c.TopicDeliveryStart = 2000
		c.TopicBatch = 1
		c.RoomsClients = []int{10, 50}
		c.RoomsIngestClients = 50
		c.EverydayDevices = 20
		c.EverydayDrivers = 2
		c.EverydayRates = []int{50, 100}
		c.EverydayWarmup = 200 * time.Millisecond
		c.EverydayDur = 500 * time.Millisecond
	default:
		return c, fmt.Errorf("unknown suite %q (quick, standard)", name)
	}
	return c, nil
}

// scenario is the context one scenario runs in.
type scenario struct {
	cfg      *Config
	srv      *Server
	others   []*Server // more replicas of a cluster, beside srv
	res      *ScenarioResult
	maxOther float64 // highest CPU share of other processes seen in a step
	metrics  bool    // start the server with its --metrics listener
}

func (s *scenario) logf(format string, args ...any) { s.cfg.Logf(format, args...) }

func (s *scenario) note(format string, args ...any) {
	s.res.Notes = append(s.res.Notes, fmt.Sprintf(format, args...))
}

func (s *scenario) metric(key, label string, v float64, unit string) {
	s.res.Metrics = append(s.res.Metrics, Metric{Key: key, Label: label, Value: v, Unit: unit})
}

// startServer starts a fresh server with large bounds.
func (s *scenario) startServer(ctx context.Context, extra ...string) (*Server, error) {
	args := []string{
		"--max-conns", "1000000",
		"--max-port-conns", "1000000",
		"--max-driver-pending", "1073741824",
	}
	args = append(args, extra...)
	args = append(args, s.cfg.ServerArgs...)
	srv, err := StartServer(ctx, ServerOpts{
		Bin: s.cfg.ServerBin, CPU: s.cfg.ServerCPU, Secret: s.cfg.Secret,
		LogLevel: s.cfg.LogLevel, Args: args, Env: s.cfg.ServerEnv, Metrics: s.cfg.ProfileDir != "" || s.metrics,
	})
	if err != nil {
		return nil, err
	}
	s.srv = srv
	if s.res.Server == nil {
		s.res.Server = &ServerInfo{Cmdline: srv.Cmdline, Affinity: srv.Affinity(), Nofile: procNofile(srv.Pid)}
	}
	return srv, nil
}

// serverCPU is the CPU time of every server of the scenario.
func (s *scenario) serverCPU() time.Duration {
	t := s.srv.CPU()
	for _, o := range s.others {
		t += o.CPU()
	}
	return t
}

// serverExitError says why a server of the scenario exited, or "".
func (s *scenario) serverExitError() string {
	for _, o := range append([]*Server{s.srv}, s.others...) {
		if e := o.ExitError(); e != "" {
			return e
		}
	}
	return ""
}

// stopServer stops it and records shutdown and log facts.
func (s *scenario) stopServer() {
	others := s.others
	s.others = nil
	for _, o := range others {
		if !o.Alive() {
			s.res.Server.Problems = append(s.res.Server.Problems, o.ExitError())
		}
		o.Stop()
	}
	if s.srv == nil {
		return
	}
	srv := s.srv
	s.srv = nil
	alive := srv.Alive()
	threads := srv.Threads()
	d, clean := srv.Stop()
	lines, warns, wt := srv.LogStats()
	si := s.res.Server
	si.Threads = threads
	si.LogLines += lines
	si.WarnLines += warns
	if len(si.WarnSample) < 5 {
		si.WarnSample = append(si.WarnSample, wt[:min(len(wt), 5-len(si.WarnSample))]...)
	}
	if !alive {
		si.Problems = append(si.Problems, srv.ExitError())
	} else if !clean {
		si.Problems = append(si.Problems, fmt.Sprintf("SIGTERM: no clean exit 0 within 5s (took %v); last stderr:\n%s", d.Round(time.Millisecond), lastLines(srv.Tail(), 5)))
	}
	si.ShutdownMs = append(si.ShutdownMs, float64(d.Microseconds())/1e3)
	if warns > 0 {
		s.note("server logged %d warn/error lines, e.g.: %s", warns, strings.Join(wt[:min(len(wt), 2)], " | "))
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

var scenarioFuncs = map[string]struct {
	title string
	run   func(ctx context.Context, s *scenario) error
}{
	"fanout":   {"1. fan-out, small messages (1 TCP port, D drivers, M devices)", runFanout},
	"ingest":   {"2. ingest (many devices, 1 driver)", runIngest},
	"udp":      {"3. UDP ingest (many source sockets, D drivers)", runUDP},
	"write":    {"4. write path (1 driver → many devices)", runWritePath},
	"bulk":     {"5. bulk (1 device → 1 driver, 64 KiB writes) vs loopback pipe", runBulk},
	"idle":     {"6. idle memory (server RSS per connection)", runIdle},
	"churn":    {"7. churn (connect → OPENED → close → CLOSED)", runChurn},
	"topic":    {"8. relay topic (1 publisher → S subscribers, 64 B messages)", runTopic},
	"rooms":    {"9. rooms (OpenTogetherTube balancer: one Monolith broadcasting to a room; clients sending to it)", runRooms},
	"cluster":  {"10. cluster fan-out: devices on replica 1, drivers on replicas 2 and 3, against one replica", runCluster},
	"everyday": {"11. everyday load (fixed rates far below the peak) vs a bare epoll fan-out", runEveryday},
}

// Run executes the configured scenarios and returns the report. A scenario
// failure (lost/reordered bytes, server crash) is recorded and makes
// Report.Failed true; the remaining scenarios still run.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if _, err := os.Stat(cfg.ServerBin); err != nil {
		return nil, fmt.Errorf("server binary: %w", err)
	}
	if abs, err := filepath.Abs(cfg.ServerBin); err == nil {
		cfg.ServerBin = abs
	}
	if slices.Contains(cfg.Scenarios, "everyday") {
		if _, err := os.Stat(cfg.FloorBin); err != nil {
			return nil, fmt.Errorf("floor binary for the everyday scenario (go build -o bin/fanoutfloor ./bench/cmd/fanoutfloor): %w", err)
		}
		if abs, err := filepath.Abs(cfg.FloorBin); err == nil {
			cfg.FloorBin = abs
		}
	}
	if cfg.Repeat < 1 {
		cfg.Repeat = 1
	}
	for _, n := range cfg.Scenarios {
		if _, ok := scenarioFuncs[n]; !ok {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", n, strings.Join(AllScenarios, ","))
		}
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}
	rep := &Report{Machine: describeMachine(&cfg), Config: cfg}
	rep.Machine.Pinning = pinningText(&cfg)
	load := MachineLoad(500 * time.Millisecond)
	rep.Machine.IdleCheck = fmt.Sprintf("%.0f", load)
	for _, l := range load {
		if l > 10 {
			cfg.Logf("WARNING: the machine is not idle before the run (CPU busy %% per core: %.0f); figures will be unreliable", load)
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("machine not idle at start: per-core busy %% %.0f", load))
			break
		}
	}
	t0 := time.Now()
	for _, name := range cfg.Scenarios {
		sf := scenarioFuncs[name]
		var runs []*ScenarioResult
		for r := 0; r < cfg.Repeat; r++ {
			if cfg.WaitQuiet > 0 {
				waitQuiet(ctx, &cfg)
			}
			cfg.Logf("== %s%s", sf.title, repeatTag(r, cfg.Repeat))
			res := &ScenarioResult{Name: name, Title: sf.title, Params: map[string]any{}}
			s := &scenario{cfg: &cfg, res: res}
			ts := time.Now()
			err := func() (err error) {
				defer func() {
					if p := recover(); p != nil {
						err = fmt.Errorf("panic: %v", p)
					}
				}()
				return sf.run(ctx, s)
			}()
			s.stopServer()
			if res.Retried > 0 {
				s.note("%d step(s) were repeated because other processes disturbed them", res.Retried)
			}
			if s.maxOther > 10 {
				s.note("MACHINE NOT QUIET: other processes used up to %.0f%% of a core during a step; figures are unreliable", s.maxOther)
			}
			res.Seconds = time.Since(ts).Seconds()
			if err != nil {
				res.Error = err.Error()
				cfg.Logf("!! %s FAILED: %v", name, err)
			}
			runs = append(runs, res)
			if ctx.Err() != nil {
				break
			}
		}
		rep.Scenarios = append(rep.Scenarios, mergeRuns(runs))
		if ctx.Err() != nil {
			break
		}
	}
	rep.Seconds = time.Since(t0).Seconds()
	for _, s := range rep.Scenarios {
		if s.Error != "" {
			rep.Failures = append(rep.Failures, s.Name+": "+s.Error)
		}
		for _, r := range s.Repeats {
			if r.Error != "" && s.Error == "" {
				rep.Failures = append(rep.Failures, s.Name+": "+r.Error)
			}
		}
	}
	rep.Failed = len(rep.Failures) > 0
	return rep, nil
}

func repeatTag(r, n int) string {
	if n <= 1 {
		return ""
	}
	return fmt.Sprintf(" (run %d/%d)", r+1, n)
}

func pinningText(cfg *Config) string {
	srv := "server not pinned"
	if cfg.ServerCPU >= 0 {
		srv = fmt.Sprintf("server pinned to CPU %d (taskset -c %d)", cfg.ServerCPU, cfg.ServerCPU)
	}
	h := "harness not pinned"
	if cfg.HarnessCPU >= 0 {
		h = fmt.Sprintf("harness pinned to CPU %d (sched_setaffinity on every thread, GOMAXPROCS=%d)", cfg.HarnessCPU, runtime.GOMAXPROCS(0))
	}
	return srv + "; " + h
}

// mergeRuns turns repeated runs into one result whose metrics are medians.
func mergeRuns(runs []*ScenarioResult) *ScenarioResult {
	if len(runs) == 1 {
		return runs[0]
	}
	out := *runs[0]
	out.Repeats = runs
	out.Metrics = nil
	out.Steps = nil
	keys := []string{}
	byKey := map[string]*Metric{}
	for _, r := range runs {
		for _, m := range r.Metrics {
			if byKey[m.Key] == nil {
				mm := m
				mm.Samples = nil
				byKey[m.Key] = &mm
				keys = append(keys, m.Key)
			}
			byKey[m.Key].Samples = append(byKey[m.Key].Samples, m.Value)
		}
		if r.Error != "" && out.Error == "" {
			out.Error = r.Error
		}
	}
	for _, k := range keys {
		m := byKey[k]
		m.Value = median(m.Samples)
		out.Metrics = append(out.Metrics, *m)
	}
	notes := []string{fmt.Sprintf("figures are medians of %d runs (samples in JSON; step tables per run below in the markdown)", len(runs))}
	for _, n := range runs[0].Notes {
		notes = append(notes, "run 1: "+n)
	}
	out.Notes = notes
	out.Retried = 0
	for _, r := range runs {
		out.Retried += r.Retried
	}
	return &out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// waitQuiet waits until no CPU is more than 10 % busy over a second, for at
// most cfg.WaitQuiet.
func waitQuiet(ctx context.Context, cfg *Config) {
	t0 := time.Now()
	for ctx.Err() == nil {
		load := MachineLoad(time.Second)
		busy := false
		for _, l := range load {
			if l > 10 {
				busy = true
			}
		}
		if !busy {
			return
		}
		if time.Since(t0) > cfg.WaitQuiet {
			cfg.Logf("machine still busy after %v (per-core %% %.0f); going on", cfg.WaitQuiet, load)
			return
		}
		cfg.Logf("waiting for a quiet machine (per-core busy %% %.0f)", load)
		time.Sleep(2 * time.Second)
	}
}
