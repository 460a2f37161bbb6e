package harness

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Machine describes where a run happened.
type Machine struct {
	CPUModel       string `json:"cpu_model"`
	Cores          int    `json:"cores"`
	Kernel         string `json:"kernel"`
	GoVersion      string `json:"go_version"`
	Date           string `json:"date"`
	Hostname       string `json:"hostname,omitempty"`
	MemTotalMB     int    `json:"mem_total_mb"`
	ServerBinary   string `json:"server_binary"`
	ServerVersion  string `json:"server_version,omitempty"`
	ServerCPUs     string `json:"server_cpus"`
	HarnessCPUs    string `json:"harness_cpus"`
	HarnessProcs   int    `json:"harness_gomaxprocs"`
	NofileSoft     uint64 `json:"rlimit_nofile_soft"`
	NofileHard     uint64 `json:"rlimit_nofile_hard"`
	PortRange      string `json:"ip_local_port_range,omitempty"`
	Pinning        string `json:"pinning"`
	SomaxConn      string `json:"somaxconn,omitempty"`
	TCPRmemMax     string `json:"net_core_rmem_max,omitempty"`
	CPUGovernorish string `json:"cpu_mhz,omitempty"`
	IdleCheck      string `json:"busy_pct_per_cpu_before_run"`
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b)), " ")
}

func describeMachine(cfg *Config) Machine {
	m := Machine{
		Cores:        runtime.NumCPU(),
		Kernel:       readTrim("/proc/sys/kernel/osrelease"),
		GoVersion:    runtime.Version(),
		Date:         time.Now().UTC().Format(time.RFC3339),
		PortRange:    readTrim("/proc/sys/net/ipv4/ip_local_port_range"),
		SomaxConn:    readTrim("/proc/sys/net/core/somaxconn"),
		TCPRmemMax:   readTrim("/proc/sys/net/core/rmem_max"),
		ServerBinary: cfg.ServerBin,
		HarnessProcs: runtime.GOMAXPROCS(0),
	}
	m.Hostname, _ = os.Hostname()
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		n := 0
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			switch k {
			case "processor":
				n++
			case "model name":
				if m.CPUModel == "" {
					m.CPUModel = v
				}
			case "cpu MHz":
				if m.CPUGovernorish == "" {
					m.CPUGovernorish = v
				}
			}
		}
		f.Close()
		if n > 0 {
			m.Cores = n
		}
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
				kb, _ := strconv.Atoi(strings.Fields(v)[0])
				m.MemTotalMB = kb / 1024
			}
		}
		f.Close()
	}
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		m.NofileSoft, m.NofileHard = rl.Cur, rl.Max
	}
	if out, err := exec.Command(cfg.ServerBin, "-v").CombinedOutput(); err == nil {
		m.ServerVersion = strings.TrimSpace(string(out))
	}
	m.HarnessCPUs = selfAffinity()
	if cfg.ServerCPU >= 0 {
		m.ServerCPUs = strconv.Itoa(cfg.ServerCPU)
	} else {
		m.ServerCPUs = "unpinned"
	}
	return m
}

// PinHarness restricts every thread of this process to cpu (sched_setaffinity
// on each task in /proc/self/task, twice to catch threads created meanwhile;
// threads created later inherit the mask) and sets GOMAXPROCS to procs.
func PinHarness(cpu, procs int) error {
	var set unix.CPUSet
	set.Zero()
	set.Set(cpu)
	for pass := 0; pass < 2; pass++ {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("sched_setaffinity(%d, cpu %d): %w", tid, cpu, err)
			}
		}
	}
	runtime.GOMAXPROCS(max(1, procs))
	return nil
}

// selfAffinity reports the CPUs every harness thread may run on.
func selfAffinity() string {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return "?"
	}
	seen := map[string]bool{}
	var lists []string
	for _, e := range ents {
		l := statusField("/proc/self/task/"+e.Name()+"/status", "Cpus_allowed_list:")
		if !seen[l] {
			seen[l] = true
			lists = append(lists, l)
		}
	}
	return strings.Join(lists, " | ")
}

