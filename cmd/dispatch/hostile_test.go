package main

// Robustness, part one: slow and hostile peers ("never wedge, never leak").
// Every test runs the real binary. One misbehaving peer must be cut off
// alone — with the documented close code or status, a counter and a log
// line — while every other driver and device on the same server keeps
// working. The helpers at the bottom are shared with exhaustion_test.go,
// soak_test.go and secrets_test.go.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// ---------------------------------------------------------------------------
// 1. A slow driver is cut alone, and memory stays bounded.

func TestSlowDriverIsCutAloneAndMemoryStaysBounded(t *testing.T) {
	t.Parallel()
	const (
		pendingLimit = 1 << 20  // --max-driver-pending
		perDevice    = 24 << 20 // bytes each device streams
		chunk        = 32 << 10
		window       = 256 << 10 // bytes a device may be ahead of the slowest fast driver
	)
	s := startRobustServer(t, "DISPATCH_MAX_DRIVER_PENDING="+strconv.Itoa(pendingLimit), "LOG_LEVEL=info")
	metrics := s.MetricsAddr(t)

	first, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	fast := []*testkit.Driver{first, testkit.TCPDriver(t, s, port, testkit.Localhost), testkit.TCPDriver(t, s, port, testkit.Localhost)}
	// The slow driver's tiny receive buffer keeps the kernel from hiding its backlog.
	slow, err := testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.BasePath, "tcp", port, testkit.Localhost), testkit.DriverHeader(s), testkit.ReceiveBuffer(4096))
	if err != nil {
		t.Fatalf("slow driver: %v", err)
	}
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 4, 0))

	sampler := testkit.StartRSSSampler(t, s.PID())
	baseline := sampler.First()

	bc := testkit.NewBroadcaster()
	readers := make([]*patternReader, len(fast))
	for i, d := range fast {
		readers[i] = newPatternReader(d, testkit.Localhost, 2, bc)
		go readers[i].run()
	}
	const devices = 2
	conns := make([]*net.TCPConn, devices)
	for k := range devices {
		conns[k] = testkit.DialDevice(t, testkit.Localhost, port)
		for _, r := range readers {
			if !bc.WaitUntil(testkit.EventTimeout, func() bool { return r.opened[k].Load() || r.failed() }) {
				t.Fatalf("a fast driver never got OPENED for device %d", k)
			}
		}
	}

	// Once it has been cut, the slow driver reads at last: it must find its
	// stream ended by close 1008 (after whatever output was already queued).
	type slowResult struct {
		code ws.StatusCode
		data int64
		err  error
	}
	slowDone := make(chan slowResult, 1)
	go func() {
		if !testkit.Poll(2*time.Minute, func() bool { return testkit.CountLines(s.Logs(), "driver not keeping up") > 0 }) {
			slowDone <- slowResult{err: errors.New("never cut")}
			return
		}
		code, data, err := slow.ReadToClose(testkit.EventTimeout, nil)
		slowDone <- slowResult{code, data, err}
	}()

	// Devices stream, paced by the fast drivers only: a fast driver is never
	// more than devices*window bytes behind, far below the bound.
	var wg sync.WaitGroup
	writeErrs := make(chan error, devices)
	for k := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sent int64
			for sent < perDevice {
				ok := bc.WaitUntil(2*testkit.EventTimeout, func() bool {
					for _, r := range readers {
						if r.failed() || sent-r.got[k].Load() >= window {
							return r.failed()
						}
					}
					return true
				})
				if !ok {
					writeErrs <- fmt.Errorf("device %d: fast drivers stopped making progress at %d bytes", k, sent)
					return
				}
				for _, r := range readers {
					if r.failed() {
						writeErrs <- fmt.Errorf("device %d: a fast driver failed", k)
						return
					}
				}
				n := min(chunk, perDevice-int(sent))
				_ = conns[k].SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
				if _, err := conns[k].Write(testkit.StreamPattern(k, sent, n)); err != nil {
					writeErrs <- fmt.Errorf("device %d: %v", k, err)
					return
				}
				sent += int64(n)
			}
		}()
	}
	wg.Wait()
	close(writeErrs)
	for err := range writeErrs {
		t.Error(err)
	}
	for i, r := range readers {
		if !bc.WaitUntil(2*testkit.EventTimeout, func() bool {
			return r.failed() || r.got[0].Load() == perDevice && r.got[1].Load() == perDevice
		}) || r.failed() {
			t.Fatalf("fast driver %d: got %d and %d of %d bytes; error: %v", i, r.got[0].Load(), r.got[1].Load(), perDevice, r.err())
		}
	}
	peak := sampler.Stop()
	t.Logf("server VmRSS: baseline %s, peak %s while streaming %d MiB past a driver that never reads",
		testkit.MiB(baseline), testkit.MiB(peak), 2*perDevice>>20)

	// Cut exactly once, counted, one log line; the fast drivers stay.
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 3, 2))
	if n := testkit.CountLines(s.Logs(), "driver not keeping up"); n != 1 {
		t.Errorf("%d log lines about the slow driver, want exactly 1", n)
	}
	testkit.ExpectMetric(t, metrics, 1, "dispatch_forced_disconnects_total", "kind", "slow_driver")
	// Memory: the bound is 1 MiB per driver; allow the arena (4 MiB), gnet's
	// buffers and the garbage collector's headroom, but nowhere near the
	// 48 MiB that an unbounded backlog would have held.
	if bound := baseline + 24<<20; peak > bound {
		t.Errorf("server RSS peaked at %s, over the bound %s (baseline %s)", testkit.MiB(peak), testkit.MiB(bound), testkit.MiB(baseline))
	}

	// The fast drivers see both devices close, and nothing else.
	for _, c := range conns {
		c.Close()
	}
	for i, r := range readers {
		if !bc.WaitUntil(testkit.EventTimeout, func() bool { return r.failed() || r.closed[0].Load() && r.closed[1].Load() }) || r.failed() {
			t.Errorf("fast driver %d: CLOSED for both devices not seen: %v", i, r.err())
		}
	}

	// The slow driver, reading since its cut, found its stream ended by close 1008.
	select {
	case r := <-slowDone:
		if r.err != nil {
			t.Errorf("slow driver: read %d bytes of data frames, then %v; want a close frame 1008 after them", r.data, r.err)
		} else if r.code != ws.StatusPolicyViolation {
			t.Errorf("slow driver: close code %d, want 1008", r.code)
		}
	case <-time.After(2 * testkit.EventTimeout):
		t.Error("slow driver: still reading 10 s after the streams ended")
	}
}

