package dispatch_test

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/inproc"
	"github.com/placeos-gnet/dispatch/loop"
)

// stream reads a driver's RECEIVED payloads in order until want bytes have
// arrived or reading fails; it checks them against pattern.
func (d *testDriver) stream(want int, pattern func(int) byte, pace func(n int)) (int, error) {
	got := 0
	for got < want {
		_ = d.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		b, op, err := wsutil.ReadServerData(d.conn)
		if err != nil {
			return got, err
		}
		if op != ws.OpBinary {
			continue
		}
		m, err := codec.ParseMessage(b)
		if err != nil {
			return got, err
		}
		if m.Type != codec.Received {
			continue
		}
		for i, c := range m.Data {
			if c != pattern(got+i) {
				return got, fmt.Errorf("byte %d is %d, want %d", got+i, c, pattern(got+i))
			}
		}
		got += len(m.Data)
		if pace != nil {
			pace(len(m.Data))
		}
	}
	return got, nil
}

func pattern(i int) byte { return byte(i*7 + i/65536) }

// A device floods a port heard by a healthy driver and one that never
// reads. The stalled driver holds the device back until it has drained
// nothing for the stall timeout; it is then cut with 1008, and the healthy
// driver gets every byte in order.
func TestStalledDriverHoldsTheDeviceUntilCutAndTheOtherGetsEverything(t *testing.T) {
	s := inproc.Start(t, inproc.Options{Core: func(c *loop.Config) { c.StallTimeout = time.Second }})
	port := freePort(t, "tcp")
	healthy := dialDriver(t, s, "tcp", port, "127.0.0.1")
	stalled := dialDriver(t, s, "tcp", port, "127.0.0.1")
	dev, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if m := healthy.next(); m.Type != codec.Opened {
		t.Fatalf("want OPENED, got %v", m.Type)
	}

	const total = 64 << 20
	sent := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for off := 0; off < total; off += len(chunk) {
			for i := range chunk {
				chunk[i] = pattern(off + i)
			}
			_ = dev.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := dev.Write(chunk); err != nil {
				sent <- err
				return
			}
		}
		sent <- nil
	}()
	if got, err := healthy.stream(total, pattern, nil); err != nil {
		t.Fatalf("healthy driver: %v after %d of %d bytes", err, got, total)
	}
	if err := <-sent; err != nil {
		t.Fatalf("device: %v", err)
	}
	// The stalled driver finds its stream ended by close 1008 behind what it was sent.
	_ = stalled.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		_, _, err := wsutil.ReadServerData(stalled.conn)
		var closed wsutil.ClosedError
		if errors.As(err, &closed) {
			if closed.Code != ws.StatusPolicyViolation {
				t.Fatalf("stalled driver closed with %d, want 1008", closed.Code)
			}
			break
		}
		if err != nil {
			t.Fatalf("stalled driver: %v, want close 1008", err)
		}
	}
	deadline := time.Now().Add(eventTimeout)
	stallCuts := func() uint64 {
		snap := s.Snapshot()
		return snap.Class("dispatch", "driver").Ends[loop.EndStalled]
	}
	for stallCuts() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling the published counters, not synchronisation
	}
	snap := s.Snapshot()
	drivers := snap.Class("dispatch", "driver")
	if drivers.Ends[loop.EndStalled] != 1 || drivers.Ends[loop.EndSlow] != 0 {
		t.Fatalf("driver ends: stalled %d, slow %d; want one stall cut", drivers.Ends[loop.EndStalled], drivers.Ends[loop.EndSlow])
	}
	if devices := snap.Class("dispatch", "device"); devices.Pauses == 0 {
		t.Fatal("the device was never paused")
	}
}

// A driver that reads slowly but steadily is never cut, however much
// faster the device could send: the device waits for it.
func TestSlowButSteadyDriverIsNeverCut(t *testing.T) {
	s := inproc.Start(t, inproc.Options{Core: func(c *loop.Config) {
		c.StallTimeout = 500 * time.Millisecond
		c.HighWater, c.LowWater = 64<<10, 16<<10
	}})
	port := freePort(t, "tcp")
	slow := dialDriver(t, s, "tcp", port, "127.0.0.1")
	dev, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if m := slow.next(); m.Type != codec.Opened {
		t.Fatalf("want OPENED, got %v", m.Type)
	}
	const total = 24 << 20
	var written atomic.Int64
	go func() {
		chunk := make([]byte, 64<<10)
		for off := 0; off < total; off += len(chunk) {
			for i := range chunk {
				chunk[i] = pattern(off + i)
			}
			_ = dev.SetWriteDeadline(time.Now().Add(time.Minute))
			if _, err := dev.Write(chunk); err != nil {
				return
			}
			written.Add(int64(len(chunk)))
		}
	}()
	// Read at about 12 MB/s: the device could send far faster, and the
	// driver's backlog passes the high watermark again and again.
	start := time.Now()
	got, err := slow.stream(total, pattern, func(n int) {
		time.Sleep(time.Duration(n) * time.Second / (12 << 20)) // pacing the reader, not synchronisation
	})
	if err != nil {
		t.Fatalf("slow driver: %v after %d of %d bytes", err, got, total)
	}
	t.Logf("read %d MiB in %v", total>>20, time.Since(start).Round(time.Millisecond))
	snap := s.Snapshot()
	drivers := snap.Class("dispatch", "driver")
	if drivers.Ends[loop.EndStalled]+drivers.Ends[loop.EndSlow] != 0 {
		t.Fatal("the slow driver was cut")
	}
	if snap.Class("dispatch", "device").Pauses == 0 {
		t.Fatal("the device was never paused")
	}
}
