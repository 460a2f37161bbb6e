package main

// Relay topics end to end: rights, framing, ordering and bounds of what
// clients send each other.

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop/relay"
)

// Every message a writer sends reaches every other reader, as its own
// frame with its own opcode; never the sender.
func TestRelayTextAndBinaryKeptApart(t *testing.T) {
	r := testkit.StartRelay(t)
	a := r.Join(t, "bench-1")
	b := r.Join(t, "bench-1")
	c := r.Join(t, "bench-1")
	r.WaitRelayConns(t, "bench-1", 3)

	a.SendText(`{"set":1}`)
	a.Send([]byte{0, 1, 2, 0xff})
	a.SendText(`{"set":2}`)
	for _, reader := range []*testkit.RelayClient{b, c} {
		reader.ExpectMessage(ws.OpText, []byte(`{"set":1}`))
		reader.ExpectMessage(ws.OpBinary, []byte{0, 1, 2, 0xff})
		reader.ExpectMessage(ws.OpText, []byte(`{"set":2}`))
	}
	b.SendText("from b")
	a.ExpectMessage(ws.OpText, []byte("from b"))
	c.ExpectMessage(ws.OpText, []byte("from b"))
	// Nothing came back to a for its own messages: "from b" was its first.
	b.ExpectNothing(100 * time.Millisecond)

	// Another topic hears none of it.
	other := r.Join(t, "bench-2")
	a.SendText("only bench-1")
	b.ExpectMessage(ws.OpText, []byte("only bench-1"))
	other.ExpectNothing(100 * time.Millisecond)
}