// A burst that the kernel takes at once is not a backlog: a driver whose
// socket can absorb everything must not be cut just because one pass of the
// loop produced more than --max-driver-pending for it.
func TestBurstTheKernelAbsorbsIsNotASlowDriver(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10 // the smallest bound the server accepts
	s := startRobustServer(t, "DISPATCH_MAX_DRIVER_PENDING="+strconv.Itoa(limit), "LOG_LEVEL=info")
	metrics := s.MetricsAddr(t)
	port := testkit.FreeTCPPort(t)
	// 8 MiB of receive buffer: the whole burst fits in the kernel, so the
	// server never holds a byte of unsent output for this driver.
	d, err := testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.BasePath, "tcp", port, testkit.Localhost), testkit.DriverHeader(s), testkit.ReceiveBuffer(8<<20))
	if err != nil {
		t.Fatalf("driver: %v", err)
	}
	device := testkit.DialDevice(t, testkit.Localhost, port)
	d.ExpectOpened(testkit.Localhost, 0)
	const burst = 1 << 20
	testkit.Send(t, device, testkit.StreamPattern(0, 0, burst))
	got := d.ExpectStream(testkit.Localhost, 0, burst)
	if !bytes.Equal(got, testkit.StreamPattern(0, 0, burst)) {
		t.Fatal("burst corrupted")
	}
	testkit.ExpectMetric(t, metrics, 0, "dispatch_forced_disconnects_total", "kind", "slow_driver")
}

