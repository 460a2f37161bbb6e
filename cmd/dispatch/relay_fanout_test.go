package main

// Relay fan-out with slow subscribers, and keepalive: a subscriber that
// stops reading loses whole messages and is cut for stalling, without
// costing the others anything; a dead connection is found by its missing
// pong.

import (
	"bytes"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop/relay"
)

// 500 subscribers, two of which stop reading: the publisher is never held
// back, the 498 others get every message whole and in order, the two lose
// whole messages (counted, logged once per episode) and are closed for
// stalling.
func TestRelay500SubscribersTwoStalled(t *testing.T) {
	if testing.Short() {
		t.Skip("500 subscribers: not in -short")
	}
	r := testkit.StartRelay(t, "DISPATCH_METRICS_ADDR=127.0.0.1:0", "DISPATCH_STALL_TIMEOUT=3s",
		"DISPATCH_RELAY_MAX_PENDING=65536", "LOG_LEVEL=info")
	metrics := r.MetricsAddr(t)
	const topic, subscribers, stalled, batch, maxBatches = "live", 500, 2, 40, 400
	publisher := r.Join(t, topic, relay.ScopeWrite)
	var readers []*testkit.RelayClient
	for i := range subscribers - stalled {
		readers = append(readers, r.Join(t, topic, relay.ScopeRead))
		_ = i
	}
	for range stalled {
		// A small receive buffer, and never a read.
		r.JoinWith(t, testkit.TokenSpec{Topic: topic, Scopes: []string{relay.ScopeRead}}, testkit.ReceiveBuffer(4096))
	}
	r.WaitRelayConns(t, topic, subscribers+1)

	pad := bytes.Repeat([]byte{'.'}, 1000)
	message := func(seq int) []byte { return append([]byte(strconv.Itoa(seq)+":"), pad...) }
	var received atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(readers))
	for k, c := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ; seq++ {
				op, got, err := c.NextMessage()
				if err != nil {
					errs <- fmt.Errorf("reader %d at message %d: %v", k, seq, err)
					return
				}
				if op == ws.OpText && string(got) == "end" {
					received.Add(1)
					return
				}
				if op != ws.OpBinary || !bytes.Equal(got, message(seq)) {
					errs <- fmt.Errorf("reader %d: got %v %.20q…, want message %d", k, op, got, seq)
					return
				}
				received.Add(1)
			}
		}()
	}

	// Batches, each read by every live reader before the next: the stalled
	// two fall behind until the server drops for them.
	sent := 0
	dropped := func() float64 {
		v, _ := testkit.MetricValueOf(t, metrics, "dispatch_dropped_messages_total", "kind", "relay", "role", "client")
		return v
	}
	for b := 0; b < maxBatches && dropped() < 2*batch; b++ {
		for range batch {
			publisher.Send(message(sent))
			sent++
		}
		want := int64(sent * len(readers))
		if !testkit.Poll(testkit.EventTimeout, func() bool { return received.Load() >= want || len(errs) > 0 }) {
			t.Fatalf("readers got %d of %d messages", received.Load(), want)
		}
		if len(errs) > 0 {
			break
		}
	}
	publisher.SendText("end")
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got, want := received.Load(), int64((sent+1)*len(readers)); got != want {
		t.Errorf("readers got %d messages in all, want %d", got, want)
	}
	if d := dropped(); d < 1 {
		t.Errorf("no message was dropped for the stalled subscribers after %d messages", sent)
	}
	testkit.ExpectMetric(t, metrics, stalled, "dispatch_ends_total", "kind", "relay", "role", "client", "reason", "stalled")
	r.WaitRelayConns(t, topic, subscribers+1-stalled)
	// Every reader that kept up lost nothing: drops were only the stalled
	// ones' (each could lose at most every message sent).
	if d := dropped(); d > float64(stalled*sent) {
		t.Errorf("%v messages dropped, more than the stalled subscribers were sent (%d)", d, stalled*sent)
	}
	logs := r.Logs()
	if n := testkit.CountLines(logs, "dropping whole messages"); n < 1 || n > 2*stalled {
		t.Errorf("%d log lines for drop episodes, want 1 to %d:\n%s", n, 2*stalled, testkit.LinesContaining(logs, "dropping whole messages"))
	}
	t.Logf("%d messages to %d readers; %v dropped for the %d stalled", sent, len(readers), dropped(), stalled)
}

// A quiet connection is pinged; one that answers stays, one that does not
// is closed (1008) after another interval.
func TestRelayPingsIdleConnectionsAndClosesDeadOnes(t *testing.T) {
	r := testkit.StartRelay(t, "DISPATCH_RELAY_PING_INTERVAL=200ms", "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	alive := r.Join(t, "idle")
	dead := r.Join(t, "idle")
	r.WaitRelayConns(t, "idle", 2)

	var pings atomic.Int64
	done := make(chan error, 1)
	go func() {
		// Answer pings until the test says stop (a text message).
		for {
			h, payload, err := alive.ReadFrame()
			if err != nil {
				done <- err
				return
			}
			switch h.OpCode {
			case ws.OpPing:
				pings.Add(1)
				_ = alive.Conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
				if _, err := alive.Conn.Write(testkit.RawClientFrame(true, 0, ws.OpPong, true, payload)); err != nil {
					done <- err
					return
				}
			case ws.OpText:
				done <- nil
				return
			default:
				done <- fmt.Errorf("unexpected %v frame", h.OpCode)
				return
			}
		}
	}()
	// The dead one reads nothing until it is closed: then its ping and the
	// close frame are waiting.
	testkit.ExpectMetric(t, r.MetricsAddr(t), 1, "dispatch_ends_total", "kind", "relay", "role", "client", "reason", "timeout")
	dead.ExpectClose(ws.StatusPolicyViolation, "no answer to a ping")
	r.WaitRelayConns(t, "idle", 1)
	if pings.Load() == 0 {
		t.Error("the live connection was never pinged")
	}
	third := r.Join(t, "idle")
	third.SendText("stop")
	if err := <-done; err != nil {
		t.Fatalf("live connection: %v", err)
	}
}
