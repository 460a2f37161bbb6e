package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/placeos-gnet/dispatch/codec"
)

const patPeriod = 1 << 20

// bulkPattern is 2 periods of pseudo-random bytes; stream offset o maps to
// bulkPattern[o%patPeriod:].
var bulkPattern = func() []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 2*patPeriod)
	for i := 0; i < patPeriod; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	copy(b[patPeriod:], b[:patPeriod])
	return b
}()

// bulkHandler verifies the one device's byte stream against the pattern.
type bulkHandler struct {
	off    int64 // bytes verified so far (read goroutine)
	bytes  atomic.Int64
	frames atomic.Int64
	opened atomic.Int64
	id     int64
	nFrm   int64
}

func (h *bulkHandler) begin(int64) {}
func (h *bulkHandler) end() {
	h.bytes.Store(h.off)
	if h.nFrm > 0 {
		h.frames.Add(h.nFrm)
		h.nFrm = 0
	}
}
func (h *bulkHandler) message(m *codec.Message) error {
	switch m.Type {
	case codec.Opened:
		h.id = int64(m.ID)
		h.opened.Add(1)
	case codec.Received:
		if int64(m.ID) != h.id {
			return fmt.Errorf("bulk driver: RECEIVED for client %d, expected %d", m.ID, h.id)
		}
		data := m.Data
		for len(data) > 0 {
			p := int(h.off % patPeriod)
			n := min(len(data), patPeriod)
			if !bytes.Equal(data[:n], bulkPattern[p:p+n]) {
				return fmt.Errorf("bulk driver: byte stream differs from what the device wrote near offset %d: bytes lost, corrupted or reordered", h.off)
			}
			data = data[n:]
			h.off += int64(n)
		}
		h.nFrm++
	case codec.Closed:
		return fmt.Errorf("bulk driver: device connection CLOSED by the server during the run")
	}
	return nil
}

type bulkRun struct {
	MBps         float64
	Frames       int64
	AvgFrameKiB  float64
	ServerCPUPct float64
	HarnessPct   float64
	SrvCore      float64
	HrnCore      float64
	Other        float64
}

// oneBulk streams chunk-sized writes from one device for dur.
func oneBulk(ctx context.Context, s *scenario, dur time.Duration, chunk int) (bulkRun, error) {
	srv := s.srv
	port, err := devicePort()
	if err != nil {
		return bulkRun{}, err
	}
	h := &bulkHandler{}
	drv, err := dialDriver(ctx, 0, DriverDialOpts{Addr: srv.Addr, Port: port, Accept: "127.0.0.1", Secret: s.cfg.Secret, BigBufs: true}, h)
	if err != nil {
		return bulkRun{}, err
	}
	defer drv.Close()
	c, err := deviceDialer(nil, 4<<20).DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return bulkRun{}, err
	}
	defer c.Close()
	if !waitFor(ctx, 5*time.Second, func() bool { return h.opened.Load() == 1 || drv.Err() != nil }) {
		return bulkRun{}, fmt.Errorf("bulk: no OPENED within 5s")
	}
	var written int64
	srv0, h0, c0 := srv.CPU(), selfCPU(), readCPUSample()
	b0, f0 := h.bytes.Load(), h.frames.Load()
	t0 := time.Now()
	for time.Since(t0) < dur && ctx.Err() == nil {
		p := int(written % patPeriod)
		n, err := c.Write(bulkPattern[p : p+chunk])
		written += int64(n)
		if err != nil {
			// the cause is usually on the driver side (the port closes with its last driver)
			waitFor(ctx, time.Second, func() bool { return drv.Err() != nil })
			if derr := drv.Err(); derr != nil {
				return bulkRun{}, fmt.Errorf("bulk device write failed (%v) after %d bytes; the driver had ended: %w", err, written, derr)
			}
			return bulkRun{}, fmt.Errorf("bulk device write failed after %d bytes (driver still up, received %d bytes): %w", written, h.bytes.Load(), err)
		}
		if err := drv.Err(); err != nil {
			return bulkRun{}, err
		}
	}
	el := time.Since(t0)
	b1, f1 := h.bytes.Load(), h.frames.Load()
	srv1, h1, c1 := srv.CPU(), selfCPU(), readCPUSample()
	r := bulkRun{
		Other:        otherPct(c0, c1, (srv1-srv0)+(h1-h0), el),
		SrvCore:      busyPct(c0, c1, s.cfg.ServerCPU),
		HrnCore:      busyPct(c0, c1, s.cfg.HarnessCPU),
		MBps:         float64(b1-b0) / el.Seconds() / 1e6,
		Frames:       f1 - f0,
		ServerCPUPct: 100 * (srv1 - srv0).Seconds() / el.Seconds(),
		HarnessPct:   100 * (h1 - h0).Seconds() / el.Seconds(),
	}
	if f1 > f0 {
		r.AvgFrameKiB = float64(b1-b0) / float64(f1-f0) / 1024
	}
	if !waitFor(ctx, 10*time.Second, func() bool { return h.bytes.Load() >= written || drv.Err() != nil }) {
		return r, fmt.Errorf("bulk: %d of %d bytes never reached the driver (LOST)", written-h.bytes.Load(), written)
	}
	if err := drv.Err(); err != nil {
		return r, err
	}
	if got := h.bytes.Load(); got != written {
		return r, fmt.Errorf("bulk: driver received %d bytes, device wrote %d", got, written)
	}
	return r, nil
}