// ---------------------------------------------------------------------------
// 2. A device that never reads is closed at its bound; nothing else slows.

func TestSlowDeviceIsClosedAloneAndOthersKeepRoundTripping(t *testing.T) {
	t.Parallel()
	const limit = 256 << 10 // --max-device-pending
	s := startRobustServer(t, "DISPATCH_MAX_DEVICE_PENDING="+strconv.Itoa(limit))
	metrics := s.MetricsAddr(t)
	const stuckIP, livelyIP = "127.0.0.2", "127.0.0.3"
	accept := stuckIP + "," + livelyIP
	writer, port := testkit.OpenPort(t, s, "tcp", accept)
	observer := testkit.TCPDriver(t, s, port, accept)

	stuck := testkit.DialDevice(t, stuckIP, port, testkit.ReceiveBuffer(4096)) // never reads
	writer.ExpectOpened(stuckIP, 0)
	observer.ExpectOpened(stuckIP, 0)
	lively := testkit.DialDevice(t, livelyIP, port)
	writer.ExpectOpened(livelyIP, 1)
	observer.ExpectOpened(livelyIP, 1)

	// The writer floods the stuck device from its own goroutine.
	stop := make(chan struct{})
	flooded := make(chan error, 1)
	var written atomic.Int64
	go func() {
		msg := codec.AppendMessage(nil, codec.Write, []byte(stuckIP), 0, bytes.Repeat([]byte{'w'}, 16<<10))
		for written.Load() < 256<<20 {
			select {
			case <-stop:
				flooded <- nil
				return
			default:
			}
			_ = writer.Conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
			if err := wsutil.WriteClientBinary(writer.Conn, msg); err != nil {
				flooded <- err
				return
			}
			written.Add(int64(len(msg)))
		}
		flooded <- errors.New("256 MiB written to a device that never reads, and it is still open")
	}()

	// Meanwhile the lively device round-trips through the observer, and
	// both drivers must see CLOSED for the stuck one.
	writerSawClosed, observerSawClosed := false, false
	afterCut := 0
	for round := 0; afterCut < 3; round++ {
		if round > 10000 {
			t.Fatal("no CLOSED for the stuck device after 10000 round trips")
		}
		ping := fmt.Appendf(nil, "ping-%d", round)
		observer.Write(livelyIP, 1, ping)
		testkit.ExpectReceives(t, lively, ping)
		pong := fmt.Appendf(nil, "pong-%d", round)
		testkit.Send(t, lively, pong)
		for _, x := range []struct {
			d   *testkit.Driver
			saw *bool
		}{{writer, &writerSawClosed}, {observer, &observerSawClosed}} {
			var got []byte
			for len(got) < len(pong) {
				m := x.d.NextParsed()
				switch {
				case m.Type == codec.Closed && string(m.IP) == stuckIP && m.ID == 0 && !*x.saw:
					*x.saw = true
				case m.Type == codec.Received && string(m.IP) == livelyIP && m.ID == 1:
					got = append(got, m.Data...)
				default:
					t.Fatalf("unexpected %s while waiting for %q", testkit.Describe(codec.AppendMessage(nil, m.Type, m.IP, m.ID, m.Data)), pong)
				}
			}
			if !bytes.Equal(got, pong) {
				t.Fatalf("got %q, want %q", got, pong)
			}
		}
		if writerSawClosed && observerSawClosed {
			afterCut++
		}
	}
	close(stop)
	if err := <-flooded; err != nil {
		t.Fatalf("writer: %v", err)
	}
	t.Logf("the stuck device was closed after %d KiB of WRITEs", written.Load()>>10)

	testkit.ExpectDisconnectedEventually(t, stuck)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 2, 1))
	if n := testkit.CountLines(s.Logs(), "device not reading"); n != 1 {
		t.Errorf("%d log lines about the stuck device, want exactly 1", n)
	}
	testkit.ExpectMetric(t, metrics, 1, "dispatch_forced_disconnects_total", "kind", "slow_device")
	// The writer's session survived its own flood.
	writer.Write(livelyIP, 1, []byte("after"))
	testkit.ExpectReceives(t, lively, []byte("after"))
}

