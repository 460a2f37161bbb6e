package main

// Robustness, part two: resource exhaustion. Running out of file
// descriptors must neither stop the engine nor wedge accepting, for every
// channel kind; connection caps refuse dispatch devices cleanly, without
// consuming ids, and are counted.

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// fdLimit is the descriptor limit the exhaustion test runs the server under.
const fdLimit = 64

func TestFDExhaustionEngineSurvivesAndAcceptRecovers(t *testing.T) {
	forEachKind(t, testFDExhaustion)
}

func testFDExhaustion(t *testing.T, k channelKind) {
	prlimit := prlimitCommand(t)
	secret := "robust-" + testkit.RandomHex(t, 12)
	s := testkit.Launch(t, testkit.Options{
		Secret:  secret,
		Wrapper: []string{prlimit, fmt.Sprintf("--nofile=%d:%d", fdLimit, fdLimit), "--"},
		Env: append([]string{"PLACE_SERVER_SECRET=" + secret, "LOG_LEVEL=debug",
			"DISPATCH_METRICS_ADDR=127.0.0.1:0", "DISPATCH_DEVICE_HOST=" + testkit.Localhost}, k.env()...),
	})
	if got := openFileLimit(t, s.PID()); got != fdLimit {
		t.Skipf("prlimit did not apply: the server's open-file limit is %d, want %d", got, fdLimit)
	}
	metrics := s.MetricsAddr(t)
	w := newWitness(t, s, k)
	d, ch := k.open(t, s, testkit.Localhost)
	pump := d.Pump()
	baseline, err := testkit.FDCount(s.PID())
	if err != nil {
		t.Fatal(err)
	}

	// Producers connect until the server cannot take one more. The kernel
	// completes every handshake (the listen backlog); "accepting fails" is
	// the server saying so in its log, or a producer never announced.
	refusals := func() int {
		logs := s.Logs()
		return testkit.CountLines(logs, "accept failing") + testkit.CountLines(logs, "could not hand connection")
	}
	var devices []*net.TCPConn
	opened := map[uint64]bool{}
	var firstID uint64 // the first producer's
	exhausted := false
	for attempt := 0; attempt < fdLimit+16 && !exhausted; attempt++ {
		before := refusals()
		conn, err := k.dial(s, ch, testkit.Localhost, testkit.ReuseAddr())
		if err != nil {
			t.Logf("producer dial %d failed: %v", attempt, err)
			exhausted = true
			break
		}
		t.Cleanup(func() { conn.Close() })
		devices = append(devices, conn)
		deadline := time.After(testkit.EventTimeout)
		tick := time.NewTicker(5 * time.Millisecond)
	wait:
		for {
			select {
			case it := <-pump:
				if it.Err != nil {
					t.Fatalf("driver: %v", it.Err)
				}
				if it.Msg.Type == codec.Opened {
					if len(opened) == 0 {
						firstID = it.Msg.ID
					}
					opened[it.Msg.ID] = true
					break wait
				}
				t.Fatalf("driver: unexpected %s while producers connect", testkit.DescribeMessage(it.Msg))
			case <-tick.C:
				if refusals() > before {
					exhausted = true
					break wait
				}
			case <-deadline:
				exhausted = true // neither announced nor refused: stuck in the backlog
				break wait
			}
		}
		tick.Stop()
	}
	if !exhausted {
		t.Fatalf("%d producers accepted under a limit of %d descriptors, and accepting never failed", len(opened), fdLimit)
	}
	atLimit, _ := testkit.FDCount(s.PID())
	t.Logf("open-file limit %d: %d descriptors at rest, %d producers admitted, %d descriptors in use when accepting failed",
		fdLimit, baseline, len(opened), atLimit)
	if s.HasExited() {
		t.Fatalf("the server exited when it ran out of descriptors:\n%s", s.LogTail(4096))
	}

	// The engine survives: admitted producers and sessions keep working both ways.
	first := devices[0]
	testkit.Send(t, first, []byte("still here"))
	m := testkit.ExpectPumped(t, pump, "RECEIVED from the first producer", func(m codec.Message) bool {
		return m.Type == codec.Received && m.ID == firstID
	})
	if string(m.Data) != "still here" {
		t.Fatalf("RECEIVED %q, want %q", m.Data, "still here")
	}
	d.Write(testkit.Localhost, firstID, []byte("and you?"))
	testkit.ExpectReceives(t, first, []byte("and you?"))
	w.check(t)
	// A new HTTP client now needs a descriptor the process does not have.
	// Not required (recorded for the report): a server that reserves
	// descriptors for its control plane would answer it.
	if c, err := testkit.Dial("", s.HTTPAddr(), testkit.ReuseAddr()); err == nil {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.WriteString(c, "GET "+testkit.BasePath+"/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		answer, err := io.ReadAll(c)
		c.Close()
		t.Logf("a new HTTP request while out of descriptors: answer %q, %v", testkit.Abbreviate(answer), err)
	}

	// Free the descriptors: every admitted producer but the first leaves.
	for _, c := range devices[1:] {
		c.Close()
	}
	closed := map[uint64]bool{}
	allClosed := func() bool {
		for id := range opened {
			if id != firstID && !closed[id] {
				return false
			}
		}
		return true
	}
	for !allClosed() {
		testkit.ExpectPumped(t, pump, fmt.Sprintf("CLOSED for %d clients (%d so far)", len(opened)-1, len(closed)), func(m codec.Message) bool {
			switch m.Type {
			case codec.Opened: // a producer that waited in the backlog, admitted now
				opened[m.ID] = true
			case codec.Closed:
				closed[m.ID] = true
				return true
			}
			return false
		})
	}
	// The server's descriptors come back (the first producer and the witness stay).
	testkit.Eventually(t, testkit.EventTimeout, "descriptors back to the level at rest", func() bool {
		n, err := testkit.FDCount(s.PID())
		return err == nil && n <= baseline+1+len(opened)-len(closed)
	})

	// Accepting recovers: HTTP, new sessions, new producers.
	if drivers, producers := k.counts(t, s, w.ch); drivers != 1 || producers != 1 {
		t.Errorf("the witness's channel after recovery: %d drivers and %d producers, want 1 and 1", drivers, producers)
	}
	late, lateCh := k.open(t, s, testkit.Localhost)
	lateDevice := connect(t, s, k, lateCh, testkit.Localhost)
	lateID := expectOpened(t, k, late, lateCh, testkit.Localhost)
	testkit.Send(t, lateDevice, []byte("new port"))
	if got := late.ExpectStream(testkit.Localhost, lateID, 8); string(got) != "new port" {
		t.Errorf("new channel: got %q", got)
	}
	again := connect(t, s, k, ch, testkit.Localhost)
	testkit.ExpectPumped(t, pump, "OPENED for a producer after recovery", func(m codec.Message) bool {
		return m.Type == codec.Opened && !opened[m.ID]
	})
	testkit.Send(t, again, []byte("welcome back"))
	testkit.ExpectPumped(t, pump, "RECEIVED from a producer after recovery", func(m codec.Message) bool {
		return m.Type == codec.Received && string(m.Data) == "welcome back"
	})
	w.check(t)
	testkit.ExpectMetricAtLeast(t, metrics, 1, "dispatch_accept_errors_total")
	if s.HasExited() {
		t.Fatal("the server exited")
	}
}

func TestConnectionCapsRefuseCleanlyAndAreCounted(t *testing.T) {
	t.Parallel()
	s := startRobustServer(t, dispatchKind{}, "DISPATCH_MAX_PORT_CONNS=3", "DISPATCH_MAX_CONNS=5")
	metrics := s.MetricsAddr(t)
	a, portA := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	b, portB := testkit.OpenPort(t, s, "tcp", testkit.Localhost)

	var onA []*net.TCPConn
	for id := range uint64(3) {
		onA = append(onA, testkit.DialDevice(t, testkit.Localhost, portA))
		a.ExpectOpened(testkit.Localhost, id)
	}
	// Port cap: the fourth device on A is closed at once, silently.
	refusedA := testkit.DialDevice(t, testkit.Localhost, portA)
	testkit.ExpectDisconnected(t, refusedA)

	for id := range uint64(2) {
		testkit.DialDevice(t, testkit.Localhost, portB)
		b.ExpectOpened(testkit.Localhost, id)
	}
	// Total cap: a third device on B is refused though B has room.
	refusedB := testkit.DialDevice(t, testkit.Localhost, portB)
	testkit.ExpectDisconnected(t, refusedB)
	testkit.ExpectMetric(t, metrics, 2, "dispatch_refused_peers_total", "proto", "tcp", "reason", "connection_cap")
	testkit.WaitForStats(t, s, fmt.Sprintf(`{"udp_listeners":{},"tcp_listeners":{%s},"tcp_clients":{%s}}`,
		portPair(portA, 1, portB, 1), portPair(portA, 3, portB, 2)))

	// Everyone admitted keeps working.
	testkit.Send(t, onA[2], []byte("fine"))
	a.ExpectReceived(testkit.Localhost, 2, []byte("fine"))

	// Room again: the refused connections consumed no id.
	onA[0].Close()
	a.ExpectClosed(testkit.Localhost, 0)
	testkit.DialDevice(t, testkit.Localhost, portA)
	a.ExpectOpened(testkit.Localhost, 3)
	testkit.ExpectMetric(t, metrics, 2, "dispatch_refused_peers_total", "proto", "tcp", "reason", "connection_cap")
}

// portPair renders two entries of a stats map in ascending port order.
func portPair(p1, n1, p2, n2 int) string {
	if p1 > p2 {
		p1, n1, p2, n2 = p2, n2, p1, n1
	}
	return fmt.Sprintf(`"%d":%d,"%d":%d`, p1, n1, p2, n2)
}

// prlimitCommand finds util-linux prlimit and checks that it can lower the
// limit, or skips the test saying why.
func prlimitCommand(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not found: install util-linux (apt-get install -y util-linux) to run the descriptor-exhaustion test")
	}
	if out, err := exec.Command(path, "--nofile=32:32", "--", "true").CombinedOutput(); err != nil {
		t.Skipf("prlimit cannot lower the open-file limit here: %v (%s)", err, out)
	}
	return path
}

// openFileLimit reads the soft "Max open files" limit of a process.
func openFileLimit(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(strings.TrimPrefix(line, "Max open files"))
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	t.Fatalf("no open-file limit in /proc/%d/limits", pid)
	return 0
}
