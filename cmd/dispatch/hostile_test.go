package main

// Robustness, part one: slow and hostile peers ("never wedge, never leak").
// Every test runs the real binary, once per channel kind (kinds_test.go):
// a dispatch TCP port and a TCP socket group with its drivers. One
// misbehaving peer must be cut off alone — with the documented close code
// or status, a counter and a log line — while every other driver and
// producer on the same server keeps working.

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
	forEachKind(t, testSlowDriverIsCutAlone)
}

func testSlowDriverIsCutAlone(t *testing.T, k channelKind) {
	const (
		pendingLimit = 1 << 20  // --max-driver-pending
		perDevice    = 24 << 20 // bytes each producer streams
		chunk        = 32 << 10
		window       = 256 << 10 // bytes a producer may be ahead of the slowest of its readers
		devices      = 2
	)
	s := startRobustServer(t, k, "DISPATCH_MAX_DRIVER_PENDING="+strconv.Itoa(pendingLimit), "LOG_LEVEL=info")
	metrics := s.MetricsAddr(t)

	first, ch := k.open(t, s, testkit.Localhost)
	fast := []*testkit.Driver{first, attach(t, s, k, ch, testkit.Localhost), attach(t, s, k, ch, testkit.Localhost)}
	// The slow driver's tiny receive buffer keeps the kernel from hiding its backlog.
	slow, err := testkit.DialDriver(t, s, k.target(ch, testkit.Localhost), testkit.DriverHeader(s), testkit.ReceiveBuffer(4096))
	if err != nil {
		t.Fatalf("slow driver: %v", err)
	}
	k.waitCounts(t, s, ch, 4, 0)

	sampler := testkit.StartRSSSampler(t, s.PID())
	baseline := sampler.First()

	bc := testkit.NewBroadcaster()
	readers := make([]*patternReader, len(fast))
	for i, d := range fast {
		readers[i] = newPatternReader(d, testkit.Localhost, devices, bc)
		go readers[i].run()
	}
	conns := make([]*net.TCPConn, devices)
	for p := range devices {
		conns[p] = connect(t, s, k, ch, testkit.Localhost)
		for _, r := range readers {
			if !bc.WaitUntil(testkit.EventTimeout, func() bool { return r.opened[p].Load() || r.failed() }) || r.failed() {
				t.Fatalf("a fast driver never got OPENED for producer %d: %v", p, r.err())
			}
		}
		id := readers[0].id(p)
		for i, r := range readers[1:] {
			if r.id(p) != id {
				t.Fatalf("fast drivers 0 and %d got OPENED for producer %d with ids %d and %d", i+1, p, id, r.id(p))
			}
		}
		if err := k.checkID(ch, id); err != nil {
			t.Fatalf("producer %d: %v", p, err)
		}
	}
	// In a group each producer hears the other's stream: it reads and checks
	// it as the fast drivers do, and paces the other producer too.
	var heard []*streamReader
	if k.producersHear() {
		for p, c := range conns {
			heard = append(heard, newStreamReader(c, devices-1-p, bc))
			go heard[p].run()
		}
	}
	behind := func(p int, sent int64) (failed, tooFar bool) {
		for _, r := range readers {
			if r.failed() {
				return true, true
			}
			if sent-r.got[p].Load() >= window {
				tooFar = true
			}
		}
		for _, h := range heard {
			if h.failed() {
				return true, true
			}
			if h.stream == p && sent-h.got.Load() >= window {
				tooFar = true
			}
		}
		return false, tooFar
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

	// Producers stream, paced by the fast readers only: a fast driver is
	// never more than devices*window bytes behind, far below the bound.
	var wg sync.WaitGroup
	writeErrs := make(chan error, devices)
	for p := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sent int64
			for sent < perDevice {
				ok := bc.WaitUntil(2*testkit.EventTimeout, func() bool {
					failed, tooFar := behind(p, sent)
					return failed || !tooFar
				})
				if failed, _ := behind(p, sent); !ok || failed {
					writeErrs <- fmt.Errorf("producer %d: the fast readers stopped making progress at %d bytes, or one failed", p, sent)
					return
				}
				n := min(chunk, perDevice-int(sent))
				_ = conns[p].SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
				if _, err := conns[p].Write(testkit.StreamPattern(p, sent, n)); err != nil {
					writeErrs <- fmt.Errorf("producer %d: %v", p, err)
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
	for p, h := range heard {
		if !bc.WaitUntil(2*testkit.EventTimeout, func() bool { return h.failed() || h.got.Load() == perDevice }) || h.failed() {
			t.Fatalf("producer %d heard %d of the other's %d bytes; error: %v", p, h.got.Load(), perDevice, h.err())
		}
	}
	peak := sampler.Stop()
	t.Logf("server VmRSS: baseline %s, peak %s while streaming %d MiB past a driver that never reads",
		testkit.MiB(baseline), testkit.MiB(peak), 2*perDevice>>20)

	// Cut exactly once, counted, one log line; the fast drivers stay.
	k.waitCounts(t, s, ch, 3, 2)
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

	// The fast drivers see both producers close, and nothing else.
	for _, c := range conns {
		c.Close()
	}
	for i, r := range readers {
		if !bc.WaitUntil(testkit.EventTimeout, func() bool { return r.failed() || r.closed[0].Load() && r.closed[1].Load() }) || r.failed() {
			t.Errorf("fast driver %d: CLOSED for both producers not seen: %v", i, r.err())
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
	forEachKind(t, func(t *testing.T, k channelKind) {
		const limit = 64 << 10 // the smallest bound the server accepts
		s := startRobustServer(t, k, "DISPATCH_MAX_DRIVER_PENDING="+strconv.Itoa(limit), "LOG_LEVEL=info")
		metrics := s.MetricsAddr(t)
		// 8 MiB of receive buffer: the whole burst fits in the kernel, so the
		// server never holds a byte of unsent output for this driver.
		d, ch := k.open(t, s, testkit.Localhost, testkit.ReceiveBuffer(8<<20))
		device := connect(t, s, k, ch, testkit.Localhost)
		id := expectOpened(t, k, d, ch, testkit.Localhost)
		const burst = 1 << 20
		testkit.Send(t, device, testkit.StreamPattern(0, 0, burst))
		got := d.ExpectStream(testkit.Localhost, id, burst)
		if !bytes.Equal(got, testkit.StreamPattern(0, 0, burst)) {
			t.Fatal("burst corrupted")
		}
		testkit.ExpectMetric(t, metrics, 0, "dispatch_forced_disconnects_total", "kind", "slow_driver")
	})
}

// ---------------------------------------------------------------------------
// 2. A producer that never reads is closed at its bound; nothing else slows.

func TestSlowDeviceIsClosedAloneAndOthersKeepRoundTripping(t *testing.T) {
	forEachKind(t, testSlowProducerIsClosedAlone)
}

func testSlowProducerIsClosedAlone(t *testing.T, k channelKind) {
	const limit = 256 << 10 // --max-device-pending, --max-member-pending
	pendingEnv, logLine, metricKind := k.slowProducer()
	s := startRobustServer(t, k, pendingEnv+"="+strconv.Itoa(limit))
	metrics := s.MetricsAddr(t)
	const stuckIP, livelyIP = "127.0.0.2", "127.0.0.3"
	accept := stuckIP + "," + livelyIP
	writer, ch := k.open(t, s, accept)
	observer := attach(t, s, k, ch, accept)

	stuck := connect(t, s, k, ch, stuckIP, testkit.ReceiveBuffer(4096)) // never reads
	stuckID := expectOpened(t, k, writer, ch, stuckIP)
	observer.ExpectOpened(stuckIP, stuckID)
	lively := connect(t, s, k, ch, livelyIP)
	livelyID := expectOpened(t, k, writer, ch, livelyIP)
	observer.ExpectOpened(livelyIP, livelyID)

	// The writer floods the stuck producer from its own goroutine.
	stop := make(chan struct{})
	flooded := make(chan error, 1)
	var written atomic.Int64
	go func() {
		msg := codec.AppendMessage(nil, codec.Write, []byte(stuckIP), stuckID, bytes.Repeat([]byte{'w'}, 16<<10))
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
		flooded <- errors.New("256 MiB written to a producer that never reads, and it is still open")
	}()

	// Meanwhile the lively producer round-trips through the observer, and
	// both drivers must see CLOSED for the stuck one.
	writerSawClosed, observerSawClosed := false, false
	afterCut := 0
	for round := 0; afterCut < 3; round++ {
		if round > 10000 {
			t.Fatal("no CLOSED for the stuck producer after 10000 round trips")
		}
		ping := fmt.Appendf(nil, "ping-%d", round)
		observer.Write(livelyIP, livelyID, ping)
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
				case m.Type == codec.Closed && string(m.IP) == stuckIP && m.ID == stuckID && !*x.saw:
					*x.saw = true
				case m.Type == codec.Received && string(m.IP) == livelyIP && m.ID == livelyID:
					got = append(got, m.Data...)
				default:
					t.Fatalf("unexpected %s while waiting for %q", testkit.DescribeMessage(m), pong)
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
	t.Logf("the stuck producer was closed after %d KiB of WRITEs", written.Load()>>10)

	testkit.ExpectDisconnectedEventually(t, stuck)
	k.waitCounts(t, s, ch, 2, 1)
	if n := testkit.CountLines(s.Logs(), logLine); n != 1 {
		t.Errorf("%d log lines %q about the stuck producer, want exactly 1", n, logLine)
	}
	testkit.ExpectMetric(t, metrics, 1, "dispatch_forced_disconnects_total", "kind", metricKind)
	// The writer's session survived its own flood.
	writer.Write(livelyIP, livelyID, []byte("after"))
	testkit.ExpectReceives(t, lively, []byte("after"))
}

// ---------------------------------------------------------------------------
// 3. Slow and hostile HTTP clients.

func TestHandshakeDeadlineClosesSilentAndTricklingClients(t *testing.T) {
	forEachKind(t, func(t *testing.T, k channelKind) {
		s := startRobustServer(t, k, "DISPATCH_HANDSHAKE_TIMEOUT=1s")
		metrics := s.MetricsAddr(t)
		w := newWitness(t, s, k)

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
	})
}

func TestOversizedHeadIs431AndGarbageIs400(t *testing.T) {
	forEachKind(t, func(t *testing.T, k channelKind) {
		s := startRobustServer(t, k)
		metrics := s.MetricsAddr(t)
		w := newWitness(t, s, k)
		upgrade := "GET " + k.target(w.ch, testkit.Localhost) + " HTTP/1.1\r\nHost: x\r\n" +
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
	})
}

// ---------------------------------------------------------------------------
// 4. Hostile WebSocket frames from drivers.

func TestOversizedFrameIsClosed1009FromItsHeader(t *testing.T) {
	forEachKind(t, func(t *testing.T, k channelKind) {
		const limit = 64 << 10
		s := startRobustServer(t, k, "DISPATCH_MAX_MESSAGE_BYTES="+strconv.Itoa(limit))
		metrics := s.MetricsAddr(t)
		w := newWitness(t, s, k)

		for _, c := range []hostileFrames{
			// Only headers are sent: a server that waited for the payload would
			// never answer, so a close proves the decision was made from the header.
			{"1 TiB announced", [][]byte{testkit.RawFrameHeader(true, ws.OpBinary, 1<<40)}, ws.StatusMessageTooBig},
			{"2^63-1 announced", [][]byte{testkit.RawFrameHeader(true, ws.OpBinary, 1<<63-1)}, ws.StatusMessageTooBig},
			{"one byte past the limit", [][]byte{testkit.RawFrameHeader(true, ws.OpBinary, limit+1)}, ws.StatusMessageTooBig},
			{"text message past the limit", [][]byte{testkit.RawFrameHeader(true, ws.OpText, limit+1)}, ws.StatusMessageTooBig},
			{"fragments past the limit", [][]byte{
				testkit.RawClientFrame(false, 0, ws.OpBinary, true, make([]byte, limit/2+100)),
				testkit.RawFrameHeader(true, ws.OpContinuation, limit/2),
			}, ws.StatusMessageTooBig},
		} {
			c.expectCut(t, s, k, w)
		}

		// A message of exactly the limit is accepted.
		d := w.attach(t, s, k)
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
		k.waitCounts(t, s, w.ch, 1, 1)
		w.check(t)
		testkit.ExpectMetricAtLeast(t, metrics, 4, "dispatch_forced_disconnects_total", "kind", "oversize_message")
	})
}

func TestFrameViolationsGetRFC6455CloseCodes(t *testing.T) {
	forEachKind(t, func(t *testing.T, k channelKind) {
		s := startRobustServer(t, k)
		metrics := s.MetricsAddr(t)
		w := newWitness(t, s, k)
		valid := codec.AppendMessage(nil, codec.Write, []byte(testkit.Localhost), 999, []byte("x"))
		closeBody := func(code uint16, reason string) []byte {
			return append(binary.BigEndian.AppendUint16(nil, code), reason...)
		}
		for _, c := range []hostileFrames{
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
		} {
			c.expectCut(t, s, k, w)
		}
		testkit.ExpectMetricAtLeast(t, metrics, 8, "dispatch_parse_errors_total", "kind", "websocket_protocol")
	})
}

// The other side of the fragment rules: a WRITE that arrives in fragments,
// with control frames between them, or one byte at a time, is one message.
func TestFragmentedAndTrickledMessagesAreReassembled(t *testing.T) {
	forEachKind(t, func(t *testing.T, k channelKind) {
		s := startRobustServer(t, k)
		d, ch := k.open(t, s, testkit.Localhost)
		producer := connect(t, s, k, ch, testkit.Localhost)
		id := expectOpened(t, k, d, ch, testkit.Localhost)
		write := func(data string) []byte {
			return codec.AppendMessage(nil, codec.Write, []byte(testkit.Localhost), id, []byte(data))
		}
		frame := func(fin bool, op ws.OpCode, payload []byte) []byte {
			return testkit.RawClientFrame(fin, 0, op, true, payload)
		}

		// Three fragments, a ping between the first two and an empty one in
		// the middle: the pong comes at once, the WRITE once it is whole.
		msg := write("in fragments")
		for _, f := range [][]byte{
			frame(false, ws.OpBinary, msg[:3]),
			frame(true, ws.OpPing, []byte("mid-message")),
			frame(false, ws.OpContinuation, nil),
			frame(false, ws.OpContinuation, msg[3:len(msg)-4]),
			frame(true, ws.OpContinuation, msg[len(msg)-4:]),
		} {
			testkit.Send(t, d.Conn, f)
		}
		if h, payload, err := d.ReadFrame(); err != nil || h.OpCode != ws.OpPong || string(payload) != "mid-message" {
			t.Fatalf("ping between fragments: %v frame %q, %v; want its pong", h.OpCode, payload, err)
		}
		testkit.ExpectReceives(t, producer, []byte("in fragments"))

		// One frame, one byte per write, at the driver's own slow pace.
		for _, b := range frame(true, ws.OpBinary, write("trickled")) {
			testkit.Send(t, d.Conn, []byte{b})
			time.Sleep(time.Millisecond) // the driver's pace: each byte its own segment
		}
		testkit.ExpectReceives(t, producer, []byte("trickled"))

		// The session is whole: producer to driver still works.
		testkit.Send(t, producer, []byte("and back"))
		d.ExpectReceived(testkit.Localhost, id, []byte("and back"))
	})
}

// hostileFrames is what a hostile driver sends, and the close code it must get.
type hostileFrames struct {
	name string
	send [][]byte
	code ws.StatusCode
}

// expectCut attaches a driver to the witness's channel, sends the frames
// and checks that the driver alone is closed with the code.
func (c hostileFrames) expectCut(t *testing.T, s testkit.Server, k channelKind, w *witness) {
	t.Helper()
	d := w.attach(t, s, k)
	k.waitCounts(t, s, w.ch, 2, 1)
	for _, b := range c.send {
		if _, err := d.Conn.Write(b); err != nil {
			t.Fatalf("%s: writing: %v", c.name, err)
		}
	}
	code, _, err := d.ReadToClose(testkit.EventTimeout, nil)
	if err != nil || code != c.code {
		t.Errorf("%s: close code %d (%v), want %d", c.name, code, err, c.code)
	}
	k.waitCounts(t, s, w.ch, 1, 1)
	w.check(t)
}

// ---------------------------------------------------------------------------
// Readers that check the streams of testkit.StreamPattern.

// patternReader reads a driver's messages on its own goroutine and checks
// that the producers it hears send streams 0, 1… in the order OPENED
// announced them: OPENED first, then the stream in order, then CLOSED.
type patternReader struct {
	d      *testkit.Driver
	ip     string
	bc     *testkit.Broadcaster
	idsMu  sync.Mutex
	ids    []uint64 // producer ids in the order OPENED announced them
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

// id is the id of producer p; call it once opened[p] is set.
func (r *patternReader) id(p int) uint64 {
	r.idsMu.Lock()
	defer r.idsMu.Unlock()
	return r.ids[p]
}

// slot is the producer index of id, or -1.
func (r *patternReader) slot(id uint64) int {
	r.idsMu.Lock()
	defer r.idsMu.Unlock()
	for p, known := range r.ids {
		if known == id {
			return p
		}
	}
	return -1
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
		if err != nil || string(m.IP) != r.ip {
			r.fail(fmt.Errorf("unexpected message %s", testkit.Describe(payload)))
			return
		}
		p := r.slot(m.ID)
		if p < 0 && m.Type == codec.Opened {
			r.idsMu.Lock()
			if p = len(r.ids); p < len(r.got) {
				r.ids = append(r.ids, m.ID)
			}
			r.idsMu.Unlock()
			if p == len(r.got) {
				r.fail(fmt.Errorf("OPENED for more than %d producers: %s", len(r.got), testkit.Describe(payload)))
				return
			}
			r.opened[p].Store(true)
			r.bc.Notify()
			continue
		}
		switch {
		case p < 0:
			r.fail(fmt.Errorf("unexpected message %s", testkit.Describe(payload)))
			return
		case m.Type == codec.Received && !r.closed[p].Load():
			off := r.got[p].Load()
			if !testkit.PatternMatches(p, off, m.Data) {
				r.fail(fmt.Errorf("producer %d: %d bytes at offset %d are not what it sent", p, len(m.Data), off))
				return
			}
			r.got[p].Add(int64(len(m.Data)))
		case m.Type == codec.Closed && !r.closed[p].Load():
			r.closed[p].Store(true)
		default:
			r.fail(fmt.Errorf("out of order: %s", testkit.Describe(payload)))
			return
		}
		r.bc.Notify()
	}
}

// streamReader reads a raw connection on its own goroutine and checks that
// it carries exactly stream number stream, in order.
type streamReader struct {
	conn   net.Conn
	stream int
	bc     *testkit.Broadcaster
	got    atomic.Int64
	errMu  sync.Mutex
	error  error
	dead   atomic.Bool
}

func newStreamReader(conn net.Conn, stream int, bc *testkit.Broadcaster) *streamReader {
	return &streamReader{conn: conn, stream: stream, bc: bc}
}

func (r *streamReader) failed() bool { return r.dead.Load() }

func (r *streamReader) err() error {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	return r.error
}

// run reads until the connection ends; an end is a failure only while the
// stream is incomplete, which the test tells from got.
func (r *streamReader) run() {
	buf := make([]byte, 64<<10)
	for {
		_ = r.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		n, err := r.conn.Read(buf)
		if n > 0 {
			off := r.got.Load()
			if !testkit.PatternMatches(r.stream, off, buf[:n]) {
				err = fmt.Errorf("%d bytes at offset %d are not stream %d", n, off, r.stream)
			} else {
				r.got.Add(int64(n))
			}
		}
		if err != nil {
			if !testkit.IsConnGone(err) {
				r.errMu.Lock()
				r.error = err
				r.errMu.Unlock()
				r.dead.Store(true)
			}
			r.bc.Notify()
			return
		}
		r.bc.Notify()
	}
}