// ---------------------------------------------------------------------------
// 3. Slow and hostile HTTP clients.

func TestHandshakeDeadlineClosesSilentAndTricklingClients(t *testing.T) {
	t.Parallel()
	s := startRobustServer(t, "DISPATCH_HANDSHAKE_TIMEOUT=1s")
	metrics := s.MetricsAddr(t)
	w := newWitness(t, s)

	silent := testkit.DialRaw(t, s)
	trickling := testkit.DialRaw(t, s)
	head := "GET " + testkit.BasePath + "/healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + strings.Repeat("p", 40) + "\r\n\r\n"
	// The trickling client paces its own writes: one byte a second, a head
	// that would take over a minute to complete.
	tricklingDone := make(chan int, 1)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		sent := 0
		for sent < len(head) {
			_ = trickling.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
			if _, err := trickling.Write([]byte{head[sent]}); err != nil {
				break
			}
			sent++
			<-tick.C
		}
		tricklingDone <- sent
	}()

	// While they hold their connections open, everyone else is served.
	w.check(t)
	testkit.ExpectResponse(t, "healthz", testkit.Get(t, s, testkit.BasePath+"/healthz"), http.StatusOK, "", "")

	// Both are closed at the deadline; never asserted to the millisecond,
	// only well before the trickled head could have completed.
	limit := 20 * time.Second
	testkit.ExpectClosedWithoutAnswer(t, "silent client", silent, limit)
	testkit.ExpectClosedWithoutAnswer(t, "trickling client", trickling, limit)
	if sent := <-tricklingDone; sent >= len(head) {
		t.Errorf("the trickling client sent its whole head (%d bytes) before being closed", sent)
	}
	w.check(t)
	testkit.ExpectMetricAtLeast(t, metrics, 2, "dispatch_handshake_failures_total", "reason", "timeout")
}

func TestOversizedHeadIs431AndGarbageIs400(t *testing.T) {
	t.Parallel()
	s := startRobustServer(t)
	metrics := s.MetricsAddr(t)
	w := newWitness(t, s)
	upgrade := "GET " + testkit.DispatchTarget(testkit.BasePath, "tcp", w.port, testkit.Localhost) + " HTTP/1.1\r\nHost: x\r\n" +
		"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + testkit.BearerHeader(s) + "\r\n"
	blob := make([]byte, 300)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range blob {
		blob[i] = byte(rng.IntN(256))
	}
	blob[0], blob[150] = 0x16, '\n'
	cases := []struct {
		name   string
		raw    string
		status int
	}{
		{"one huge header", "GET " + testkit.BasePath + " HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", 9000) + "\r\n\r\n", 431},
		{"many headers, no end", "GET " + testkit.BasePath + "/healthz HTTP/1.1\r\n" + strings.Repeat("X-A: b\r\n", 1200), 431},
		{"oversized upgrade", upgrade + "X-Pad: " + strings.Repeat("z", 8500) + "\r\n\r\n", 431},
		{"huge request line", "GET /" + strings.Repeat("x", 9000) + " HTTP/1.1\r\n\r\n", 431},
		{"TLS client hello", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400},
		{"not HTTP", "HELLO THERE\r\n\r\n", 400},
		{"lowercase method", "get " + testkit.BasePath + " HTTP/1.1\r\n\r\n", 400},
		{"no version", "GET " + testkit.BasePath + "\r\n\r\n", 400},
		{"bad header line", "GET " + testkit.BasePath + "/healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400},
		{"random bytes", string(blob), 400},
	}
	for _, c := range cases {
		conn := testkit.DialRaw(t, s)
		_ = conn.SetDeadline(time.Now().Add(testkit.EventTimeout))
		if _, err := io.WriteString(conn, c.raw); err != nil {
			t.Fatalf("%s: writing: %v", c.name, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Errorf("%s: no response: %v", c.name, err)
		} else {
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Errorf("%s: status %d, want %d", c.name, resp.StatusCode, c.status)
			}
		}
		testkit.ExpectClosedWithoutAnswer(t, c.name+" (after the answer)", conn, testkit.EventTimeout)
		w.check(t)
	}
	testkit.ExpectMetricAtLeast(t, metrics, 4, "dispatch_handshake_failures_total", "reason", "head_too_large")
}