func statusField(path, key string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// RaiseNofile sets the soft RLIMIT_NOFILE to the hard limit (children inherit it).
func RaiseNofile() (soft, hard uint64, err error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	return rl.Cur, rl.Max, nil
}

// clkTck is USER_HZ, fixed at 100 on Linux for /proc accounting.
const clkTck = 100

// procCPU returns utime+stime of a process (all threads) from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad stat for %d", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// after ")" : state(3) ... utime is field 14, stime 15 (1-based overall)
	if len(f) < 13 {
		return 0, fmt.Errorf("short stat for %d", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// selfCPU is this process's user+system CPU time (getrusage, µs resolution).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procRSS returns VmRSS of pid in bytes.
func procRSS(pid int) (int64, error) {
	v := statusField("/proc/"+strconv.Itoa(pid)+"/status", "VmRSS:")
	if v == "" {
		return 0, fmt.Errorf("no VmRSS for pid %d", pid)
	}
	kb, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
	return kb * 1024, err
}

// procNofile returns the soft "Max open files" of pid.
func procNofile(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/limits")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(line)
			if len(f) >= 4 {
				n, _ := strconv.Atoi(f[3])
				return n
			}
		}
	}
	return 0
}

// udpRcvbufErrors sums Udp RcvbufErrors (/proc/net/snmp) and
// Udp6RcvbufErrors (/proc/net/snmp6): kernel drops because a receiver's
// socket buffer was full (a dual-stack listener counts under Udp6).
func udpRcvbufErrors() int64 {
	n := udp4RcvbufErrors()
	if b, err := os.ReadFile("/proc/net/snmp6"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == "Udp6RcvbufErrors" {
				v, _ := strconv.ParseInt(f[1], 10, 64)
				n += v
			}
		}
	}
	return n
}

func udp4RcvbufErrors() int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return -1
	}
	var hdr []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "Udp:") {
			continue
		}
		f := strings.Fields(line)
		if hdr == nil {
			hdr = f
			continue
		}
		for i, k := range hdr {
			if k == "RcvbufErrors" && i < len(f) {
				n, _ := strconv.ParseInt(f[i], 10, 64)
				return n
			}
		}
	}
	return -1
}

func getNofile() (uint64, uint64, error) {
	var rl syscall.Rlimit
	err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	return rl.Cur, rl.Max, err
}

// cpuSample holds /proc/stat jiffies per CPU: busy (user, nice, system, irq,
// softirq) and total. Softirq matters here: loopback TCP receive work is
// often done in softirq context and is not charged to any process.
type cpuSample struct {
	busy, total []int64
	steal       []int64 // time the hypervisor ran something else
	task        int64   // user+nice+system jiffies over all CPUs (time charged to tasks)
}

func readCPUSample() cpuSample {
	var s cpuSample
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return s
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "cpu") || strings.HasPrefix(line, "cpu ") {
			continue
		}
		f := strings.Fields(line)
		n, err := strconv.Atoi(strings.TrimPrefix(f[0], "cpu"))
		if err != nil || len(f) < 9 {
			continue
		}
		var v [8]int64
		for i := range v {
			v[i], _ = strconv.ParseInt(f[1+i], 10, 64)
		}
		for len(s.busy) <= n {
			s.busy = append(s.busy, 0)
			s.total = append(s.total, 0)
			s.steal = append(s.steal, 0)
		}
		s.steal[n] = v[7]
		// user nice system idle iowait irq softirq steal
		s.busy[n] = v[0] + v[1] + v[2] + v[5] + v[6]
		s.total[n] = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7]
		s.task += v[0] + v[1] + v[2]
	}
	return s
}

// busyPct is the busy share of cpu between two samples, or -1.
func busyPct(a, b cpuSample, cpu int) float64 {
	if cpu < 0 || cpu >= len(a.busy) || cpu >= len(b.busy) {
		return -1
	}
	dt := b.total[cpu] - a.total[cpu]
	if dt <= 0 {
		return -1
	}
	return 100 * float64(b.busy[cpu]-a.busy[cpu]) / float64(dt)
}

// otherPct estimates CPU used by processes other than the server and the
// harness between two samples (% of one core): task time on all CPUs minus
// the two processes' own utime+stime.
func otherPct(a, b cpuSample, ours time.Duration, el time.Duration) float64 {
	task := time.Duration(b.task-a.task) * time.Second / clkTck
	v := 100 * (task - ours).Seconds() / el.Seconds()
	if v < 0 {
		v = 0
	}
	return v
}

// stealPct is the steal time of cpu between two samples, % of that CPU's time.
func stealPct(a, b cpuSample, cpu int) float64 {
	if cpu < 0 || cpu >= len(a.steal) || cpu >= len(b.steal) {
		return 0
	}
	dt := b.total[cpu] - a.total[cpu]
	if dt <= 0 {
		return 0
	}
	return 100 * float64(b.steal[cpu]-a.steal[cpu]) / float64(dt)
}

// MachineLoad samples the whole machine for d and returns the busy % of
// each CPU (to warn when something else is running).
func MachineLoad(d time.Duration) []float64 {
	a := readCPUSample()
	time.Sleep(d)
	b := readCPUSample()
	out := make([]float64, len(a.busy))
	for i := range out {
		out[i] = busyPct(a, b, i)
	}
	return out
}
