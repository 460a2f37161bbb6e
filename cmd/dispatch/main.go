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
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/dispatch"
	"github.com/placeos-gnet/dispatch/loop/groups"
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

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, newEnv(os.LookupEnv), stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "dispatch:", err)
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
	if limit, err := raiseFileLimit(); err != nil {
		log.Warn("could not raise the open-file limit", "err", err)
	} else {
		log.Debug("open-file limit", "limit", limit)
		// Keep device connections below the descriptor limit, so that the
		// cap refuses (and counts) them before accept runs out of descriptors.
		reserve := max(64, limit/10)
		if fit := int(limit) - int(reserve); fit > 0 && o.core.MaxConns > fit {
			log.Info("device connection cap lowered to fit the open-file limit", "max_conns", fit, "limit", limit)
			o.core.MaxConns = fit
		}
	}

	srv, err := newServer(o)
	if err != nil {
		log.Error("invalid configuration", "err", err)
		return 2
	}
	if err := srv.Start(); err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	var metrics *http.Server
	if o.metrics != "" {
		if metrics, err = serveMetrics(o.metrics, srv, log); err != nil {
			log.Error("cannot start the metrics listener", "addr", o.metrics, "err", err)
			_ = srv.Shutdown(context.Background())
			return 1
		}
	}
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
	o.groups.DeviceHost = o.dispatch.DeviceHost
	o.groups.MaxMembers = o.dispatch.MaxPortConns
	o.groups.UDPQueueBytes = o.dispatch.UDPQueueBytes
	if _, err := dispatch.Register(srv, o.dispatch, &o.driver); err != nil {
		return nil, err
	}
	if _, err := groups.Register(srv, o.groups, &o.driver); err != nil {
		return nil, err
	}
	return srv, nil
}
