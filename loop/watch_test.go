package loop_test

import (
	"net/netip"
	"testing"

	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
)

// closingLoop is memLoop that also closes connections.
type closingLoop struct {
	memLoop
	closed int
}

func (l *closingLoop) Close(gnet.Conn) error { l.closed++; return nil }

// countingOwner records what its channel reports.
type countingOwner struct{ detached int }

func (o *countingOwner) Detached(*loop.Channel, *loop.Upstream) { o.detached++ }

// A watcher hears what the channel admitted for itself and changes nothing
// about it: it admits nobody, does not count as an upstream, is not
// reported when it leaves, and is ended when the channel closes.
func TestWatcherLooksOnWithoutChangingTheChannel(t *testing.T) {
	el := &closingLoop{}
	h := loop.NewTestHub(el)
	owner := &countingOwner{}
	ch, err := h.OpenChannel(loop.Key{Kind: "test", Name: "udp:6001"}, loop.Policy{ToUpstreams: true}, owner, 0)
	if err != nil {
		t.Fatal(err)
	}
	class := h.NewClass("test", "upstream")
	accept, _ := driver.ParseAcceptList("127.0.0.1")
	drv := &memConn{}
	d := &loop.Upstream{Out: h.TestEndpoint(drv, class, loop.Output{Format: driver.Format, Limit: 1 << 20}), Filter: &accept}
	ch.Attach(d)
	look := &memConn{}
	w := &loop.Upstream{Out: h.TestEndpoint(look, class, loop.Output{Format: driver.Format, Limit: 1 << 20, OnFull: loop.DropWhenFull}), Watcher: true}
	ch.Attach(w)

	if ch.Upstreams() != 1 {
		t.Fatalf("Upstreams = %d, want 1: a watcher does not count", ch.Upstreams())
	}
	stranger := &loop.Member{IP: netip.MustParseAddr("10.0.0.1"), IPText: []byte("10.0.0.1"), Transient: true}
	if ch.Admits(stranger) {
		t.Fatal("the watcher's nil filter admitted a member no driver admits")
	}
	if n := ch.Publish(loop.MemberData, stranger, false, []byte("x")); n != 0 {
		t.Fatalf("a datagram no driver admits reached %d upstreams, want 0", n)
	}
	known := &loop.Member{IP: netip.MustParseAddr("127.0.0.1"), IPText: []byte("127.0.0.1"), Transient: true}
	if n := ch.Publish(loop.MemberData, known, false, []byte("x")); n != 2 {
		t.Fatalf("an admitted datagram reached %d upstreams, want the driver and the watcher", n)
	}
	device := &loop.Member{ID: 7, IP: netip.MustParseAddr("127.0.0.1"), IPText: []byte("127.0.0.1")}
	ch.Join(device)
	if n := ch.Publish(loop.MemberData, device, false, []byte("y")); n != 2 {
		t.Fatalf("a member's payload reached %d upstreams, want 2", n)
	}
	h.Flush()
	if drv.written == 0 || look.written != drv.written {
		t.Fatalf("driver got %d bytes, watcher %d: want the same, non-zero", drv.written, look.written)
	}

	ch.Detach(w)
	if owner.detached != 0 || ch.Upstreams() != 1 {
		t.Fatalf("a watcher leaving was reported (%d) or changed the count (%d)", owner.detached, ch.Upstreams())
	}
	ch.Attach(w)
	ch.Close()
	if !w.Out.Closing() || d.Out.Closing() {
		t.Fatalf("after Close: watcher closing %v (want true), driver closing %v (want false)", w.Out.Closing(), d.Out.Closing())
	}
	if w.Channel() != nil {
		t.Fatal("the watcher is still attached after Close")
	}
}
