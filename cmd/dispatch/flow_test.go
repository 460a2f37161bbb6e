package main

// Flow control through the real binary: a reader that falls behind holds
// back the producers that feed it instead of losing data, and only a reader
// that drains nothing for the stall timeout is cut.

import (
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// flood writes n bytes of stream 0 to conn as fast as the server takes
// them, in 64 KiB writes; it returns nil once all are written.
func flood(conn net.Conn, n int64) error {
	const chunk = 64 << 10
	for sent := int64(0); sent < n; {
		size := min(chunk, n-sent)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Minute))
		if _, err := conn.Write(testkit.StreamPattern(0, sent, int(size))); err != nil {
			return err
		}
		sent += size
	}
	return nil
}

// kindName is the kind's name in metric labels.
func kindName(k channelKind) string {
	if _, ok := k.(groupKind); ok {
		return "groups"
	}
	return "dispatch"
}

// producerRole is the role of the kind's producers in metric labels.
func producerRole(k channelKind) string {
	if _, ok := k.(groupKind); ok {
		return "member"
	}
	return "device"
}

// A producer floods 256 MiB to a channel with a healthy driver and one that
// never reads. The stalled driver holds the producer back until it has
// drained nothing for the stall timeout; it is then cut with 1008 (counted
// and logged once as stalled), the healthy driver gets every byte in order,
// and the server's memory stays far below the flood.
func TestFloodHeldBackByAStalledDriverUntilItIsCut(t *testing.T) {
	forEachKind(t, func(t *testing.T, k channelKind) {
		const total = 256 << 20
		s := startRobustServer(t, k, "DISPATCH_STALL_TIMEOUT=2s", "LOG_LEVEL=info")
		metrics := s.MetricsAddr(t)
		healthy, ch := k.open(t, s, testkit.Localhost)
		stalled, err := testkit.DialDriver(t, s, k.target(ch, testkit.Localhost), testkit.DriverHeader(s), testkit.ReceiveBuffer(4096))
		if err != nil {
			t.Fatalf("stalled driver: %v", err)
		}
		k.waitCounts(t, s, ch, 2, 0)
		sampler := testkit.StartRSSSampler(t, s.PID())
		baseline := sampler.First()

		// Once cut, the stalled driver reads at last: it must find its
		// stream ended by close 1008, after what was already queued for it.
		type result struct {
			code ws.StatusCode
			err  error
		}
		stalledDone := make(chan result, 1)
		go func() {
			if !testkit.Poll(2*time.Minute, func() bool { return testkit.CountLines(s.Logs(), "driver not keeping up") > 0 }) {
				stalledDone <- result{err: errors.New("never cut")}
				return
			}
			code, _, err := stalled.ReadToClose(testkit.EventTimeout, nil)
			stalledDone <- result{code, err}
		}()

		bc := testkit.NewBroadcaster()
		reader := newPatternReader(healthy, testkit.Localhost, 1, bc)
		go reader.run()
		producer := connect(t, s, k, ch, testkit.Localhost)
		flooded := make(chan error, 1)
		go func() { flooded <- flood(producer, total) }()

		if !bc.WaitUntil(2*time.Minute, func() bool { return reader.failed() || reader.got[0].Load() == total }) || reader.failed() {
			t.Fatalf("healthy driver: got %d of %d bytes; error: %v", reader.got[0].Load(), total, reader.err())
		}
		if err := <-flooded; err != nil {
			t.Fatalf("producer: %v", err)
		}
		peak := sampler.Stop()
		t.Logf("server VmRSS: baseline %s, peak %s while %d MiB went past a driver that never reads",
			testkit.MiB(baseline), testkit.MiB(peak), total>>20)
		if bound := baseline + 48<<20; peak > bound {
			t.Errorf("server RSS peaked at %s, over %s (baseline %s)", testkit.MiB(peak), testkit.MiB(bound), testkit.MiB(baseline))
		}

		if r := <-stalledDone; r.err != nil || r.code != ws.StatusPolicyViolation {
			t.Fatalf("stalled driver: close %d, %v; want 1008", r.code, r.err)
		}
		testkit.ExpectMetric(t, metrics, 1, "dispatch_ends_total", "kind", kindName(k), "role", "driver", "reason", "stalled")
		testkit.ExpectMetric(t, metrics, 0, "dispatch_ends_total", "kind", kindName(k), "role", "driver", "reason", "slow")
		testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_pauses_total", "kind", kindName(k), "role", producerRole(k))
		if n := testkit.CountLines(s.Logs(), "driver not keeping up"); n != 1 {
			t.Errorf("%d log lines about the stalled driver, want exactly 1", n)
		}
	})
}

