// Command dispatch is a drop-in replacement for the PlaceOS dispatch
// service: device TCP and UDP ports opened on demand for drivers attached
// over WebSockets, all on one gnet event loop.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/placeos-gnet/dispatch/cluster"
	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/dispatch"
	drv "github.com/placeos-gnet/dispatch/loop/driver"
	"github.com/placeos-gnet/dispatch/loop/groups"
	"github.com/placeos-gnet/dispatch/loop/relay"
	"github.com/placeos-gnet/dispatch/loop/rooms"
)

// Set at build time with -ldflags "-X main.version=...".
var (
	version   = "dev"
	commit    = "unknown"
	buildTime = "unknown"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole program; main only supplies the process's streams and
// exits with the code run returns: 0 done, 1 failed while running, 2 bad
// configuration.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "token" {
		return runToken(args[1:], newEnv(os.LookupEnv), stdout, stderr)
	}
	o, err := parseOptions(args, newEnv(os.LookupEnv))
	if errors.Is(err, flag.ErrHelp) {
		// Help is asked for, not an error: stdout, so that it pipes into a pager.
		o.usage(stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "dispatch:", err)
		fmt.Fprintln(stderr, "Run 'dispatch -h' for the flags.")
		return 2
	}
	if o.version {
		fmt.Fprintf(stdout, "dispatch %s (commit %s, built %s, %s)\n", version, commit, buildTime, runtime.Version())
		return 0
	}
	if o.curlURL != "" {
		return curl(o.curlURL, stderr)
	}

	log := newLogger(stderr, o.logFormat, o.logLevel)
	o.core.Logger = log
	o.logConfig(log)
	if o.driver.Secret == defaultSecret {
		log.Warn("the shared secret is the default secret \"testing\": anyone can attach drivers; set PLACE_SERVER_SECRET")
	}
	fitConnectionsToFileLimit(&o.core, log)

	srv, err := newServer(o)
	var joinErr clusterError
	if errors.As(err, &joinErr) {
		log.Error("cannot join the cluster", "err", joinErr.error)
		return 1
	}
	if err != nil {
		log.Error("invalid configuration", "err", err)
		return 2
	}
	if o.bus != nil {
		defer o.bus.Close(time.Second)
	}
	metrics, code := start(srv, o, log)
	if code != 0 {
		return code
	}
	return serveUntilSignal(srv, metrics, log)
}

// start binds every listener and only then lets the server announce that it
// is ready (loop.Server.Start logs msg=listening): the metrics listener is
// bound first, so a bad or busy metrics address fails the start instead of
// a process that said it was ready.
func start(srv *loop.Server, o *options, log *slog.Logger) (*http.Server, int) {
	var metricsLn net.Listener
	if o.metrics != "" {
		var err error
		if metricsLn, err = listenMetrics(o.metrics); err != nil {
			log.Error(o.setting("metrics").label()+": cannot listen", "addr", o.metrics, "err", err)
			return nil, 1
		}
		log.Info("metrics listening", "addr", metricsLn.Addr().String())
	}
	if err := srv.Start(); err != nil {
		log.Error("cannot start", "err", err)
		if metricsLn != nil {
			_ = metricsLn.Close()
		}
		return nil, 1
	}
	var metrics *http.Server
	if metricsLn != nil {
		metrics = serveMetrics(metricsLn, o.prom, log)
	}
	return metrics, 0
}

// serveUntilSignal runs until SIGINT or SIGTERM, then shuts down within 5 s.
func serveUntilSignal(srv *loop.Server, metrics *http.Server, log *slog.Logger) int {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	select {
	case sig := <-signals:
		log.Info("shutting down", "signal", sig.String())
	case <-srv.Done():
		log.Error("event loop stopped unexpectedly")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	stopMetrics(ctx, metrics)
	if err := srv.Shutdown(ctx); err != nil {
		log.Error("shutdown incomplete", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// fitConnectionsToFileLimit raises the open-file limit and keeps device
// connections below it, so that the cap refuses (and counts) them before
// accept runs out of descriptors.
func fitConnectionsToFileLimit(cfg *loop.Config, log *slog.Logger) {
	limit, err := raiseFileLimit()
	if err != nil {
		log.Warn("could not raise the open-file limit", "err", err)
		return
	}
	log.Debug("open-file limit", "limit", limit)
	reserve := max(64, limit/10)
	if fit := int(limit) - int(reserve); fit > 0 && cfg.MaxConns > fit {
		log.Info("device connection cap lowered to fit the open-file limit", "max_conns", fit, "limit", limit)
		cfg.MaxConns = fit
	}
}

func newLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// curl is the container health check: GET the URL, succeed on 200-499.
func curl(url string, stderr io.Writer) int {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintln(stderr, "dispatch:", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 500 {
		return 0
	}
	fmt.Fprintln(stderr, "dispatch: status", resp.Status)
	return 1
}

// raiseFileLimit lifts the open-file limit as far as allowed: every device
// connection is a descriptor. A privileged process raises the hard limit to
// the kernel's fs.nr_open; any other lifts its soft limit to the hard one.
func raiseFileLimit() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if nrOpen, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && nrOpen > lim.Max {
			raised := syscall.Rlimit{Cur: nrOpen, Max: nrOpen}
			if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised) == nil {
				return nrOpen, nil
			}
		}
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, err
		}
	}
	return lim.Cur, nil
}

// newServer builds the loop and wires in every kind: the one place that
// names them all.
func newServer(o *options) (*loop.Server, error) {
	srv, err := loop.New(o.core)
	if err != nil {
		return nil, err
	}
	if o.cluster.Enabled() {
		// Only here is NATS on the path: alone, nothing of it runs.
		o.cluster.Logger = o.core.Logger
		o.cluster.ParseFilter = func(text string) (loop.Filter, error) {
			a, err := drv.ParseAcceptList(text)
			return &a, err
		}
		bus, err := cluster.New(o.cluster)
		if err != nil {
			return nil, clusterError{err}
		}
		srv.AttachBus(bus)
		srv.Register(bus)
		o.bus = bus
	}
	o.groups.DeviceHost = o.dispatch.DeviceHost
	o.groups.MaxMembers = o.dispatch.MaxPortConns
	o.groups.UDPQueueBytes = o.dispatch.UDPQueueBytes
	if _, err := dispatch.Register(srv, o.dispatch, &o.driver); err != nil {
		return nil, err
	}
	if _, err := groups.Register(srv, o.groups, &o.driver); err != nil {
		return nil, err
	}
	if _, err := relay.Register(srv, o.relay); err != nil {
		return nil, err
	}
	o.prom = metricsHandler(srv)
	o.rooms.Metrics = o.prom // the balancer's /api/status/metrics
	if _, err := rooms.Register(srv, o.rooms); err != nil {
		return nil, err
	}
	return srv, nil
}

// clusterError is a failure to join the cluster (NATS, the route port, the
// node number): a failure to start, not a bad configuration.
type clusterError struct{ error }
