package harness

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/placeos-gnet/dispatch/codec"
)

type churnEv struct {
	typ codec.MsgType
	id  uint64
}

// churnHandler routes OPENED/CLOSED to the connector owning the source IP
// (each connector dials from its own 127.0.x.y and has one connection at a time).
type churnHandler struct {
	byIP map[string]chan churnEv
}

func (h *churnHandler) begin(int64) {}
func (h *churnHandler) end()        {}
func (h *churnHandler) message(m *codec.Message) error {
	ch := h.byIP[string(m.IP)]
	if ch == nil {
		return fmt.Errorf("churn driver: %v from unexpected IP %q", m.Type, m.IP)
	}
	if m.Type == codec.Received {
		return fmt.Errorf("churn driver: unexpected RECEIVED from %s", m.IP)
	}
	select {
	case ch <- churnEv{m.Type, m.ID}:
	default:
		return fmt.Errorf("churn driver: connector %s has unconsumed events (duplicate OPENED/CLOSED?)", m.IP)
	}
	return nil
}

type churnResult struct {
	cycles           int64
	rate             float64
	p50, p99, p999   float64
	srvPct, hrnPct   float64
	srvCore, hrnCore float64
	other            float64
	usPerCycle       float64
}

func churnOnce(ctx context.Context, s *scenario, conc int, dur time.Duration, ipBase int) (churnResult, error) {
	srv := s.srv
	port, err := devicePort()
	if err != nil {
		return churnResult{}, err
	}
	h := &churnHandler{byIP: map[string]chan churnEv{}}
	ips := make([]net.IP, conc)
	chans := make([]chan churnEv, conc)
	for i := range ips {
		ips[i] = loopbackIP(ipBase + i)
		chans[i] = make(chan churnEv, 4)
		h.byIP[ips[i].String()] = chans[i]
	}
	drv, err := dialDriver(ctx, 0, DriverDialOpts{Addr: srv.Addr, Port: port, Accept: "127.0.0.0/8", Secret: s.cfg.Secret}, h)
	if err != nil {
		return churnResult{}, err
	}
	defer drv.Close()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	var cycles atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	hist := newHist()
	srv0, h0, cs0 := srv.CPU(), selfCPU(), readCPUSample()
	t0 := time.Now()
	deadline := t0.Add(dur)
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			d := deviceDialer(ips[i], 0)
			lh := newHist()
			fail := func(err error) {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
			wait := func(want codec.MsgType, id uint64, checkID bool) (uint64, error) {
				select {
				case ev := <-chans[i]:
					if ev.typ != want || (checkID && ev.id != id) {
						return 0, fmt.Errorf("connector %s: expected %v id %d, got %v id %d", ips[i], want, id, ev.typ, ev.id)
					}
					return ev.id, nil
				case <-time.After(5 * time.Second):
					return 0, fmt.Errorf("connector %s: no %v within 5s (id %d)", ips[i], want, id)
				case <-drv.Done():
					return 0, drv.Err()
				}
			}
			for time.Now().Before(deadline) && ctx.Err() == nil {
				c0 := time.Now()
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					fail(fmt.Errorf("connector %s: dial: %w", ips[i], err))
					return
				}
				id, err := wait(codec.Opened, 0, false)
				if err != nil {
					c.Close()
					fail(err)
					return
				}
				c.Close()
				if _, err := wait(codec.Closed, id, true); err != nil {
					fail(err)
					return
				}
				lh.RecordValue(int64(time.Since(c0)))
				cycles.Add(1)
			}
			mu.Lock()
			hist.Merge(lh)
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	el := time.Since(t0)
	srv1, h1, cs1 := srv.CPU(), selfCPU(), readCPUSample()
	if firstErr != nil {
		return churnResult{}, firstErr
	}
	if err := drv.Err(); err != nil {
		return churnResult{}, err
	}
	n := cycles.Load()
	r := churnResult{cycles: n, rate: float64(n) / el.Seconds(),
		srvPct: 100 * (srv1 - srv0).Seconds() / el.Seconds(), hrnPct: 100 * (h1 - h0).Seconds() / el.Seconds(),
		srvCore: busyPct(cs0, cs1, s.cfg.ServerCPU), hrnCore: busyPct(cs0, cs1, s.cfg.HarnessCPU),
		other: otherPct(cs0, cs1, (srv1-srv0)+(h1-h0), el)}
	if n > 0 {
		r.usPerCycle = (srv1 - srv0).Seconds() * 1e6 / float64(n)
		r.p50, r.p99, r.p999 = quantUs(hist, 50), quantUs(hist, 99), quantUs(hist, 99.9)
	}
	// the server must have forgotten every connection
	if st, err := srv.Stats(s.cfg.Secret); err == nil {
		if v, ok := st.TCPClients[strconv.Itoa(port)]; ok && v != 0 {
			s.note("concurrency %d: stats tcp_clients[%d] = %d after every device closed (expected 0)", conc, port, v)
		}
	}
	return r, nil
}