// A reader without write has its messages discarded (and counted); a
// writer without read is sent nothing.
func TestRelayReadOnlyAndWriteOnly(t *testing.T) {
	r := testkit.StartRelay(t, "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	reader := r.Join(t, "scope", relay.ScopeRead)
	writer := r.Join(t, "scope", relay.ScopeWrite)
	both := r.Join(t, "scope", relay.ScopeRead, relay.ScopeWrite)
	r.WaitRelayConns(t, "scope", 3)

	writer.SendText("w1")
	reader.ExpectMessage(ws.OpText, []byte("w1"))
	both.ExpectMessage(ws.OpText, []byte("w1"))

	reader.SendText("discarded")
	both.SendText("b1")
	reader.ExpectMessage(ws.OpText, []byte("b1"))
	// The write-only client hears nothing at all, and both heard b1 but not
	// the reader's message.
	writer.ExpectNothing(150 * time.Millisecond)
	both.ExpectNothing(50 * time.Millisecond)

	metrics := r.MetricsAddr(t)
	testkit.ExpectMetric(t, metrics, 1, "dispatch_discarded_messages_total", "kind", "relay", "role", "client")
	testkit.ExpectMetric(t, metrics, 2, "dispatch_relay_messages_total", "direction", "in")
	testkit.ExpectMetric(t, metrics, 3, "dispatch_relay_messages_total", "direction", "out")

	for _, rep := range r.RelayStatus(t) {
		switch {
		case rep.Topic != "scope":
			t.Errorf("status lists topic %q", rep.Topic)
		case rep.CanRead == false && rep.CanWrite == false:
			t.Errorf("status: a connection with neither right: %+v", rep)
		}
	}
}

// Under load, with two writers sending messages of many sizes as fast as
// they can, every reader gets every message whole, as its own frame, in
// each writer's order: nothing is glued together or split.
func TestRelayMessageBoundariesKeptUnderLoad(t *testing.T) {
	r := testkit.StartRelay(t)
	const topic, writers, readers, perWriter = "load", 2, 4, 3000
	var ws_ []*testkit.RelayClient
	for range writers {
		ws_ = append(ws_, r.Join(t, topic, relay.ScopeWrite))
	}
	var rs []*testkit.RelayClient
	for range readers {
		rs = append(rs, r.Join(t, topic, relay.ScopeRead))
	}
	r.WaitRelayConns(t, topic, writers+readers)

	message := func(w, i int) []byte {
		head := fmt.Sprintf("{\"w\":%d,\"i\":%d,\"pad\":\"", w, i)
		return append(append([]byte(head), bytes.Repeat([]byte{'x'}, (i*37)%700)...), '"', '}')
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers+readers)
	for w, c := range ws_ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Many messages per write(2): the server sees them arrive together.
			var batch bytes.Buffer
			for i := range perWriter {
				_ = wsutil.WriteClientText(&batch, message(w, i))
				if batch.Len() > 32<<10 || i == perWriter-1 {
					_ = c.Conn.SetWriteDeadline(time.Now().Add(testkit.EventTimeout))
					if _, err := c.Conn.Write(batch.Bytes()); err != nil {
						errs <- err
						return
					}
					batch.Reset()
				}
			}
		}()
	}
	for k, c := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := make([]int, writers)
			for n := 0; n < writers*perWriter; n++ {
				op, got, err := c.NextMessage()
				if err != nil {
					errs <- fmt.Errorf("reader %d after %d messages: %v", k, n, err)
					return
				}
				var w, i int
				if _, err := fmt.Sscanf(string(got), "{\"w\":%d,\"i\":%d,", &w, &i); err != nil || op != ws.OpText || w < 0 || w >= writers {
					errs <- fmt.Errorf("reader %d: message %d is not one message: %v %.80q", k, n, op, got)
					return
				}
				if i != next[w] || !bytes.Equal(got, message(w, i)) {
					errs <- fmt.Errorf("reader %d: writer %d message %d, want %d (%d bytes)", k, w, i, next[w], len(got))
					return
				}
				next[w]++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// A message past --relay-max-message-bytes closes its sender with 1009;
// the others carry on.
func TestRelayOversizedMessageClosesOnlyItsSender(t *testing.T) {
	r := testkit.StartRelay(t, "DISPATCH_RELAY_MAX_MESSAGE_BYTES=1024")
	big := r.Join(t, "bounded")
	other := r.Join(t, "bounded")
	third := r.Join(t, "bounded")
	r.WaitRelayConns(t, "bounded", 3)
	big.Send(make([]byte, 2048))
	big.ExpectClose(ws.StatusMessageTooBig, "")
	other.SendText("still here")
	third.ExpectMessage(ws.OpText, []byte("still here"))
}

// Past --relay-max-topics a new topic is refused with a JSON 503 before the
// upgrade (counted with the core's channel refusals); past
// --relay-max-conns any connection is. Existing topics carry on.
func TestRelayCapsOnTopicsAndConnections(t *testing.T) {
	r := testkit.StartRelay(t, "DISPATCH_RELAY_MAX_TOPICS=1", "DISPATCH_RELAY_MAX_CONNS=3", "DISPATCH_METRICS_ADDR=127.0.0.1:0")
	a := r.Join(t, "only")
	uri := r.CodeURI(t, "second", r.Token(t, testkit.TokenSpec{Topic: "second"}))
	testkit.ExpectRelayError(t, "a second topic", testkit.UpgradeAnswer(t, uri), 503, "topic_cap")
	testkit.ExpectMetric(t, r.MetricsAddr(t), 1, "dispatch_channels_refused_total", "kind", "relay")
	b := r.Join(t, "only")
	r.Join(t, "only")
	uri = r.CodeURI(t, "only", r.Token(t, testkit.TokenSpec{Topic: "only"}))
	testkit.ExpectRelayError(t, "a fourth connection", testkit.UpgradeAnswer(t, uri), 503, "conn_cap")
	a.SendText("still served")
	b.ExpectMessage(ws.OpText, []byte("still served"))
	// The relay secret is never logged.
	if strings.Contains(r.Logs(), string(r.RelaySecret)) {
		t.Error("the relay secret appears in the logs")
	}
}