func TestOversizedFrameIsClosed1009FromItsHeader(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	s := startRobustServer(t, "DISPATCH_MAX_MESSAGE_BYTES="+strconv.Itoa(limit))
	metrics := s.MetricsAddr(t)
	w := newWitness(t, s)

	cases := []struct {
		name string
		send [][]byte
	}{
		// Only headers are sent: a server that waited for the payload would
		// never answer, so a close proves the decision was made from the header.
		{"1 TiB announced", [][]byte{testkit.RawFrameHeader(true, ws.OpBinary, 1<<40)}},
		{"2^63-1 announced", [][]byte{testkit.RawFrameHeader(true, ws.OpBinary, 1<<63-1)}},
		{"one byte past the limit", [][]byte{testkit.RawFrameHeader(true, ws.OpBinary, limit+1)}},
		{"text message past the limit", [][]byte{testkit.RawFrameHeader(true, ws.OpText, limit+1)}},
		{"fragments past the limit", [][]byte{
			testkit.RawClientFrame(false, 0, ws.OpBinary, true, make([]byte, limit/2+100)),
			testkit.RawFrameHeader(true, ws.OpContinuation, limit/2),
		}},
	}
	for _, c := range cases {
		d := testkit.TCPDriver(t, s, w.port, testkit.Localhost)
		testkit.WaitForStats(t, s, testkit.TCPStats(w.port, 2, 1))
		for _, b := range c.send {
			if _, err := d.Conn.Write(b); err != nil {
				t.Fatalf("%s: writing: %v", c.name, err)
			}
		}
		code, _, err := d.ReadToClose(testkit.EventTimeout, nil)
		if err != nil || code != ws.StatusMessageTooBig {
			t.Errorf("%s: close code %d (%v), want 1009", c.name, code, err)
		}
		testkit.WaitForStats(t, s, testkit.TCPStats(w.port, 1, 1))
		w.check(t)
	}

	// A message of exactly the limit is accepted.
	d := testkit.TCPDriver(t, s, w.port, testkit.Localhost)
	msg := codec.AppendMessage(nil, codec.Write, []byte(testkit.Localhost), 999, nil)
	msg = codec.AppendMessage(nil, codec.Write, []byte(testkit.Localhost), 999, make([]byte, limit-len(msg)))
	d.Send(msg)
	if err := wsutil.WriteClientMessage(d.Conn, ws.OpPing, []byte("still there?")); err != nil {
		t.Fatal(err)
	}
	if h, payload, err := d.ReadFrame(); err != nil || h.OpCode != ws.OpPong || string(payload) != "still there?" {
		t.Fatalf("after a message of exactly the limit: %v frame %q, %v; want the pong", h.OpCode, payload, err)
	}
	d.Leave()
	testkit.WaitForStats(t, s, testkit.TCPStats(w.port, 1, 1))
	w.check(t)
	testkit.ExpectMetricAtLeast(t, metrics, 4, "dispatch_forced_disconnects_total", "kind", "oversize_message")
}