func runChurn(ctx context.Context, s *scenario) error {
	cfg := s.cfg
	s.res.Params["concurrency"] = cfg.ChurnConc
	s.res.Params["seconds"] = cfg.ChurnDur.Seconds()
	if _, err := s.startServer(ctx); err != nil {
		return err
	}
	ipBase := 10
	for ci, tries := 0, 0; ci < len(cfg.ChurnConc); ci++ {
		conc := cfg.ChurnConc[ci]
		r, err := churnOnce(ctx, s, conc, cfg.ChurnDur, ipBase)
		if err != nil {
			return fmt.Errorf("churn concurrency %d: %w", conc, err)
		}
		ipBase += conc
		if r.other > 10 && cfg.WaitQuiet > 0 && tries < 4 {
			tries++
			s.logf("  churn c=%d disturbed by other processes (%.0f%% of a core): repeating it when the machine is quiet", conc, r.other)
			s.res.Retried++
			waitQuiet(ctx, cfg)
			ci--
			continue
		}
		s.maxOther = max(s.maxOther, r.other)
		k := strconv.Itoa(conc)
		s.metric("cycles_per_s_c"+k, fmt.Sprintf("cycles/s with %d concurrent connectors", conc), r.rate, "cycles/s")
		s.metric("cycle_p50_us_c"+k, fmt.Sprintf("  cycle time p50 (c=%d)", conc), r.p50, "µs")
		s.metric("cycle_p99_us_c"+k, fmt.Sprintf("  cycle time p99 (c=%d)", conc), r.p99, "µs")
		s.metric("server_cpu_pct_c"+k, fmt.Sprintf("  server CPU (c=%d)", conc), r.srvPct, "%")
		s.metric("server_us_per_cycle_c"+k, fmt.Sprintf("  server CPU per cycle (c=%d)", conc), r.usPerCycle, "µs/cycle")
		s.metric("harness_cpu_pct_c"+k, fmt.Sprintf("  harness CPU (c=%d)", conc), r.hrnPct, "%")
		s.metric("server_core_busy_c"+k, fmt.Sprintf("  server core busy (c=%d)", conc), r.srvCore, "%")
		s.metric("harness_core_busy_c"+k, fmt.Sprintf("  harness core busy (c=%d)", conc), r.hrnCore, "%")
		s.logf("  churn c=%d: %.0f cycles/s, p50 %.0fµs p99 %.0fµs, server CPU %.0f%% (core %.0f%%, %.1f µs/cycle), harness %.0f%% (core %.0f%%)", conc, r.rate, r.p50, r.p99, r.srvPct, r.srvCore, r.usPerCycle, r.hrnPct, r.hrnCore)
	}
	s.note("a cycle = dial → driver sees OPENED → device closes → driver sees CLOSED for that id; each connector uses its own source IP so events are matched exactly")
	return nil
}
