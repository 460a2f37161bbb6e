package testkit

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// Series is one sample of a Prometheus text exposition.
type Series struct {
	Name   string
	Labels map[string]string
	Value  float64
}

var metricsClient = &http.Client{Timeout: EventTimeout, Transport: &http.Transport{DisableKeepAlives: true}}

// Scrape fetches and parses http://addr/metrics.
func Scrape(addr string) ([]Series, error) {
	resp, err := metricsClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: status %d", resp.StatusCode)
	}
	var out []Series
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		series := Series{Labels: map[string]string{}, Value: v}
		key := line[:sp]
		if i := strings.IndexByte(key, '{'); i >= 0 {
			series.Name = key[:i]
			for _, kv := range strings.Split(strings.TrimSuffix(key[i+1:], "}"), ",") {
				if k, v, ok := strings.Cut(kv, "="); ok {
					series.Labels[k] = strings.Trim(v, `"`)
				}
			}
		} else {
			series.Name = key
		}
		out = append(out, series)
	}
	return out, sc.Err()
}

// MetricValue sums the series of name whose labels include every given
// pair (name, value, name, value…), and reports whether there were any.
func MetricValue(all []Series, name string, labelPairs ...string) (float64, bool) {
	var sum float64
	found := false
	for _, s := range all {
		if s.Name != name {
			continue
		}
		match := true
		for i := 0; i+1 < len(labelPairs); i += 2 {
			if s.Labels[labelPairs[i]] != labelPairs[i+1] {
				match = false
			}
		}
		if match {
			sum += s.Value
			found = true
		}
	}
	return sum, found
}

// ScrapeValue scrapes once and returns one metric, which must be exported.
func ScrapeValue(tb testing.TB, addr, name string, labelPairs ...string) float64 {
	tb.Helper()
	all, err := Scrape(addr)
	if err != nil {
		tb.Fatalf("scraping %s: %v", addr, err)
	}
	v, ok := MetricValue(all, name, labelPairs...)
	if !ok {
		tb.Fatalf("metric %s%v not exported", name, labelPairs)
	}
	return v
}

// ExpectMetric waits for a counter to reach want (the loop publishes its
// counters a few times a second) and checks it does not pass it.
func ExpectMetric(tb testing.TB, addr string, want float64, name string, labelPairs ...string) {
	tb.Helper()
	if got := waitMetric(tb, addr, want, name, labelPairs...); got != want {
		tb.Errorf("%s%v = %v, want %v", name, labelPairs, got, want)
	}
}

// ExpectMetricAtLeast waits for a counter to reach want.
func ExpectMetricAtLeast(tb testing.TB, addr string, want float64, name string, labelPairs ...string) {
	tb.Helper()
	if got := waitMetric(tb, addr, want, name, labelPairs...); got < want {
		tb.Errorf("%s%v = %v, want at least %v", name, labelPairs, got, want)
	}
}

// waitMetric polls until the metric reaches want, or EventTimeout passes,
// and returns its last value.
func waitMetric(tb testing.TB, addr string, want float64, name string, labelPairs ...string) float64 {
	tb.Helper()
	var v float64
	Poll(EventTimeout, func() bool { v = ScrapeValue(tb, addr, name, labelPairs...); return v >= want })
	return v
}
