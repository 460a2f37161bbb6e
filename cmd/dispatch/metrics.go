package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/stats"
)

// metricsAddr makes a bare port mean loopback: profiles and metrics are
// served to the world only when an operator names a host.
func metricsAddr(s string) string {
	if s != "" && !strings.Contains(s, ":") {
		return "127.0.0.1:" + s
	}
	return s
}

// listenMetrics binds the metrics address. It runs before the server
// announces readiness; serveMetrics starts answering on it afterwards.
func listenMetrics(addr string) (net.Listener, error) {
	return net.Listen("tcp", metricsAddr(addr))
}

// serveMetrics answers Prometheus (/metrics) and pprof (/debug/pprof/) on
// ln. It runs on its own goroutines, never on the loop: scrapes read the
// counters the loop last published.
func serveMetrics(ln net.Listener, srv *loop.Server, log *slog.Logger) *http.Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		stats.NewCollector(srv.Snapshot),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "err", err)
		}
	}()
	return hs
}

func stopMetrics(ctx context.Context, hs *http.Server) {
	if hs != nil {
		_ = hs.Shutdown(ctx)
	}
}
