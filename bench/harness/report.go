package harness

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Report is the whole run, as written to JSON.
type Report struct {
	Machine   Machine           `json:"machine"`
	Config    Config            `json:"config"`
	Scenarios []*ScenarioResult `json:"scenarios"`
	Failed    bool              `json:"failed"`
	Failures  []string          `json:"failures,omitempty"`
	Warnings  []string          `json:"warnings,omitempty"`
	Seconds   float64           `json:"seconds"`
}

// Metric is one headline figure. NaN is a figure that could not be
// measured; it prints as n/a and is null in JSON.
type Metric struct {
	Key     string    `json:"key"`
	Label   string    `json:"label"`
	Value   float64   `json:"value"`
	Unit    string    `json:"unit"`
	Samples []float64 `json:"samples,omitempty"` // per run, when repeated (Value is the median)
}

// jsonFloat is a float64 whose NaN is null in JSON (which has no NaN).
type jsonFloat float64

func (f jsonFloat) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(f)) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(f))
}

func (f *jsonFloat) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = jsonFloat(math.NaN())
		return nil
	}
	return json.Unmarshal(b, (*float64)(f))
}

type metricJSON struct {
	Key     string      `json:"key"`
	Label   string      `json:"label"`
	Value   jsonFloat   `json:"value"`
	Unit    string      `json:"unit"`
	Samples []jsonFloat `json:"samples,omitempty"`
}

func (m Metric) MarshalJSON() ([]byte, error) {
	j := metricJSON{Key: m.Key, Label: m.Label, Value: jsonFloat(m.Value), Unit: m.Unit}
	for _, v := range m.Samples {
		j.Samples = append(j.Samples, jsonFloat(v))
	}
	return json.Marshal(j)
}

func (m *Metric) UnmarshalJSON(b []byte) error {
	var j metricJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*m = Metric{Key: j.Key, Label: j.Label, Value: float64(j.Value), Unit: j.Unit}
	for _, v := range j.Samples {
		m.Samples = append(m.Samples, float64(v))
	}
	return nil
}

// ServerInfo collects facts about the server processes of a scenario.
type ServerInfo struct {
	Cmdline    string    `json:"cmdline"`
	Affinity   string    `json:"cpus_allowed"`
	Nofile     int       `json:"rlimit_nofile"`
	Threads    string    `json:"threads_at_end,omitempty"`
	LogLines   int       `json:"stderr_lines"`
	WarnLines  int       `json:"stderr_warn_error_lines"`
	WarnSample []string  `json:"stderr_warn_sample,omitempty"`
	ShutdownMs []float64 `json:"shutdown_ms"`
	Problems   []string  `json:"problems,omitempty"`
}

// ScenarioResult is one scenario.
type ScenarioResult struct {
	Name    string            `json:"name"`
	Title   string            `json:"title"`
	Params  map[string]any    `json:"params"`
	Metrics []Metric          `json:"metrics"`
	Steps   []Step            `json:"steps,omitempty"`
	Notes   []string          `json:"notes,omitempty"`
	Error   string            `json:"error,omitempty"`
	Seconds float64           `json:"seconds"`
	Server  *ServerInfo       `json:"server,omitempty"`
	Repeats []*ScenarioResult `json:"repeats,omitempty"`
	Retried int               `json:"steps_repeated_for_noise,omitempty"`
}

// MarshalJSON writes durations readably.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config
	return json.Marshal(struct {
		plain
		StepDur    string `json:"step_duration"`
		DrainMax   string `json:"drain_max"`
		LatencyDur string `json:"latency_duration"`
		BulkDur    string `json:"bulk_duration"`
		ChurnDur   string `json:"churn_duration"`
		ProfileDur string `json:"profile_duration"`
		WaitQuiet  string `json:"wait_quiet"`
		EDWarmup   string `json:"everyday_warmup"`
		EDDur      string `json:"everyday_duration"`
	}{plain(c), c.StepDur.String(), c.DrainMax.String(), c.LatencyDur.String(), c.BulkDur.String(), c.ChurnDur.String(), c.ProfileDur.String(), c.WaitQuiet.String(),
		c.EverydayWarmup.String(), c.EverydayDur.String()})
}

