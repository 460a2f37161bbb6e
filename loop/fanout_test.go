package loop_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/panjf2000/gnet/v2"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
)

// memConn stands in for a gnet connection: writes are counted, nothing is
// ever left unsent.
type memConn struct {
	gnet.Conn
	written int
	writes  int
}

func (m *memConn) OutboundBuffered() int { return 0 }
func (m *memConn) Write(b []byte) (int, error) {
	m.written += len(b)
	m.writes++
	return len(b), nil
}
func (m *memConn) Writev(bs [][]byte) (int, error) {
	n := 0
	for _, b := range bs {
		n += len(b)
	}
	m.written += n
	m.writes++
	return n, nil
}

// memLoop stands in for the event loop: posted flushes are run by the test.
type memLoop struct{ gnet.EventLoop }

func (memLoop) Execute(context.Context, gnet.Runnable) error { return nil }

type noOwner struct{}

func (noOwner) Detached(*loop.Channel, *loop.Upstream) {}

// dispatchFanout is a dispatch port: devices heard by drivers that admit them.
type dispatchFanout struct {
	h       *loop.Hub
	ch      *loop.Channel
	drivers []*memConn
	devices []*loop.Member
}

func newDispatchFanout(tb testing.TB, drivers, devices int) *dispatchFanout {
	h := loop.NewTestHub(memLoop{})
	ch, err := h.OpenChannel(loop.Key{Kind: "test", Name: "tcp:6001"}, loop.Policy{ToUpstreams: true}, noOwner{}, 0)
	if err != nil {
		tb.Fatal(err)
	}
	f := &dispatchFanout{h: h, ch: ch}
	class := h.NewClass("test", "driver")
	accept, _ := driver.ParseAcceptList("127.0.0.0/8")
	for range drivers {
		conn := &memConn{}
		f.drivers = append(f.drivers, conn)
		e := h.TestEndpoint(conn, class, loop.Output{Format: driver.Format, Limit: 16 << 20})
		ch.Attach(&loop.Upstream{Out: e, Filter: &accept})
	}
	for i := range devices {
		ip := netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)})
		m := &loop.Member{ID: uint64(i), IP: ip, IPText: []byte(ip.String())}
		ch.Join(m)
		f.devices = append(f.devices, m)
	}
	h.Flush()
	return f
}

// BenchmarkFanout measures the hot path: one device read encoded once as a
// RECEIVED frame and queued for every driver, with the outbox flushed once
// per simulated loop pass of 64 reads.
func BenchmarkFanout(b *testing.B) {
	const drivers, devices, readsPerPass = 4, 1000, 64
	f := newDispatchFanout(b, drivers, devices)
	record := make([]byte, 64)
	for _, c := range f.drivers {
		c.writes = 0
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(record)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f.ch.Publish(loop.MemberData, f.devices[i%devices], false, record)
		if i%readsPerPass == readsPerPass-1 {
			f.h.Flush()
		}
	}
	f.h.Flush()
	b.StopTimer()
	writes := 0
	for _, c := range f.drivers {
		writes += c.writes
	}
	b.ReportMetric(float64(b.N*drivers)/b.Elapsed().Seconds(), "deliveries/s")
	b.ReportMetric(float64(b.N*drivers)/float64(max(writes, 1)), "frames/write")
}

// The steady-state dispatch fan-out (a read encoded once, queued for every
// driver, written once per pass) must not allocate.
func TestDispatchFanoutDoesNotAllocate(t *testing.T) {
	f := newDispatchFanout(t, 4, 100)
	record := make([]byte, 64)
	pass := func() {
		for i := range 64 {
			f.ch.Publish(loop.MemberData, f.devices[i%len(f.devices)], false, record)
		}
		f.h.Flush()
	}
	pass() // grow the arena, span lists and dirty list once
	if allocs := testing.AllocsPerRun(100, pass); allocs != 0 {
		t.Fatalf("%.1f allocations per pass of 64 reads", allocs)
	}
	// One write per driver per pass, whatever the number of frames in it.
	if w := f.drivers[0].writes; w != 1+1+101 {
		t.Fatalf("driver 0 got %d writes over 103 passes", w)
	}
}

// The steady-state group fan-out (a member's read queued raw for every
// other member and written once per pass) must not allocate, and a member
// never hears itself.
func TestGroupFanoutDoesNotAllocate(t *testing.T) {
	h := loop.NewTestHub(memLoop{})
	ch, _ := h.OpenChannel(loop.Key{Kind: "test", Name: "group"}, loop.Policy{ToUpstreams: true, ToMembers: true}, noOwner{}, 0)
	class := h.NewClass("test", "member")
	record := make([]byte, 256)
	members := make([]*loop.Member, 50)
	conns := make([]*memConn, len(members))
	for i := range members {
		conns[i] = &memConn{}
		e := h.TestEndpoint(conns[i], class, loop.Output{Format: loop.Raw, Limit: 4 << 20})
		members[i] = &loop.Member{ID: uint64(i), IP: netip.MustParseAddr("127.0.0.1"), IPText: []byte("127.0.0.1"), Conn: e}
		ch.Join(members[i])
	}
	pass := func() {
		for i := range 64 {
			ch.Publish(loop.MemberData, members[i%len(members)], false, record)
		}
		h.Flush()
	}
	pass()
	if allocs := testing.AllocsPerRun(100, pass); allocs != 0 {
		t.Fatalf("%.1f allocations per pass of 64 reads", allocs)
	}
	// 102 passes (ours, AllocsPerRun's warm-up, 100 runs); member 0 sends 2
	// of each pass's 64 reads and hears the other 62.
	if want := 102 * 62 * len(record); conns[0].written != want {
		t.Fatalf("member 0 was written %d bytes, want %d", conns[0].written, want)
	}
}
