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
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
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
	metrics := s.metricsAddress(t)

	first, port := s.openPort(t, "tcp", localhost)
	fast := []*driver{first, s.tcpDriver(t, port, localhost), s.tcpDriver(t, port, localhost)}
	// The slow driver's tiny receive buffer keeps the kernel from hiding its backlog.
	slow, err := dialDriverWithRcvbuf(t, s, dispatchTarget(basePath, "tcp", port, localhost), 4096)
	if err != nil {
		t.Fatalf("slow driver: %v", err)
	}
	s.waitForStats(t, tcpStats(port, 4, 0))

	sampler := startRSSSampler(t, s.pid())
	baseline := sampler.first()

	bc := newBroadcaster()
	readers := make([]*patternReader, len(fast))
	for i, d := range fast {
		readers[i] = newPatternReader(d, localhost, 2, bc)
		go readers[i].run()
	}
	const devices = 2
	conns := make([]*net.TCPConn, devices)
	for k := range devices {
		conns[k] = dialDevice(t, localhost, port)
		for _, r := range readers {
			if !bc.waitUntil(eventTimeout, func() bool { return r.opened[k].Load() || r.failed() }) {
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
		if !pollCond(2*time.Minute, func() bool { return countLogLines(s.logs.String(), "driver not keeping up") > 0 }) {
			slowDone <- slowResult{err: errors.New("never cut")}
			return
		}
		code, data, err := readToClose(slow, eventTimeout)
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
				ok := bc.waitUntil(2*eventTimeout, func() bool {
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
				_ = conns[k].SetWriteDeadline(time.Now().Add(eventTimeout))
				if _, err := conns[k].Write(streamPattern(k, sent, n)); err != nil {
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
		if !bc.waitUntil(2*eventTimeout, func() bool {
			return r.failed() || r.got[0].Load() == perDevice && r.got[1].Load() == perDevice
		}) || r.failed() {
			t.Fatalf("fast driver %d: got %d and %d of %d bytes; error: %v", i, r.got[0].Load(), r.got[1].Load(), perDevice, r.err())
		}
	}
	peak := sampler.stop()
	t.Logf("server VmRSS: baseline %s, peak %s while streaming %d MiB past a driver that never reads",
		mib(baseline), mib(peak), 2*perDevice>>20)

	// Cut exactly once, counted, one log line; the fast drivers stay.
	s.waitForStats(t, tcpStats(port, 3, 2))
	if n := countLogLines(s.logs.String(), "driver not keeping up"); n != 1 {
		t.Errorf("%d log lines about the slow driver, want exactly 1", n)
	}
	expectMetric(t, metrics, 1, "dispatch_forced_disconnects_total", "kind", "slow_driver")
	// Memory: the bound is 1 MiB per driver; allow the arena (4 MiB), gnet's
	// buffers and the garbage collector's headroom, but nowhere near the
	// 48 MiB that an unbounded backlog would have held.
	if bound := baseline + 24<<20; peak > bound {
		t.Errorf("server RSS peaked at %s, over the bound %s (baseline %s)", mib(peak), mib(bound), mib(baseline))
	}

	// The fast drivers see both devices close, and nothing else.
	for _, c := range conns {
		c.Close()
	}
	for i, r := range readers {
		if !bc.waitUntil(eventTimeout, func() bool { return r.failed() || r.closed[0].Load() && r.closed[1].Load() }) || r.failed() {
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
	case <-time.After(2 * eventTimeout):
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
	metrics := s.metricsAddress(t)
	port := freeTCPPort(t)
	// 8 MiB of receive buffer: the whole burst fits in the kernel, so the
	// server never holds a byte of unsent output for this driver.
	d, err := dialDriverWithRcvbuf(t, s, dispatchTarget(basePath, "tcp", port, localhost), 8<<20)
	if err != nil {
		t.Fatalf("driver: %v", err)
	}
	device := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)
	const burst = 1 << 20
	deviceSend(t, device, streamPattern(0, 0, burst))
	got := d.expectStream(localhost, 0, burst)
	if !bytes.Equal(got, streamPattern(0, 0, burst)) {
		t.Fatal("burst corrupted")
	}
	expectMetric(t, metrics, 0, "dispatch_forced_disconnects_total", "kind", "slow_driver")
}

// ---------------------------------------------------------------------------
// 2. A device that never reads is closed at its bound; nothing else slows.

func TestSlowDeviceIsClosedAloneAndOthersKeepRoundTripping(t *testing.T) {
	t.Parallel()
	const limit = 256 << 10 // --max-device-pending
	s := startRobustServer(t, "DISPATCH_MAX_DEVICE_PENDING="+strconv.Itoa(limit))
	metrics := s.metricsAddress(t)
	const stuckIP, livelyIP = "127.0.0.2", "127.0.0.3"
	accept := stuckIP + "," + livelyIP
	writer, port := s.openPort(t, "tcp", accept)
	observer := s.tcpDriver(t, port, accept)

	stuck := dialDeviceWithRcvbuf(t, stuckIP, port, 4096) // never reads
	writer.expectOpened(stuckIP, 0)
	observer.expectOpened(stuckIP, 0)
	lively := dialDevice(t, livelyIP, port)
	writer.expectOpened(livelyIP, 1)
	observer.expectOpened(livelyIP, 1)

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
			_ = writer.conn.SetWriteDeadline(time.Now().Add(eventTimeout))
			if err := wsutil.WriteClientBinary(writer.conn, msg); err != nil {
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
		observer.write(livelyIP, 1, ping)
		expectDeviceReceives(t, lively, ping)
		pong := fmt.Appendf(nil, "pong-%d", round)
		deviceSend(t, lively, pong)
		for _, x := range []struct {
			d   *driver
			saw *bool
		}{{writer, &writerSawClosed}, {observer, &observerSawClosed}} {
			var got []byte
			for len(got) < len(pong) {
				m := parseOrFail(t, x.d.next())
				switch {
				case m.Type == codec.Closed && string(m.IP) == stuckIP && m.ID == 0 && !*x.saw:
					*x.saw = true
				case m.Type == codec.Received && string(m.IP) == livelyIP && m.ID == 1:
					got = append(got, m.Data...)
				default:
					t.Fatalf("unexpected %s while waiting for %q", describe(codec.AppendMessage(nil, m.Type, m.IP, m.ID, m.Data)), pong)
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

	expectDisconnectedEventually(t, stuck)
	s.waitForStats(t, tcpStats(port, 2, 1))
	if n := countLogLines(s.logs.String(), "device not reading"); n != 1 {
		t.Errorf("%d log lines about the stuck device, want exactly 1", n)
	}
	expectMetric(t, metrics, 1, "dispatch_forced_disconnects_total", "kind", "slow_device")
	// The writer's session survived its own flood.
	writer.write(livelyIP, 1, []byte("after"))
	expectDeviceReceives(t, lively, []byte("after"))
}

// ---------------------------------------------------------------------------
// 3. Slow and hostile HTTP clients.

func TestHandshakeDeadlineClosesSilentAndTricklingClients(t *testing.T) {
	t.Parallel()
	s := startRobustServer(t, "DISPATCH_HANDSHAKE_TIMEOUT=1s")
	metrics := s.metricsAddress(t)
	w := newWitness(t, s)

	silent := dialRawHTTP(t, s)
	trickling := dialRawHTTP(t, s)
	head := "GET " + basePath + "/healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + strings.Repeat("p", 40) + "\r\n\r\n"
	// The trickling client paces its own writes: one byte a second, a head
	// that would take over a minute to complete.
	tricklingDone := make(chan int, 1)
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		sent := 0
		for sent < len(head) {
			_ = trickling.SetWriteDeadline(time.Now().Add(eventTimeout))
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
	expectResponse(t, "healthz", s.get(t, basePath+"/healthz"), http.StatusOK, "", "")

	// Both are closed at the deadline; never asserted to the millisecond,
	// only well before the trickled head could have completed.
	limit := 20 * time.Second
	expectClosedWithoutAnswer(t, "silent client", silent, limit)
	expectClosedWithoutAnswer(t, "trickling client", trickling, limit)
	if sent := <-tricklingDone; sent >= len(head) {
		t.Errorf("the trickling client sent its whole head (%d bytes) before being closed", sent)
	}
	w.check(t)
	expectMetricAtLeast(t, metrics, 2, "dispatch_handshake_failures_total", "reason", "timeout")
}

func TestOversizedHeadIs431AndGarbageIs400(t *testing.T) {
	t.Parallel()
	s := startRobustServer(t)
	metrics := s.metricsAddress(t)
	w := newWitness(t, s)
	upgrade := "GET " + dispatchTarget(basePath, "tcp", w.port, localhost) + " HTTP/1.1\r\nHost: x\r\n" +
		"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + s.bearerHeader() + "\r\n"
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
		{"one huge header", "GET " + basePath + " HTTP/1.1\r\nHost: x\r\nX-Pad: " + strings.Repeat("a", 9000) + "\r\n\r\n", 431},
		{"many headers, no end", "GET " + basePath + "/healthz HTTP/1.1\r\n" + strings.Repeat("X-A: b\r\n", 1200), 431},
		{"oversized upgrade", upgrade + "X-Pad: " + strings.Repeat("z", 8500) + "\r\n\r\n", 431},
		{"huge request line", "GET /" + strings.Repeat("x", 9000) + " HTTP/1.1\r\n\r\n", 431},
		{"TLS client hello", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400},
		{"not HTTP", "HELLO THERE\r\n\r\n", 400},
		{"lowercase method", "get " + basePath + " HTTP/1.1\r\n\r\n", 400},
		{"no version", "GET " + basePath + "\r\n\r\n", 400},
		{"bad header line", "GET " + basePath + "/healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400},
		{"random bytes", string(blob), 400},
	}
	for _, c := range cases {
		conn := dialRawHTTP(t, s)
		_ = conn.SetDeadline(time.Now().Add(eventTimeout))
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
		expectClosedWithoutAnswer(t, c.name+" (after the answer)", conn, eventTimeout)
		w.check(t)
	}
	expectMetricAtLeast(t, metrics, 4, "dispatch_handshake_failures_total", "reason", "head_too_large")
}

func TestOversizedFrameIsClosed1009FromItsHeader(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	s := startRobustServer(t, "DISPATCH_MAX_MESSAGE_BYTES="+strconv.Itoa(limit))
	metrics := s.metricsAddress(t)
	w := newWitness(t, s)

	cases := []struct {
		name string
		send [][]byte
	}{
		// Only headers are sent: a server that waited for the payload would
		// never answer, so a close proves the decision was made from the header.
		{"1 TiB announced", [][]byte{rawFrameHeader(true, ws.OpBinary, 1<<40)}},
		{"2^63-1 announced", [][]byte{rawFrameHeader(true, ws.OpBinary, 1<<63-1)}},
		{"one byte past the limit", [][]byte{rawFrameHeader(true, ws.OpBinary, limit+1)}},
		{"text message past the limit", [][]byte{rawFrameHeader(true, ws.OpText, limit+1)}},
		{"fragments past the limit", [][]byte{
			rawClientFrame(false, 0, ws.OpBinary, true, make([]byte, limit/2+100)),
			rawFrameHeader(true, ws.OpContinuation, limit/2),
		}},
	}
	for _, c := range cases {
		d := s.tcpDriver(t, w.port, localhost)
		s.waitForStats(t, tcpStats(w.port, 2, 1))
		for _, b := range c.send {
			if _, err := d.conn.Write(b); err != nil {
				t.Fatalf("%s: writing: %v", c.name, err)
			}
		}
		code, _, err := readToClose(d, eventTimeout)
		if err != nil || code != ws.StatusMessageTooBig {
			t.Errorf("%s: close code %d (%v), want 1009", c.name, code, err)
		}
		s.waitForStats(t, tcpStats(w.port, 1, 1))
		w.check(t)
	}

	// A message of exactly the limit is accepted.
	d := s.tcpDriver(t, w.port, localhost)
	msg := codec.AppendMessage(nil, codec.Write, []byte(localhost), 999, nil)
	msg = codec.AppendMessage(nil, codec.Write, []byte(localhost), 999, make([]byte, limit-len(msg)))
	d.send(msg)
	if err := wsutil.WriteClientMessage(d.conn, ws.OpPing, []byte("still there?")); err != nil {
		t.Fatal(err)
	}
	if h, payload, err := d.readFrame(); err != nil || h.OpCode != ws.OpPong || string(payload) != "still there?" {
		t.Fatalf("after a message of exactly the limit: %v frame %q, %v; want the pong", h.OpCode, payload, err)
	}
	d.leave()
	s.waitForStats(t, tcpStats(w.port, 1, 1))
	w.check(t)
	expectMetricAtLeast(t, metrics, 4, "dispatch_forced_disconnects_total", "kind", "oversize_message")
}

func TestFrameViolationsGetRFC6455CloseCodes(t *testing.T) {
	t.Parallel()
	s := startRobustServer(t)
	metrics := s.metricsAddress(t)
	w := newWitness(t, s)
	valid := codec.AppendMessage(nil, codec.Write, []byte(localhost), 999, []byte("x"))
	closeBody := func(code uint16, reason string) []byte {
		return append(binary.BigEndian.AppendUint16(nil, code), reason...)
	}
	cases := []struct {
		name string
		send [][]byte
		code ws.StatusCode
	}{
		{"unmasked frame", [][]byte{rawClientFrame(true, 0, ws.OpBinary, false, valid)}, ws.StatusProtocolError},
		{"RSV1 set", [][]byte{rawClientFrame(true, 4, ws.OpBinary, true, valid)}, ws.StatusProtocolError},
		{"RSV2 set", [][]byte{rawClientFrame(true, 2, ws.OpBinary, true, valid)}, ws.StatusProtocolError},
		{"RSV3 set", [][]byte{rawClientFrame(true, 1, ws.OpBinary, true, valid)}, ws.StatusProtocolError},
		{"reserved data opcode 0x3", [][]byte{rawClientFrame(true, 0, 0x3, true, valid)}, ws.StatusProtocolError},
		{"reserved control opcode 0xB", [][]byte{rawClientFrame(true, 0, 0xB, true, nil)}, ws.StatusProtocolError},
		{"close reason not UTF-8", [][]byte{rawClientFrame(true, 0, ws.OpClose, true, closeBody(1000, "\xff\xfe\xfd"))}, ws.StatusInvalidFramePayloadData},
		{"close payload of one byte", [][]byte{rawClientFrame(true, 0, ws.OpClose, true, []byte{0x03})}, ws.StatusProtocolError},
		{"close code 1005 on the wire", [][]byte{rawClientFrame(true, 0, ws.OpClose, true, closeBody(1005, ""))}, ws.StatusProtocolError},
		{"ping longer than 125", [][]byte{rawClientFrame(true, 0, ws.OpPing, true, make([]byte, 126))}, ws.StatusProtocolError},
		{"fragmented ping", [][]byte{rawClientFrame(false, 0, ws.OpPing, true, nil)}, ws.StatusProtocolError},
		{"continuation without a start", [][]byte{rawClientFrame(true, 0, ws.OpContinuation, true, valid)}, ws.StatusProtocolError},
		{"new message inside a fragmented one", [][]byte{
			rawClientFrame(false, 0, ws.OpBinary, true, valid[:5]),
			rawClientFrame(true, 0, ws.OpBinary, true, valid),
		}, ws.StatusProtocolError},
		{"text message not UTF-8", [][]byte{rawClientFrame(true, 0, ws.OpText, true, []byte("\xc3\x28"))}, ws.StatusInvalidFramePayloadData},
	}
	for _, c := range cases {
		d := s.tcpDriver(t, w.port, localhost)
		s.waitForStats(t, tcpStats(w.port, 2, 1))
		for _, b := range c.send {
			if _, err := d.conn.Write(b); err != nil {
				t.Fatalf("%s: writing: %v", c.name, err)
			}
		}
		code, _, err := readToClose(d, eventTimeout)
		if err != nil || code != c.code {
			t.Errorf("%s: close code %d (%v), want %d", c.name, code, err, c.code)
		}
		s.waitForStats(t, tcpStats(w.port, 1, 1))
		w.check(t)
	}
	expectMetricAtLeast(t, metrics, 8, "dispatch_parse_errors_total", "kind", "websocket_protocol")
}

// ---------------------------------------------------------------------------
// Shared helpers (robustness suite).

// startRobustServer starts the binary with a random secret, debug logs,
// metrics on a free loopback port and device ports bound to 127.0.0.1;
// env adds or overrides variables (every flag has one; the last value wins).
func startRobustServer(t *testing.T, env ...string) *server {
	t.Helper()
	secret := "robust-" + randomHex(t, 12)
	base := []string{
		"PLACE_SERVER_SECRET=" + secret,
		"LOG_LEVEL=debug",
		"DISPATCH_METRICS_ADDR=127.0.0.1:0",
		"DISPATCH_DEVICE_HOST=" + localhost,
	}
	return launchServer(t, secret, append(base, env...)...)
}

func (s *server) pid() int { return s.cmd.Process.Pid }

var metricsAddrRe = regexp.MustCompile(`addr"?[=:]"?([^\s",}]+)`)

// metricsAddress waits for the metrics listener's log line and returns its address.
func (s *server) metricsAddress(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for {
		for _, line := range strings.Split(s.logs.String(), "\n") {
			if strings.Contains(line, "metrics listening") {
				if m := metricsAddrRe.FindStringSubmatch(line); m != nil {
					return m[1]
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no \"metrics listening\" line:\n%s", s.logs.tail(4096))
		}
		time.Sleep(5 * time.Millisecond) // polling the log, not synchronisation
	}
}

// promSeries is one sample of a Prometheus text exposition.
type promSeries struct {
	name   string
	labels map[string]string
	value  float64
}

var metricsClient = &http.Client{Timeout: eventTimeout, Transport: &http.Transport{DisableKeepAlives: true}}

func scrapeMetrics(addr string) ([]promSeries, error) {
	resp, err := metricsClient.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: status %d", resp.StatusCode)
	}
	var out []promSeries
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		series := promSeries{labels: map[string]string{}, value: v}
		key := line[:sp]
		if i := strings.IndexByte(key, '{'); i >= 0 {
			series.name = key[:i]
			for _, kv := range strings.Split(strings.TrimSuffix(key[i+1:], "}"), ",") {
				if k, v, ok := strings.Cut(kv, "="); ok {
					series.labels[k] = strings.Trim(v, `"`)
				}
			}
		} else {
			series.name = key
		}
		out = append(out, series)
	}
	return out, sc.Err()
}

// metricValue sums the series of name whose labels include every given pair.
func metricValue(all []promSeries, name string, labelPairs ...string) (float64, bool) {
	var sum float64
	found := false
	for _, s := range all {
		if s.name != name {
			continue
		}
		match := true
		for i := 0; i+1 < len(labelPairs); i += 2 {
			if s.labels[labelPairs[i]] != labelPairs[i+1] {
				match = false
			}
		}
		if match {
			sum += s.value
			found = true
		}
	}
	return sum, found
}

// scrapeValue scrapes once and returns one metric.
func scrapeValue(t *testing.T, addr, name string, labelPairs ...string) float64 {
	t.Helper()
	all, err := scrapeMetrics(addr)
	if err != nil {
		t.Fatalf("scraping %s: %v", addr, err)
	}
	v, ok := metricValue(all, name, labelPairs...)
	if !ok {
		t.Fatalf("metric %s%v not exported", name, labelPairs)
	}
	return v
}

// expectMetric waits for a counter to reach want (the loop publishes its
// counters a few times a second) and checks it does not pass it.
func expectMetric(t *testing.T, addr string, want float64, name string, labelPairs ...string) {
	t.Helper()
	got := waitMetric(t, addr, func(v float64) bool { return v >= want }, name, labelPairs...)
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labelPairs, got, want)
	}
}

func expectMetricAtLeast(t *testing.T, addr string, want float64, name string, labelPairs ...string) {
	t.Helper()
	if got := waitMetric(t, addr, func(v float64) bool { return v >= want }, name, labelPairs...); got < want {
		t.Errorf("%s%v = %v, want at least %v", name, labelPairs, got, want)
	}
}

func waitMetric(t *testing.T, addr string, ok func(float64) bool, name string, labelPairs ...string) float64 {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for {
		v := scrapeValue(t, addr, name, labelPairs...)
		if ok(v) || time.Now().After(deadline) {
			return v
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
}

// procStatusBytes reads a "kB" field such as VmRSS from /proc/<pid>/status.
func procStatusBytes(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

func procFDCount(pid int) (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(entries), err
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// rssSampler samples a process's VmRSS every 10 ms and keeps the peak.
type rssSampler struct {
	pid      int
	initial  int64
	peak     atomic.Int64
	done     chan struct{}
	finished chan struct{}
}

func startRSSSampler(t *testing.T, pid int) *rssSampler {
	t.Helper()
	rss, err := procStatusBytes(pid, "VmRSS")
	if err != nil {
		t.Fatalf("reading VmRSS: %v", err)
	}
	r := &rssSampler{pid: pid, initial: rss, done: make(chan struct{}), finished: make(chan struct{})}
	r.peak.Store(rss)
	go func() {
		defer close(r.finished)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.done:
				return
			case <-tick.C:
			}
			if v, err := procStatusBytes(pid, "VmRSS"); err == nil && v > r.peak.Load() {
				r.peak.Store(v)
			}
		}
	}()
	t.Cleanup(func() { r.stop() })
	return r
}

func (r *rssSampler) first() int64 { return r.initial }

// stop ends sampling (idempotent) and returns the peak.
func (r *rssSampler) stop() int64 {
	select {
	case <-r.done:
	default:
		close(r.done)
	}
	<-r.finished
	return r.peak.Load()
}

// countLogLines counts log lines containing substr.
func countLogLines(logs, substr string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

// broadcaster wakes every waiter whenever something changed.
type broadcaster struct {
	mu sync.Mutex
	ch chan struct{}
}

func newBroadcaster() *broadcaster { return &broadcaster{ch: make(chan struct{})} }

func (b *broadcaster) notify() {
	b.mu.Lock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}

// waitUntil waits for cond, re-evaluated on every notification, until within passes.
func (b *broadcaster) waitUntil(within time.Duration, cond func() bool) bool {
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		b.mu.Lock()
		ch := b.ch
		b.mu.Unlock()
		if cond() {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return cond()
		}
	}
}

// The streams devices send in these tests: device k's byte at offset o is
// patternBuf[(o + k*patternStride) % len(patternBuf)], so any received
// stretch can be checked without keeping what was sent.
var patternBuf = func() []byte {
	b := make([]byte, 1<<20+13)
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}()

const patternStride = 104729

// streamPattern returns n bytes of device k's stream from offset off.
func streamPattern(k int, off int64, n int) []byte {
	out := make([]byte, 0, n)
	pos := int((off + int64(k)*patternStride) % int64(len(patternBuf)))
	for len(out) < n {
		take := min(n-len(out), len(patternBuf)-pos)
		out = append(out, patternBuf[pos:pos+take]...)
		pos = 0
	}
	return out
}

// patternMatches checks data against device k's stream at offset off.
func patternMatches(k int, off int64, data []byte) bool {
	pos := int((off + int64(k)*patternStride) % int64(len(patternBuf)))
	for len(data) > 0 {
		take := min(len(data), len(patternBuf)-pos)
		if !bytes.Equal(data[:take], patternBuf[pos:pos+take]) {
			return false
		}
		data = data[take:]
		pos = 0
	}
	return true
}

// patternReader reads a driver's messages on its own goroutine and checks
// that TCP client k (k < n, ids in dial order) sends exactly stream k:
// OPENED first, then the stream in order, then CLOSED.
type patternReader struct {
	d      *driver
	ip     string
	bc     *broadcaster
	opened []atomic.Bool
	closed []atomic.Bool
	got    []atomic.Int64
	errMu  sync.Mutex
	error  error
	dead   atomic.Bool
}

func newPatternReader(d *driver, ip string, n int, bc *broadcaster) *patternReader {
	return &patternReader{d: d, ip: ip, bc: bc, opened: make([]atomic.Bool, n), closed: make([]atomic.Bool, n), got: make([]atomic.Int64, n)}
}

func (r *patternReader) fail(err error) {
	r.errMu.Lock()
	if r.error == nil {
		r.error = err
	}
	r.errMu.Unlock()
	r.dead.Store(true)
	r.bc.notify()
}

func (r *patternReader) failed() bool { return r.dead.Load() }

func (r *patternReader) err() error {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	return r.error
}

func (r *patternReader) run() {
	for {
		_ = r.d.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		h, err := ws.ReadHeader(r.d.r)
		if err != nil {
			r.fail(fmt.Errorf("reading a frame header: %w", err))
			return
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(r.d.r, payload); err != nil {
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
			r.fail(fmt.Errorf("unexpected message %s", describe(payload)))
			return
		}
		k := int(m.ID)
		switch {
		case m.Type == codec.Opened && !r.opened[k].Load():
			r.opened[k].Store(true)
		case m.Type == codec.Received && r.opened[k].Load() && !r.closed[k].Load():
			off := r.got[k].Load()
			if !patternMatches(k, off, m.Data) {
				r.fail(fmt.Errorf("client %d: %d bytes at offset %d are not what the device sent", k, len(m.Data), off))
				return
			}
			r.got[k].Add(int64(len(m.Data)))
		case m.Type == codec.Closed && r.opened[k].Load() && !r.closed[k].Load():
			r.closed[k].Store(true)
		default:
			r.fail(fmt.Errorf("out of order: %s", describe(payload)))
			return
		}
		r.bc.notify()
	}
}

// readToClose reads frames until a close frame, returning its code and how
// many data bytes came before it. An error means no close frame arrived.
func readToClose(d *driver, idle time.Duration) (ws.StatusCode, int64, error) {
	var data int64
	for {
		_ = d.conn.SetReadDeadline(time.Now().Add(idle))
		h, err := ws.ReadHeader(d.r)
		if err != nil {
			return 0, data, err
		}
		if h.Masked {
			return 0, data, errors.New("server sent a masked frame")
		}
		if h.OpCode != ws.OpClose {
			n, err := io.CopyN(io.Discard, d.r, h.Length)
			data += n
			if err != nil {
				return 0, data, fmt.Errorf("inside a %d-byte frame: %w", h.Length, err)
			}
			continue
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(d.r, payload); err != nil {
			return 0, data, err
		}
		if len(payload) < 2 {
			return ws.StatusNoStatusRcvd, data, nil
		}
		return ws.StatusCode(binary.BigEndian.Uint16(payload)), data, nil
	}
}

// rawClientFrame builds one client frame by hand, so tests control every bit.
func rawClientFrame(fin bool, rsv byte, op ws.OpCode, masked bool, payload []byte) []byte {
	b := []byte{byte(op)&0x0f | rsv<<4, 0}
	if fin {
		b[0] |= 0x80
	}
	n := len(payload)
	switch {
	case n < 126:
		b[1] = byte(n)
	case n <= 0xffff:
		b[1] = 126
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b[1] = 127
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if !masked {
		return append(b, payload...)
	}
	b[1] |= 0x80
	mask := [4]byte{0x1f, 0x2e, 0x3d, 0x4c}
	b = append(b, mask[:]...)
	start := len(b)
	b = append(b, payload...)
	ws.Cipher(b[start:], mask, 0)
	return b
}

// rawFrameHeader is a masked frame header announcing length bytes, with no payload.
func rawFrameHeader(fin bool, op ws.OpCode, length uint64) []byte {
	b := []byte{byte(op), 0x80 | 127}
	if fin {
		b[0] |= 0x80
	}
	b = binary.BigEndian.AppendUint64(b, length)
	return append(b, 0x1f, 0x2e, 0x3d, 0x4c)
}

// setRcvbuf sets SO_RCVBUF (when size > 0) and SO_REUSEADDR on a socket
// before it connects. SO_REUSEADDR matters on a busy test machine: a
// client socket that closes first lingers in TIME_WAIT for a minute, and
// without it that port cannot be bound by a wildcard listener (another
// test's server opening a device port) until then.
func setRcvbuf(size int) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			if serr == nil && size > 0 {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, size)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// reuseAddr is setRcvbuf without changing the buffer size.
var reuseAddr = setRcvbuf(0)

// dialTCPFrom connects from localIP ("" for any) with SO_REUSEADDR set.
func dialTCPFrom(localIP, addr string) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: eventTimeout, Control: reuseAddr}
	if localIP != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(localIP)}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// dialDriverWithRcvbuf opens a driver whose socket receive buffer is set
// before connecting (so the window it advertises is small from the start).
func dialDriverWithRcvbuf(t *testing.T, s *server, target string, rcvbuf int) (*driver, error) {
	t.Helper()
	dialer := ws.Dialer{
		Timeout: eventTimeout,
		Header:  ws.HandshakeHeaderHTTP(s.driverHeader()),
		NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nd := net.Dialer{Control: setRcvbuf(rcvbuf)}
			return nd.DialContext(ctx, network, addr)
		},
	}
	conn, br, _, err := dialer.Dial(context.Background(), "ws://"+s.addr+target)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close() })
	if br == nil {
		br = bufio.NewReader(conn)
	}
	return &driver{t: t, conn: conn, r: br}, nil
}

func dialDeviceWithRcvbuf(t *testing.T, fromIP string, port, rcvbuf int) *net.TCPConn {
	t.Helper()
	dialer := net.Dialer{Timeout: eventTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(fromIP)}, Control: setRcvbuf(rcvbuf)}
	conn, err := dialer.Dial("tcp", net.JoinHostPort(localhost, strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("device %s → port %d: %v", fromIP, port, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn.(*net.TCPConn)
}

func dialRawHTTP(t *testing.T, s *server) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.addr, eventTimeout)
	if err != nil {
		t.Fatalf("dialling %s: %v", s.addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// expectClosedWithoutAnswer waits (up to within) for the server to close
// the connection, and checks it sent nothing more first.
func expectClosedWithoutAnswer(t *testing.T, what string, conn net.Conn, within time.Duration) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(within))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	switch {
	case n > 0:
		t.Errorf("%s: got %q, want the connection closed", what, buf[:n])
	case isTimeout(err):
		t.Errorf("%s: still open after %v", what, within)
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
	default:
		t.Errorf("%s: unexpected read error %v", what, err)
	}
}

// expectDisconnectedEventually drains a device connection until the server's
// close shows (end of file or reset).
func expectDisconnectedEventually(t *testing.T, conn net.Conn) {
	t.Helper()
	buf := make([]byte, 64<<10)
	for {
		_ = conn.SetReadDeadline(time.Now().Add(eventTimeout))
		_, err := conn.Read(buf)
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
			return
		default:
			t.Fatalf("device %v: %v while waiting for the server to close it", conn.LocalAddr(), err)
		}
	}
}

func parseOrFail(t *testing.T, raw []byte) codec.Message {
	t.Helper()
	m, err := codec.ParseMessage(raw)
	if err != nil {
		t.Fatalf("undecodable message % x: %v", raw, err)
	}
	return m
}

// witness is a driver and a device on their own port that prove, between
// hostile acts, that the server still serves everyone else.
type witness struct {
	s    *server
	d    *driver
	dev  *net.TCPConn
	port int
	n    int
}

func newWitness(t *testing.T, s *server) *witness {
	t.Helper()
	d, port := s.openPort(t, "tcp", localhost)
	dev := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)
	return &witness{s: s, d: d, dev: dev, port: port}
}

// check round-trips one message each way.
func (w *witness) check(t *testing.T) {
	t.Helper()
	w.n++
	up := fmt.Appendf(nil, "witness up %d", w.n)
	deviceSend(t, w.dev, up)
	if got := w.d.expectStream(localhost, 0, len(up)); !bytes.Equal(got, up) {
		t.Fatalf("witness driver got %q, want %q", got, up)
	}
	down := fmt.Appendf(nil, "witness down %d", w.n)
	w.d.write(localhost, 0, down)
	expectDeviceReceives(t, w.dev, down)
}

// waitCond polls cond (every 5 ms) until it holds, failing after eventTimeout.
func waitCond(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !pollCond(eventTimeout, cond) {
		t.Fatalf("%s: not within %v", what, eventTimeout)
	}
}

// pollCond polls cond every 5 ms until it holds or within passes.
func pollCond(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	return true
}