// WriteJSON writes the report to path (creating its directory).
func (r *Report) WriteJSON(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func fmtVal(v float64, unit string) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "n/a"
	case unit == "%" || unit == "ratio" || unit == "µs" || unit == "µs/frame" || unit == "µs/item" || unit == "µs/delivery" || unit == "frames/write" || unit == "µs/cycle" || unit == "MB/s" || unit == "KiB" || unit == "MiB":
		if math.Abs(v) >= 100 {
			return fmt.Sprintf("%.0f", v)
		}
		if math.Abs(v) >= 10 {
			return fmt.Sprintf("%.1f", v)
		}
		return fmt.Sprintf("%.2f", v)
	case math.Abs(v) >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case math.Abs(v) >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v == math.Trunc(v):
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// WriteTable prints the human-readable summary.
func (r *Report) WriteTable(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "\ndispatchbench — suite %s — %s\n", r.Config.Suite, m.Date)
	fmt.Fprintf(w, "machine: %s, %d cores, kernel %s, %s, %d MiB RAM\n", m.CPUModel, m.Cores, m.Kernel, m.GoVersion, m.MemTotalMB)
	fmt.Fprintf(w, "pinning: %s (harness CPUs now: %s)\n", m.Pinning, m.HarnessCPUs)
	fmt.Fprintf(w, "server:  %s %s\n", m.ServerBinary, m.ServerVersion)
	fmt.Fprintf(w, "RLIMIT_NOFILE soft/hard: %d/%d\n", m.NofileSoft, m.NofileHard)
	for _, x := range r.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", x)
	}
	for _, s := range r.Scenarios {
		fmt.Fprintf(w, "\n%s  [%.1fs]\n", s.Title, s.Seconds)
		if s.Error != "" {
			fmt.Fprintf(w, "  FAILED: %s\n", s.Error)
		}
		for _, mt := range s.Metrics {
			extra := ""
			if len(mt.Samples) > 1 {
				parts := make([]string, len(mt.Samples))
				for i, v := range mt.Samples {
					parts[i] = fmtVal(v, mt.Unit)
				}
				extra = "  (median of " + strings.Join(parts, ", ") + ")"
			}
			fmt.Fprintf(w, "  %-52s %12s %-10s%s\n", mt.Label, fmtVal(mt.Value, mt.Unit), mt.Unit, extra)
		}
		if len(s.Steps) > 0 {
			counters := hasCounters(s.Steps)
			extra := ""
			if counters {
				extra = fmt.Sprintf(" %7s %8s", "fr/wr", "passes/s")
			}
			fmt.Fprintf(w, "  %-9s %9s %9s %10s %9s %5s %5s %5s %5s %5s %7s %7s %7s%s %8s  %s\n", "step", "target/s", "offered/s", "deliver/s", "frames/s", "srv%", "core0", "hrn%", "core1", "oth%", "µs/frm", "p50µs", "p99µs", extra, "backlog", "ok")
			for _, st := range s.Steps {
				ok := "ok"
				if !st.OK {
					ok = "OVER: " + st.Why
				}
				if counters {
					extra = fmt.Sprintf(" %7s %8s", fmtPtr(st.FramesPerWrite, "%.2f"), fmtPtr(st.PassesPerSec, "%.0f"))
				}
				fmt.Fprintf(w, "  %-9s %9s %9s %10s %9s %5.0f %5.0f %5.0f %5.0f %5.0f %7.2f %7.0f %7.0f%s %8d  %s\n", st.Purpose,
					fmtVal(st.TargetRate, ""), fmtVal(st.OfferedRate, ""), fmtVal(st.DeliveredRate, ""), fmtVal(st.FrameRate, ""),
					st.ServerCPUPct, st.ServerCoreBusy, st.HarnessCPUPct, st.HarnessCoreBusy, st.OtherCPUPct, st.ServerUsPerFrm, st.P50us, st.P99us, extra, st.BacklogAtEnd, ok)
			}
		}
		for _, n := range s.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
		if s.Server != nil {
			for _, p := range s.Server.Problems {
				fmt.Fprintf(w, "  SERVER: %s\n", p)
			}
		}
	}
	fmt.Fprintf(w, "\ntotal %.1fs\n", r.Seconds)
	if r.Failed {
		fmt.Fprintf(w, "\nFAILED:\n")
		for _, f := range r.Failures {
			fmt.Fprintf(w, "  - %s\n", f)
		}
	}
}

