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

// metricsHandler is the Prometheus exposition of the server's one
// registry: the loop's published counters, the Go runtime and the process.
// Scrapes run on their own goroutines, never on the loop.
func metricsHandler(srv *loop.Server) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		stats.NewCollector(srv.Snapshot),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

// serveMetrics answers Prometheus (/metrics, with metrics) and pprof
// (/debug/pprof/) on ln.
func serveMetrics(ln net.Listener, metrics http.Handler, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
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
