// Command dispatchbench drives a real bin/dispatch (a child process, pinned
// with taskset) through its public protocol and reports throughput, latency,
// CPU, memory and churn figures. See bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/placeos-gnet/dispatch/bench/harness"
)

type intList []int

func (l *intList) String() string {
	s := make([]string, len(*l))
	for i, v := range *l {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func (l *intList) Set(v string) error {
	*l = nil
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return err
		}
		*l = append(*l, n)
	}
	return nil
}

type strList []string

func (l *strList) String() string     { return strings.Join(*l, " ") }
func (l *strList) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var (
		suite      = flag.String("suite", "standard", "preset: quick (<30 s, smoke) or standard (<5 min)")
		scenarios  = flag.String("scenarios", "", "comma list of scenarios to run (default all): "+strings.Join(harness.AllScenarios, ","))
		bin        = flag.String("server", "bin/dispatch", "server binary")
		serverCPU  = flag.Int("server-cpu", 0, "CPU to pin the server to with taskset (-1: don't pin)")
		harnessCPU = flag.Int("harness-cpu", 1, "CPU to pin the harness to (-1: don't pin)")
		out        = flag.String("out", "bench/results/latest.json", "JSON results file (empty: none)")
		md         = flag.String("md", "", "markdown summary file (default: -out with .md; \"-\": none)")
		repeat     = flag.Int("repeat", 1, "run each scenario N times and report medians")
		profile    = flag.String("profile", "", "directory for server CPU profiles (starts the server with --metrics and profiles a step at the peak)")
		profileDur = flag.Duration("profile-time", 0, "length of each server CPU profile")
		logLevel   = flag.String("server-log-level", "", "LOG_LEVEL for the server (default info)")
		quiet      = flag.Bool("q", false, "no progress lines on stderr")
		procs      = flag.Int("harness-procs", 1, "GOMAXPROCS of the pinned harness")
		render     = flag.String("render", "", "print the table of an existing JSON report (and rewrite -md if given) instead of running")
		waitQuiet  = flag.Duration("wait-quiet", 0, "before each scenario wait up to this long for the machine to be idle (shared machines)")
		serverArgs strList
		serverEnv  strList

		stepDur   = flag.Duration("step", 0, "duration of one rate step")
		drainMax  = flag.Duration("drain", 0, "max time to drain a step's backlog")
		latDur    = flag.Duration("latency-time", 0, "duration of the latency step at 50% of peak")
		refine    = flag.Int("refine", 0, "bisection steps after the ×2 ramp")
		rateStart = flag.Float64("rate-start", 0, "first offered rate (items/s)")
		rateMax   = flag.Float64("rate-max", 0, "highest offered rate tried")

		drivers       = flag.Int("drivers", 0, "fan-out: drivers on the port (D)")
		devices       = flag.Int("devices", 0, "fan-out: devices (M)")
		ingestDevices = flag.Int("ingest-devices", 0, "ingest: devices")
		udpSources    = flag.Int("udp-sources", 0, "UDP: source sockets")
		udpDrivers    = flag.Int("udp-drivers", 0, "UDP: drivers")
		writeDevices  = flag.Int("write-devices", 0, "write path: devices")
		bulkDur       = flag.Duration("bulk-time", 0, "bulk: duration of one measurement")
		bulkReps      = flag.Int("bulk-reps", 0, "bulk: repetitions (median reported)")
		bulkChunk     = flag.Int("bulk-chunk", 0, "bulk: bytes per device write")
		idleDevices   intList
		idleDrivers   = flag.Int("idle-drivers", 0, "idle: drivers")
		churnConc     intList
		topicSubs     intList
		churnDur      = flag.Duration("churn-time", 0, "churn: duration per concurrency level")
		topicBatch    = flag.Int("topic-batch", 0, "topic: messages per publisher write(2) (1: one write per message)")
		roomsClients  intList
		roomsIngest   = flag.Int("rooms-ingest-clients", 0, "rooms: clients sending to the Monolith")
		edDevices     = flag.Int("everyday-devices", 0, "everyday: devices")
		edDrivers     = flag.Int("everyday-drivers", 0, "everyday: drivers")
		edRates       intList
		edWarmup      = flag.Duration("everyday-warmup", 0, "everyday: unmeasured load before each window")
		edDur         = flag.Duration("everyday-time", 0, "everyday: steady window per rate and process")
		floorBin      = flag.String("floor", "bin/fanoutfloor", "everyday: the floor binary (go build -o bin/fanoutfloor ./bench/cmd/fanoutfloor)")
	)
	flag.Var(&serverArgs, "server-arg", "extra server flag (repeatable), e.g. -server-arg=--max-device-pending=4194304")
	flag.Var(&serverEnv, "server-env", "extra server environment variable (repeatable), e.g. -server-env GODEBUG=gctrace=1")
	flag.Var(&idleDevices, "idle-devices", "idle: device counts to measure, e.g. 10000,50000")
	flag.Var(&churnConc, "churn-conc", "churn: concurrency levels, e.g. 1,8,32")
	flag.Var(&topicSubs, "topic-subs", "topic: subscriber counts, e.g. 100,1000")
	flag.Var(&roomsClients, "rooms-clients", "rooms: room sizes the Monolith broadcasts to, e.g. 100,1000")
	flag.Var(&edRates, "everyday-rates", "everyday: records/s per device, one measurement each, e.g. 125,250")
	flag.Parse()

	if *render != "" {
		rep, err := harness.ReadReport(*render)
		if err != nil {
			fmt.Fprintln(os.Stderr, "dispatchbench:", err)
			os.Exit(2)
		}
		rep.WriteTable(os.Stdout)
		if *md != "" && *md != "-" {
			if err := rep.WriteMarkdown(*md); err != nil {
				fmt.Fprintln(os.Stderr, "dispatchbench:", err)
				os.Exit(2)
			}
		}
		return
	}
	cfg, err := harness.SuiteConfig(*suite)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *scenarios != "" {
		cfg.Scenarios = strings.Split(*scenarios, ",")
	}
	cfg.ServerBin = *bin
	cfg.FloorBin = *floorBin
	cfg.ServerCPU = *serverCPU
	cfg.HarnessCPU = *harnessCPU
	cfg.Repeat = *repeat
	cfg.ProfileDir = *profile
	cfg.ServerArgs = serverArgs
	cfg.ServerEnv = serverEnv
	cfg.WaitQuiet = *waitQuiet
	ov := func(name string, apply func()) {
		if set[name] {
			apply()
		}
	}
	ov("profile-time", func() { cfg.ProfileDur = *profileDur })
	ov("server-log-level", func() { cfg.LogLevel = *logLevel })
	ov("step", func() { cfg.StepDur = *stepDur })
	ov("drain", func() { cfg.DrainMax = *drainMax })
	ov("latency-time", func() { cfg.LatencyDur = *latDur })
	ov("refine", func() { cfg.Refine = *refine })
	ov("rate-start", func() { cfg.RateStart = *rateStart })
	ov("rate-max", func() { cfg.RateMax = *rateMax })
	ov("drivers", func() { cfg.FanoutDrivers = *drivers })
	ov("devices", func() { cfg.FanoutDevices = *devices })
	ov("ingest-devices", func() { cfg.IngestDevices = *ingestDevices })
	ov("udp-sources", func() { cfg.UDPSources = *udpSources })
	ov("udp-drivers", func() { cfg.UDPDrivers = *udpDrivers })
	ov("write-devices", func() { cfg.WriteDevices = *writeDevices })
	ov("bulk-time", func() { cfg.BulkDur = *bulkDur })
	ov("bulk-reps", func() { cfg.BulkReps = *bulkReps })
	ov("bulk-chunk", func() { cfg.BulkChunk = *bulkChunk })
	ov("idle-devices", func() { cfg.IdleDevices = idleDevices })
	ov("idle-drivers", func() { cfg.IdleDrivers = *idleDrivers })
	ov("churn-conc", func() { cfg.ChurnConc = churnConc })
	ov("topic-subs", func() { cfg.TopicSubscribers = topicSubs })
	ov("topic-batch", func() { cfg.TopicBatch = *topicBatch })
	ov("churn-time", func() { cfg.ChurnDur = *churnDur })
	ov("rooms-clients", func() { cfg.RoomsClients = roomsClients })
	ov("rooms-ingest-clients", func() { cfg.RoomsIngestClients = *roomsIngest })
	ov("everyday-devices", func() { cfg.EverydayDevices = *edDevices })
	ov("everyday-drivers", func() { cfg.EverydayDrivers = *edDrivers })
	ov("everyday-rates", func() { cfg.EverydayRates = edRates })
	ov("everyday-warmup", func() { cfg.EverydayWarmup = *edWarmup })
	ov("everyday-time", func() { cfg.EverydayDur = *edDur })

	ncpu := runtime.NumCPU()
	if cfg.ServerCPU >= ncpu || cfg.HarnessCPU >= ncpu {
		fmt.Fprintf(os.Stderr, "dispatchbench: this machine has %d CPUs; -server-cpu %d / -harness-cpu %d out of range\n", ncpu, cfg.ServerCPU, cfg.HarnessCPU)
		os.Exit(2)
	}
	if cfg.HarnessCPU >= 0 {
		if err := harness.PinHarness(cfg.HarnessCPU, *procs); err != nil {
			fmt.Fprintf(os.Stderr, "dispatchbench: pinning the harness: %v\n", err)
			os.Exit(2)
		}
	}
	if soft, hard, err := harness.RaiseNofile(); err != nil {
		fmt.Fprintf(os.Stderr, "dispatchbench: raising RLIMIT_NOFILE: %v\n", err)
	} else if !*quiet {
		fmt.Fprintf(os.Stderr, "RLIMIT_NOFILE raised to %d (hard %d)\n", soft, hard)
	}
	if !*quiet {
		t0 := time.Now()
		cfg.Logf = func(format string, args ...any) {
			fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(t0).Seconds(), fmt.Sprintf(format, args...))
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := harness.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dispatchbench: %v\n", err)
		os.Exit(2)
	}
	rep.WriteTable(os.Stdout)
	if *out != "" {
		if err := rep.WriteJSON(*out); err != nil {
			fmt.Fprintf(os.Stderr, "dispatchbench: %v\n", err)
			os.Exit(2)
		}
		fmt.Printf("results: %s\n", *out)
	}
	mdPath := *md
	if mdPath == "" && *out != "" {
		mdPath = strings.TrimSuffix(*out, ".json") + ".md"
	}
	if mdPath != "" && mdPath != "-" {
		if err := rep.WriteMarkdown(mdPath); err != nil {
			fmt.Fprintf(os.Stderr, "dispatchbench: %v\n", err)
			os.Exit(2)
		}
		fmt.Printf("summary: %s\n", mdPath)
	}
	if rep.Failed {
		fmt.Fprintf(os.Stderr, "\ndispatchbench: FAILED — %s\n", strings.Join(rep.Failures, "\n  "))
		os.Exit(1)
	}
}