// WriteMarkdown writes a markdown summary.
func (r *Report) WriteMarkdown(path string) error {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "# dispatchbench results (suite `%s`)\n\n", r.Config.Suite)
	fmt.Fprintf(&b, "- date: %s\n- machine: %s, %d cores, %d MiB RAM, kernel %s\n- Go: %s\n- server: `%s` %s\n- pinning: %s\n- RLIMIT_NOFILE soft/hard: %d/%d\n- total run time: %.1f s\n\n",
		m.Date, m.CPUModel, m.Cores, m.MemTotalMB, m.Kernel, m.GoVersion, m.ServerBinary, m.ServerVersion, m.Pinning, m.NofileSoft, m.NofileHard, r.Seconds)
	for _, x := range r.Warnings {
		fmt.Fprintf(&b, "**WARNING:** %s\n\n", x)
	}
	if r.Failed {
		fmt.Fprintf(&b, "**FAILED:**\n\n")
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "- %s\n", f)
		}
		b.WriteString("\n")
	}
	b.WriteString("## Headline figures\n\n| scenario | figure | value | unit |\n|---|---|---:|---|\n")
	for _, s := range r.Scenarios {
		for _, mt := range s.Metrics {
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", s.Name, mt.Label, fmtVal(mt.Value, mt.Unit), mt.Unit)
		}
	}
	for _, s := range r.Scenarios {
		fmt.Fprintf(&b, "\n## %s\n\n", s.Title)
		if s.Error != "" {
			fmt.Fprintf(&b, "**FAILED:** %s\n\n", s.Error)
		}
		if len(s.Repeats) > 0 {
			for k, r := range s.Repeats {
				if len(r.Steps) > 0 {
					fmt.Fprintf(&b, "Run %d:\n\n", k+1)
					writeStepsMD(&b, r.Steps)
				}
			}
		} else {
			writeStepsMD(&b, s.Steps)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		if s.Server != nil {
			fmt.Fprintf(&b, "- server: `%s` (CPUs %s, nofile %d), stderr lines %d (warn/error %d), shutdown ms %v\n",
				s.Server.Cmdline, s.Server.Affinity, s.Server.Nofile, s.Server.LogLines, s.Server.WarnLines, s.Server.ShutdownMs)
			for _, p := range s.Server.Problems {
				fmt.Fprintf(&b, "- **server problem:** %s\n", strings.ReplaceAll(p, "\n", " / "))
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func writeStepsMD(b *strings.Builder, steps []Step) {
	if len(steps) > 0 {
		counters := hasCounters(steps)
		head, align, extra := "", "", ""
		if counters {
			head, align = " frames per driver write | passes/s |", "---:|---:|"
		}
		b.WriteString("| step | target/s | offered/s | delivered/s | frames/s | server CPU % | server core busy % | harness CPU % | harness core busy % | other procs CPU % | server µs/frame | p50 µs | p99 µs | p99.9 µs |" + head + " backlog | result |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + align + "---:|---|\n")
		for _, st := range steps {
			ok := "ok"
			if !st.OK {
				ok = "over: " + st.Why
			}
			if counters {
				extra = fmt.Sprintf(" %s | %s |", fmtPtr(st.FramesPerWrite, "%.2f"), fmtPtr(st.PassesPerSec, "%.0f"))
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %.1f | %.0f | %.1f | %.0f | %.0f | %.2f | %.0f | %.0f | %.0f |%s %d | %s |\n", st.Purpose,
				fmtVal(st.TargetRate, ""), fmtVal(st.OfferedRate, ""), fmtVal(st.DeliveredRate, ""), fmtVal(st.FrameRate, ""),
				st.ServerCPUPct, st.ServerCoreBusy, st.HarnessCPUPct, st.HarnessCoreBusy, st.OtherCPUPct, st.ServerUsPerFrm, st.P50us, st.P99us, st.P999us, extra, st.BacklogAtEnd, ok)
		}
		b.WriteString("\n")
	}
}

// hasCounters: some step carries figures read from the process's /metrics.
func hasCounters(steps []Step) bool {
	for _, st := range steps {
		if st.FramesPerWrite != nil || st.PassesPerSec != nil {
			return true
		}
	}
	return false
}

// UnmarshalJSON reads what MarshalJSON wrote (durations as strings).
func (c *Config) UnmarshalJSON(b []byte) error {
	type plain Config
	var aux struct {
		plain
		StepDur    string `json:"step_duration"`
		DrainMax   string `json:"drain_max"`
		LatencyDur string `json:"latency_duration"`
		BulkDur    string `json:"bulk_duration"`
		ChurnDur   string `json:"churn_duration"`
		ProfileDur string `json:"profile_duration"`
		WaitQuiet  string `json:"wait_quiet"`
		EDWarmup   string `json:"everyday_warmup"`
		EDDur      string `json:"everyday_duration"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	*c = Config(aux.plain)
	for _, d := range []struct {
		s  string
		to *time.Duration
	}{{aux.StepDur, &c.StepDur}, {aux.DrainMax, &c.DrainMax}, {aux.LatencyDur, &c.LatencyDur}, {aux.BulkDur, &c.BulkDur},
		{aux.ChurnDur, &c.ChurnDur}, {aux.ProfileDur, &c.ProfileDur}, {aux.WaitQuiet, &c.WaitQuiet},
		{aux.EDWarmup, &c.EverydayWarmup}, {aux.EDDur, &c.EverydayDur}} {
		if d.s != "" {
			v, err := time.ParseDuration(d.s)
			if err != nil {
				return err
			}
			*d.to = v
		}
	}
	return nil
}

// ReadReport loads a JSON report written by WriteJSON.
func ReadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}
