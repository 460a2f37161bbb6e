package testkit

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// ProcStatusBytes reads a "kB" field such as VmRSS from /proc/<pid>/status.
func ProcStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// FDCount is the number of descriptors a process has open.
func FDCount(pid int) (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(entries), err
}

// MiB renders a byte count for logs.
func MiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// RSSSampler samples a process's VmRSS every 10 ms and keeps the peak.
type RSSSampler struct {
	initial  int64
	peak     atomic.Int64
	done     chan struct{}
	finished chan struct{}
}

// StartRSSSampler starts sampling; it stops when the test ends, if Stop was
// not called before.
func StartRSSSampler(tb testing.TB, pid int) *RSSSampler {
	tb.Helper()
	rss, err := ProcStatusBytes(pid, "VmRSS")
	if err != nil {
		tb.Fatalf("reading VmRSS: %v", err)
	}
	r := &RSSSampler{initial: rss, done: make(chan struct{}), finished: make(chan struct{})}
	r.peak.Store(rss)
	go func() {
		defer close(r.finished)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.done:
				return
			case <-tick.C:
			}
			if v, err := ProcStatusBytes(pid, "VmRSS"); err == nil && v > r.peak.Load() {
				r.peak.Store(v)
			}
		}
	}()
	tb.Cleanup(func() { r.Stop() })
	return r
}

// First is the sample taken at the start.
func (r *RSSSampler) First() int64 { return r.initial }

// Stop ends sampling (idempotent) and returns the peak.
func (r *RSSSampler) Stop() int64 {
	select {
	case <-r.done:
	default:
		close(r.done)
	}
	<-r.finished
	return r.peak.Load()
}