func TestFrameViolationsGetRFC6455CloseCodes(t *testing.T) {
	t.Parallel()
	s := startRobustServer(t)
	metrics := s.MetricsAddr(t)
	w := newWitness(t, s)
	valid := codec.AppendMessage(nil, codec.Write, []byte(testkit.Localhost), 999, []byte("x"))
	closeBody := func(code uint16, reason string) []byte {
		return append(binary.BigEndian.AppendUint16(nil, code), reason...)
	}
	cases := []struct {
		name string
		send [][]byte
		code ws.StatusCode
	}{
		{"unmasked frame", [][]byte{testkit.RawClientFrame(true, 0, ws.OpBinary, false, valid)}, ws.StatusProtocolError},
		{"RSV1 set", [][]byte{testkit.RawClientFrame(true, 4, ws.OpBinary, true, valid)}, ws.StatusProtocolError},
		{"RSV2 set", [][]byte{testkit.RawClientFrame(true, 2, ws.OpBinary, true, valid)}, ws.StatusProtocolError},
		{"RSV3 set", [][]byte{testkit.RawClientFrame(true, 1, ws.OpBinary, true, valid)}, ws.StatusProtocolError},
		{"reserved data opcode 0x3", [][]byte{testkit.RawClientFrame(true, 0, 0x3, true, valid)}, ws.StatusProtocolError},
		{"reserved control opcode 0xB", [][]byte{testkit.RawClientFrame(true, 0, 0xB, true, nil)}, ws.StatusProtocolError},
		{"close reason not UTF-8", [][]byte{testkit.RawClientFrame(true, 0, ws.OpClose, true, closeBody(1000, "\xff\xfe\xfd"))}, ws.StatusInvalidFramePayloadData},
		{"close payload of one byte", [][]byte{testkit.RawClientFrame(true, 0, ws.OpClose, true, []byte{0x03})}, ws.StatusProtocolError},
		{"close code 1005 on the wire", [][]byte{testkit.RawClientFrame(true, 0, ws.OpClose, true, closeBody(1005, ""))}, ws.StatusProtocolError},
		{"ping longer than 125", [][]byte{testkit.RawClientFrame(true, 0, ws.OpPing, true, make([]byte, 126))}, ws.StatusProtocolError},
		{"fragmented ping", [][]byte{testkit.RawClientFrame(false, 0, ws.OpPing, true, nil)}, ws.StatusProtocolError},
		{"continuation without a start", [][]byte{testkit.RawClientFrame(true, 0, ws.OpContinuation, true, valid)}, ws.StatusProtocolError},
		{"new message inside a fragmented one", [][]byte{
			testkit.RawClientFrame(false, 0, ws.OpBinary, true, valid[:5]),
			testkit.RawClientFrame(true, 0, ws.OpBinary, true, valid),
		}, ws.StatusProtocolError},
		{"text message not UTF-8", [][]byte{testkit.RawClientFrame(true, 0, ws.OpText, true, []byte("\xc3\x28"))}, ws.StatusInvalidFramePayloadData},
	}
	for _, c := range cases {
		d := testkit.TCPDriver(t, s, w.port, testkit.Localhost)
		testkit.WaitForStats(t, s, testkit.TCPStats(w.port, 2, 1))
		for _, b := range c.send {
			if _, err := d.Conn.Write(b); err != nil {
				t.Fatalf("%s: writing: %v", c.name, err)
			}
		}
		code, _, err := d.ReadToClose(testkit.EventTimeout, nil)
		if err != nil || code != c.code {
			t.Errorf("%s: close code %d (%v), want %d", c.name, code, err, c.code)
		}
		testkit.WaitForStats(t, s, testkit.TCPStats(w.port, 1, 1))
		w.check(t)
	}
	testkit.ExpectMetricAtLeast(t, metrics, 8, "dispatch_parse_errors_total", "kind", "websocket_protocol")
}

// ---------------------------------------------------------------------------
// Shared helpers (robustness suite).

// startRobustServer starts the binary with metrics on a free loopback port
// and device ports bound to 127.0.0.1; env adds or overrides variables
// (every flag has one; the last value wins).
func startRobustServer(t *testing.T, env ...string) *testkit.Process {
	t.Helper()
	return testkit.Start(t, append([]string{"DISPATCH_METRICS_ADDR=127.0.0.1:0", "DISPATCH_DEVICE_HOST=" + testkit.Localhost}, env...)...)
}