// loopbackPipe measures a plain TCP loopback socket inside the harness.
func loopbackPipe(ctx context.Context, dur time.Duration, chunk int, harnessCPU int) (float64, float64, float64, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, 0, 0, err
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(acc)
			return
		}
		acc <- c
	}()
	w, err := deviceDialer(nil, 4<<20).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return 0, 0, 0, err
	}
	defer w.Close()
	r, ok := <-acc
	if !ok {
		return 0, 0, 0, errors.New("loopback accept failed")
	}
	defer r.Close()
	r.(*net.TCPConn).SetReadBuffer(4 << 20)
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1<<20)
		for {
			n, err := r.Read(buf)
			got.Add(int64(n))
			if err != nil {
				if err != io.EOF && !errors.Is(err, net.ErrClosed) {
					return
				}
				return
			}
		}
	}()
	c0, hc0 := readCPUSample(), selfCPU()
	g0 := got.Load()
	t0 := time.Now()
	var written int64
	for time.Since(t0) < dur {
		p := int(written % patPeriod)
		n, err := w.Write(bulkPattern[p : p+chunk])
		written += int64(n)
		if err != nil {
			return 0, 0, 0, err
		}
	}
	el := time.Since(t0)
	mbps := float64(got.Load()-g0) / el.Seconds() / 1e6
	c1 := readCPUSample()
	hp := busyPct(c0, c1, harnessCPU)
	other := otherPct(c0, c1, selfCPU()-hc0, el)
	w.Close()
	<-done
	return mbps, hp, other, nil
}

func runBulk(ctx context.Context, s *scenario) error {
	cfg := s.cfg
	chunk := cfg.BulkChunk
	if chunk <= 0 || chunk > patPeriod {
		chunk = 64 << 10
	}
	s.res.Params["chunk_bytes"] = chunk
	s.res.Params["seconds"] = cfg.BulkDur.Seconds()
	s.res.Params["reps"] = cfg.BulkReps
	if _, err := s.startServer(ctx); err != nil {
		return err
	}
	var disp, pipe, srvCPU, hrnCPU, pipeCPU, frameKiB, srvCore, hrnCore []float64
	for i, tries := 0, 0; i < max(1, cfg.BulkReps); i++ {
		r, err := oneBulk(ctx, s, cfg.BulkDur, chunk)
		if err != nil {
			return err
		}
		mb, hp, other, err := loopbackPipe(ctx, cfg.BulkDur, chunk, cfg.HarnessCPU)
		if err != nil {
			return err
		}
		other = max(other, r.Other)
		if other > 10 && cfg.WaitQuiet > 0 && tries < 4 {
			tries++
			s.logf("  bulk rep %d disturbed by other processes (%.0f%% of a core): repeating it when the machine is quiet", i+1, other)
			s.res.Retried++
			waitQuiet(ctx, cfg)
			i--
			continue
		}
		s.maxOther = max(s.maxOther, other)
		s.logf("  bulk rep %d: dispatch %.0f MB/s (server CPU %.0f%%, core %.0f%%; harness %.0f%%, core %.0f%%; %.1f KiB/frame), loopback pipe %.0f MB/s (harness core %.0f%%)",
			i+1, r.MBps, r.ServerCPUPct, r.SrvCore, r.HarnessPct, r.HrnCore, r.AvgFrameKiB, mb, hp)
		disp = append(disp, r.MBps)
		pipe = append(pipe, mb)
		srvCPU = append(srvCPU, r.ServerCPUPct)
		hrnCPU = append(hrnCPU, r.HarnessPct)
		pipeCPU = append(pipeCPU, hp)
		frameKiB = append(frameKiB, r.AvgFrameKiB)
		srvCore = append(srvCore, r.SrvCore)
		hrnCore = append(hrnCore, r.HrnCore)
	}
	add := func(key, label string, v []float64, unit string) {
		s.res.Metrics = append(s.res.Metrics, Metric{Key: key, Label: label, Value: median(v), Unit: unit, Samples: samplesIf(v)})
	}
	add("dispatch_mbps", "device → driver through dispatch", disp, "MB/s")
	add("pipe_mbps", "plain TCP loopback pipe (harness → harness)", pipe, "MB/s")
	ratio := 0.0
	if median(pipe) > 0 {
		ratio = median(disp) / median(pipe)
	}
	s.metric("ratio", "dispatch / loopback pipe", ratio, "ratio")
	add("server_cpu_pct", "dispatch: server CPU (% of one core)", srvCPU, "%")
	add("harness_cpu_pct", "dispatch: harness CPU (% of one core)", hrnCPU, "%")
	add("server_core_busy", "dispatch: server core busy (incl. softirq)", srvCore, "%")
	add("harness_core_busy", "dispatch: harness core busy (incl. softirq)", hrnCore, "%")
	add("pipe_harness_core_busy", "pipe: harness core busy (writer+reader, one core)", pipeCPU, "%")
	add("received_kib", "average RECEIVED payload", frameKiB, "KiB")
	s.note("MB = 10^6 bytes; medians of %d alternating repetitions (dispatch, then pipe); every byte verified against what the device wrote", max(1, cfg.BulkReps))
	s.note("the pipe runs writer and reader both on the harness CPU; the dispatch path adds the server's CPU, so the ratio compares two different CPU budgets")
	return nil
}

func samplesIf(v []float64) []float64 {
	if len(v) > 1 {
		return v
	}
	return nil
}