// steadyTotal is what the slow-but-steady tests send: more than the kernel's
// buffers between server and reader (up to 4 MiB of send buffer here) plus
// the high watermark, so that the producer is held back.
const steadyTotal = 8 << 20

// A driver that reads slowly but steadily — about 1 MB/s, from a producer
// that could send far faster — is never cut, however long it stays behind,
// and gets every byte in order: the producer waits for it.
func TestSlowButSteadyDriverIsNeverCut(t *testing.T) {
	forEachKind(t, func(t *testing.T, k channelKind) {
		const total = steadyTotal
		s := startRobustServer(t, k, "DISPATCH_STALL_TIMEOUT=1s", "LOG_LEVEL=info")
		metrics := s.MetricsAddr(t)
		slow, ch := k.open(t, s, testkit.Localhost, testkit.ReceiveBuffer(16<<10))
		producer := connect(t, s, k, ch, testkit.Localhost)
		if _, _, err := slow.NextMessage(); err != nil { // OPENED
			t.Fatal(err)
		}
		flooded := make(chan error, 1)
		go func() { flooded <- flood(producer, total) }()

		var got int64
		start := time.Now()
		for got < total {
			m := slow.NextParsed()
			if !testkit.PatternMatches(0, got, m.Data) {
				t.Fatalf("%d bytes at offset %d are not what the producer sent", len(m.Data), got)
			}
			got += int64(len(m.Data))
			// Pace the reader at about 1 MB/s: this is the behaviour under
			// test, not synchronisation.
			if ahead := time.Duration(got)*time.Second/1e6 - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		if err := <-flooded; err != nil {
			t.Fatalf("producer: %v", err)
		}
		testkit.ExpectMetric(t, metrics, 0, "dispatch_ends_total", "kind", kindName(k), "role", "driver", "reason", "stalled")
		testkit.ExpectMetric(t, metrics, 0, "dispatch_ends_total", "kind", kindName(k), "role", "driver", "reason", "slow")
		testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_pauses_total", "kind", kindName(k), "role", producerRole(k))
		k.waitCounts(t, s, ch, 1, 1)
	})
}

// While a producer is held back its own writes stall: the server stops
// reading it, so its TCP window closes. This fails if a gnet upgrade
// silently breaks pausing (the server would go on reading into memory
// until the driver's hard bound cut it).
func TestHeldBackDeviceWritesStall(t *testing.T) {
	t.Parallel()
	const limit = 16 << 20 // --max-driver-pending: far more than the kernel's buffers hold
	s := startRobustServer(t, dispatchKind{}, "DISPATCH_STALL_TIMEOUT=1m", "DISPATCH_MAX_DRIVER_PENDING="+strconv.Itoa(limit))
	metrics := s.MetricsAddr(t)
	stalled, port := openPortWithReceiveBuffer(t, s, 4096)
	device := testkit.DialDevice(t, testkit.Localhost, port, testkit.ReceiveBuffer(64<<10))
	_ = stalled

	const chunk = 64 << 10
	var sent int64
	for {
		_ = device.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := device.Write(testkit.StreamPattern(0, sent, chunk))
		sent += int64(n)
		if err != nil {
			if !testkit.IsTimeout(err) {
				t.Fatalf("device write after %d bytes: %v; want it to stall", sent, err)
			}
			break
		}
		if sent > 4*limit {
			t.Fatalf("the device wrote %d MiB without stalling: the server is not pausing reads", sent>>20)
		}
	}
	t.Logf("the device's writes stalled after %.1f MiB", float64(sent)/(1<<20))
	testkit.ExpectMetric(t, metrics, 1, "dispatch_paused", "kind", "dispatch", "role", "device")
	testkit.ExpectMetric(t, metrics, 1, "dispatch_blocked", "kind", "dispatch", "role", "driver")
	testkit.ExpectMetric(t, metrics, 0, "dispatch_ends_total", "kind", "dispatch", "role", "driver", "reason", "slow")
}

// openPortWithReceiveBuffer opens a fresh TCP port with a driver whose
// socket has a small receive buffer.
func openPortWithReceiveBuffer(t *testing.T, s testkit.Server, size int) (*testkit.Driver, int) {
	t.Helper()
	var d *testkit.Driver
	port := testkit.OnFreePort(t, testkit.FreeTCPPort, func(port int) error {
		var err error
		d, err = testkit.DialDriver(t, s, testkit.DispatchTarget("/api/dispatch/v1", "tcp", port, testkit.Localhost),
			testkit.DriverHeader(s), testkit.ReceiveBuffer(size))
		return err
	})
	return d, port
}

// In a socket group, a member that never reads holds the group's senders
// back until it has drained nothing for the stall timeout; it is then cut,
// and a member that reads gets every byte the sender sent, in order.
func TestGroupStalledMemberHoldsTheGroupBackUntilCut(t *testing.T) {
	t.Parallel()
	const total = 64 << 20
	k := groupKind{}
	s := startRobustServer(t, k, "DISPATCH_STALL_TIMEOUT=2s", "LOG_LEVEL=info")
	metrics := s.MetricsAddr(t)
	ch := k.newChannel(t)
	sender := connect(t, s, k, ch, testkit.Localhost)
	healthy := connect(t, s, k, ch, testkit.Localhost)
	stalled := connect(t, s, k, ch, testkit.Localhost, testkit.ReceiveBuffer(4096))
	testkit.WaitGroupMembers(t, s, "tcp", ch.group, 3)

	bc := testkit.NewBroadcaster()
	reader := newStreamReader(healthy, 0, bc)
	go reader.run()
	flooded := make(chan error, 1)
	go func() { flooded <- flood(sender, total) }()
	if !bc.WaitUntil(2*time.Minute, func() bool { return reader.failed() || reader.got.Load() == total }) || reader.failed() {
		t.Fatalf("healthy member: got %d of %d bytes; error: %v", reader.got.Load(), total, reader.err())
	}
	if err := <-flooded; err != nil {
		t.Fatalf("sender: %v", err)
	}
	testkit.ExpectMetric(t, metrics, 1, "dispatch_ends_total", "kind", "groups", "role", "member", "reason", "stalled")
	testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_pauses_total", "kind", "groups", "role", "member")
	testkit.WaitGroupMembers(t, s, "tcp", ch.group, 2)
	_ = stalled.SetReadDeadline(time.Now().Add(testkit.EventTimeout))
	buf := make([]byte, 64<<10)
	for {
		if _, err := stalled.Read(buf); err != nil {
			if testkit.IsTimeout(err) {
				t.Fatal("the stalled member was not disconnected")
			}
			break
		}
	}
	if errors.Is(reader.err(), net.ErrClosed) {
		t.Fatal("the healthy member was disconnected")
	}
}

// A member that reads slowly but steadily is never cut, and gets every byte.
func TestGroupSlowButSteadyMemberIsNeverCut(t *testing.T) {
	t.Parallel()
	const total = steadyTotal
	k := groupKind{}
	s := startRobustServer(t, k, "DISPATCH_STALL_TIMEOUT=1s", "LOG_LEVEL=info")
	metrics := s.MetricsAddr(t)
	ch := k.newChannel(t)
	sender := connect(t, s, k, ch, testkit.Localhost)
	slow := connect(t, s, k, ch, testkit.Localhost, testkit.ReceiveBuffer(16<<10))
	testkit.WaitGroupMembers(t, s, "tcp", ch.group, 2)
	flooded := make(chan error, 1)
	go func() { flooded <- flood(sender, total) }()

	buf := make([]byte, 32<<10)
	var got int64
	start := time.Now()
	for got < total {
		_ = slow.SetReadDeadline(time.Now().Add(testkit.EventTimeout))
		n, err := slow.Read(buf)
		if err != nil {
			t.Fatalf("slow member after %d bytes: %v", got, err)
		}
		if !testkit.PatternMatches(0, got, buf[:n]) {
			t.Fatalf("%d bytes at offset %d are not what the sender sent", n, got)
		}
		got += int64(n)
		if ahead := time.Duration(got)*time.Second/1e6 - time.Since(start); ahead > 0 {
			time.Sleep(ahead) // pacing the reader at about 1 MB/s, not synchronisation
		}
	}
	if err := <-flooded; err != nil {
		t.Fatalf("sender: %v", err)
	}
	testkit.ExpectMetric(t, metrics, 0, "dispatch_ends_total", "kind", "groups", "role", "member", "reason", "stalled")
	testkit.ExpectMetric(t, metrics, 0, "dispatch_ends_total", "kind", "groups", "role", "member", "reason", "slow")
	testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_pauses_total", "kind", "groups", "role", "member")
}