// patternReader reads a driver's messages on its own goroutine and checks
// that TCP client k (k < n, ids in dial order) sends exactly stream k:
// OPENED first, then the stream in order, then CLOSED.
type patternReader struct {
	d      *testkit.Driver
	ip     string
	bc     *testkit.Broadcaster
	opened []atomic.Bool
	closed []atomic.Bool
	got    []atomic.Int64
	errMu  sync.Mutex
	error  error
	dead   atomic.Bool
}

func newPatternReader(d *testkit.Driver, ip string, n int, bc *testkit.Broadcaster) *patternReader {
	return &patternReader{d: d, ip: ip, bc: bc, opened: make([]atomic.Bool, n), closed: make([]atomic.Bool, n), got: make([]atomic.Int64, n)}
}

func (r *patternReader) fail(err error) {
	r.errMu.Lock()
	if r.error == nil {
		r.error = err
	}
	r.errMu.Unlock()
	r.dead.Store(true)
	r.bc.Notify()
}

func (r *patternReader) failed() bool { return r.dead.Load() }

func (r *patternReader) err() error {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	return r.error
}

func (r *patternReader) run() {
	for {
		_ = r.d.Conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		h, err := ws.ReadHeader(r.d.Reader)
		if err != nil {
			r.fail(fmt.Errorf("reading a frame header: %w", err))
			return
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(r.d.Reader, payload); err != nil {
			r.fail(fmt.Errorf("reading a frame: %w", err))
			return
		}
		if h.OpCode == ws.OpClose {
			code, reason := ws.ParseCloseFrameData(payload)
			r.fail(fmt.Errorf("close frame %d %q", code, reason))
			return
		}
		if h.OpCode != ws.OpBinary || !h.Fin {
			r.fail(fmt.Errorf("unexpected %v frame (fin %v)", h.OpCode, h.Fin))
			return
		}
		m, err := codec.ParseMessage(payload)
		if err != nil || string(m.IP) != r.ip || m.ID >= uint64(len(r.got)) {
			r.fail(fmt.Errorf("unexpected message %s", testkit.Describe(payload)))
			return
		}
		k := int(m.ID)
		switch {
		case m.Type == codec.Opened && !r.opened[k].Load():
			r.opened[k].Store(true)
		case m.Type == codec.Received && r.opened[k].Load() && !r.closed[k].Load():
			off := r.got[k].Load()
			if !testkit.PatternMatches(k, off, m.Data) {
				r.fail(fmt.Errorf("client %d: %d bytes at offset %d are not what the device sent", k, len(m.Data), off))
				return
			}
			r.got[k].Add(int64(len(m.Data)))
		case m.Type == codec.Closed && r.opened[k].Load() && !r.closed[k].Load():
			r.closed[k].Store(true)
		default:
			r.fail(fmt.Errorf("out of order: %s", testkit.Describe(payload)))
			return
		}
		r.bc.Notify()
	}
}

// witness is a driver and a device on their own port that prove, between
// hostile acts, that the server still serves everyone else.
type witness struct {
	s    *testkit.Process
	d    *testkit.Driver
	dev  *net.TCPConn
	port int
	n    int
}

func newWitness(t *testing.T, s *testkit.Process) *witness {
	t.Helper()
	d, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	dev := testkit.DialDevice(t, testkit.Localhost, port)
	d.ExpectOpened(testkit.Localhost, 0)
	return &witness{s: s, d: d, dev: dev, port: port}
}

// check round-trips one message each way.
func (w *witness) check(t *testing.T) {
	t.Helper()
	w.n++
	up := fmt.Appendf(nil, "witness up %d", w.n)
	testkit.Send(t, w.dev, up)
	if got := w.d.ExpectStream(testkit.Localhost, 0, len(up)); !bytes.Equal(got, up) {
		t.Fatalf("witness driver got %q, want %q", got, up)
	}
	down := fmt.Appendf(nil, "witness down %d", w.n)
	w.d.Write(testkit.Localhost, 0, down)
	testkit.ExpectReceives(t, w.dev, down)
}
