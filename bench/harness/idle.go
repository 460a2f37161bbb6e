package harness

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/placeos-gnet/dispatch/codec"
)

// countHandler counts OPENED/CLOSED and ignores data.
type countHandler struct {
	opened atomic.Int64
	closed atomic.Int64
}

func (h *countHandler) begin(int64) {}
func (h *countHandler) end()        {}
func (h *countHandler) message(m *codec.Message) error {
	switch m.Type {
	case codec.Opened:
		h.opened.Add(1)
	case codec.Closed:
		h.closed.Add(1)
	}
	return nil
}

// settledRSS waits, then returns the median of three VmRSS samples.
func settledRSS(srv *Server, settle time.Duration) int64 {
	time.Sleep(settle)
	var v []float64
	for i := 0; i < 3; i++ {
		v = append(v, float64(srv.RSS()))
		time.Sleep(settle / 4)
	}
	return int64(median(v))
}

func runIdle(ctx context.Context, s *scenario) error {
	cfg := s.cfg
	settle := time.Second
	if cfg.Suite == "quick" {
		settle = 200 * time.Millisecond
	}
	targets := append([]int(nil), cfg.IdleDevices...)
	sort.Ints(targets)
	s.res.Params["device_targets"] = targets
	s.res.Params["drivers"] = cfg.IdleDrivers
	s.res.Params["settle_seconds"] = settle.Seconds()

	// --- idle devices ---
	srv, err := s.startServer(ctx)
	if err != nil {
		return err
	}
	rssEmpty := settledRSS(srv, settle/2)
	port, err := devicePort()
	if err != nil {
		return err
	}
	h := &countHandler{}
	drv, err := dialDriver(ctx, 0, DriverDialOpts{Addr: srv.Addr, Port: port, Accept: "127.0.0.0/8", Secret: cfg.Secret}, h)
	if err != nil {
		return err
	}
	base := settledRSS(srv, settle)
	s.metric("rss_empty_mib", "server RSS, no drivers", float64(rssEmpty)/(1<<20), "MiB")
	s.metric("rss_base_mib", "server RSS, 1 driver registered, no devices (baseline)", float64(base)/(1<<20), "MiB")
	var hardSoft uint64
	if m := rlimitSoft(); m > 0 {
		hardSoft = m
	}
	capacity := min(procNofile(srv.Pid), int(hardSoft)) - 300
	why := fmt.Sprintf("RLIMIT_NOFILE (server %d, harness %d; the hard limit cannot be raised here)", procNofile(srv.Pid), hardSoft)
	if mc := srv.MaxConns(); mc > 0 && mc < capacity {
		capacity = mc
		why = fmt.Sprintf("the server's own device cap of %d (it keeps 10%% of its RLIMIT_NOFILE %d in reserve; the hard limit cannot be raised here)", mc, procNofile(srv.Pid))
	}
	var conns []*net.TCPConn
	defer func() { closeAll(conns) }()
	for _, want := range targets {
		n := want
		if n > capacity {
			n = capacity
			s.note("%d idle devices requested; %s caps this point at %d", want, why, n)
		}
		if n <= len(conns) {
			continue
		}
		t0 := time.Now()
		more, err := dialDevices(ctx, port, n-len(conns), 32, func(i int) net.IP { return loopbackIP(300 + (len(conns)+i)/4000) })
		if err != nil {
			return fmt.Errorf("connecting idle devices %d..%d: %w", len(conns), n, err)
		}
		conns = append(conns, more...)
		if !waitFor(ctx, 30*time.Second, func() bool { return h.opened.Load() >= int64(n) || drv.Err() != nil }) {
			// the server refused some (a cap of its own): measure what it admitted
			got := int(h.opened.Load() - h.closed.Load())
			s.note("%d devices connected but the server admitted only %d (OPENED seen by the driver); measuring with %d", n, got, got)
			n = got
		}
		if err := drv.Err(); err != nil {
			return err
		}
		connRate := float64(len(more)) / time.Since(t0).Seconds()
		if st, err := srv.Stats(cfg.Secret); err != nil {
			s.note("stats endpoint: %v", err)
		} else if got := st.TCPClients[strconv.Itoa(port)]; got != n {
			s.note("stats endpoint says tcp_clients[%d]=%d with %d devices connected", port, got, n)
		}
		rss := settledRSS(srv, settle)
		per := float64(rss-base) / float64(n)
		k := strconv.Itoa(n)
		s.metric("rss_devices_"+k+"_mib", fmt.Sprintf("server RSS with %d idle devices", n), float64(rss)/(1<<20), "MiB")
		s.metric("per_device_"+k+"_kib", fmt.Sprintf("RSS per idle device at %d", n), per/1024, "KiB")
		s.logf("  %d idle devices: RSS %.1f MiB, %.2f KiB/device (connected at %.0f/s)", n, float64(rss)/(1<<20), per/1024, connRate)
	}
	closeAll(conns)
	conns = nil
	drv.Close()
	s.stopServer()

	// --- idle drivers: same port, then each on its own port ---
	for _, mode := range []string{"same_port", "own_port"} {
		srv, err := s.startServer(ctx)
		if err != nil {
			return err
		}
		base := settledRSS(srv, settle/2)
		port, err := devicePort()
		if err != nil {
			return err
		}
		ports := make([]int, cfg.IdleDrivers)
		for i := range ports {
			ports[i] = port
			if mode == "own_port" && i > 0 {
				if ports[i], err = devicePort(); err != nil {
					return err
				}
			}
		}
		ds, err := dialDrivers(ctx, cfg.IdleDrivers, func(i int) DriverDialOpts {
			return DriverDialOpts{Addr: srv.Addr, Port: ports[i], Accept: "127.0.0.1", Secret: cfg.Secret}
		}, func(int) msgHandler { return &countHandler{} })
		if err != nil {
			return fmt.Errorf("%s drivers: %w", mode, err)
		}
		rss := settledRSS(srv, settle)
		if err := driversErr(ds); err != nil {
			closeDrivers(ds)
			return err
		}
		if st, err := srv.Stats(cfg.Secret); err == nil {
			total := 0
			for _, v := range st.TCPListeners {
				total += v
			}
			if total != cfg.IdleDrivers {
				s.note("%s: stats tcp_listeners sum %d, expected %d", mode, total, cfg.IdleDrivers)
			}
		}
		per := float64(rss-base) / float64(cfg.IdleDrivers)
		label := "on one port"
		if mode == "own_port" {
			label = "each on its own port (incl. its device listener)"
		}
		s.metric("per_driver_"+mode+"_kib", fmt.Sprintf("RSS per idle driver, %d drivers %s", cfg.IdleDrivers, label), per/1024, "KiB")
		s.logf("  %d drivers %s: RSS %.1f MiB (base %.1f), %.1f KiB/driver", cfg.IdleDrivers, mode, float64(rss)/(1<<20), float64(base)/(1<<20), per/1024)
		closeDrivers(ds)
		s.stopServer()
	}
	s.note("RSS = VmRSS of the server process after %v of quiet (median of 3 samples); per-connection figures subtract the baseline and include Go heap slack (GOGC)", settle)
	return nil
}

func rlimitSoft() uint64 {
	s, _, err := getNofile()
	if err != nil {
		return 0
	}
	return s
}
