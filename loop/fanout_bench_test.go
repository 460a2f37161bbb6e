package loop

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/panjf2000/gnet/v2"
)

// memConn stands in for a gnet connection: reads return a fixed chunk,
// writes are counted.
type memConn struct {
	gnet.Conn
	in      []byte
	written int
	writes  int
}

func (m *memConn) Next(int) ([]byte, error) { return m.in, nil }
func (m *memConn) OutboundBuffered() int    { return 0 }
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

// memLoop stands in for the event loop: posted flushes are run by the benchmark.
type memLoop struct{ gnet.EventLoop }

func (memLoop) Execute(context.Context, gnet.Runnable) error { return nil }

// BenchmarkFanout measures the hot path: one device read encoded once as a
// RECEIVED frame and queued for every driver, with the outbox flushed once
// per simulated loop pass of 64 reads. It must not allocate.
func BenchmarkFanout(b *testing.B) {
	const drivers, devices, readsPerPass = 4, 1000, 64
	s := &Server{cfg: DefaultConfig(), log: slog.New(slog.NewTextHandler(io.Discard, nil)), el: memLoop{}}
	st := newState(s)
	s.st = st
	ch := &channel{proto: protoTCP, port: 6001, version: 1, members: map[uint64]*device{}}
	accept, _ := parseAcceptList("127.0.0.0/8")
	conns := make([]*memConn, drivers)
	for i := range conns {
		conns[i] = &memConn{}
		st.registerDriver(&driver{sink: sink{conn: conns[i]}, accept: accept}, ch)
	}
	record := make([]byte, 64)
	devs := make([]*device, devices)
	devConns := make([]*memConn, devices)
	for i := range devs {
		ip := netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)})
		devs[i] = &device{ch: ch, ip: ip, ipText: []byte(ip.String()), id: uint64(i), open: true}
		devConns[i] = &memConn{in: record}
		devs[i].conn = devConns[i]
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(record)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := i % devices
		st.deviceTraffic(devConns[d], devs[d])
		if i%readsPerPass == readsPerPass-1 {
			st.out.scheduled = false
			st.flush()
		}
	}
	st.flush()
	b.StopTimer()
	writes := 0
	for _, c := range conns {
		writes += c.writes
	}
	b.ReportMetric(float64(b.N*drivers)/b.Elapsed().Seconds(), "deliveries/s")
	b.ReportMetric(float64(b.N*drivers)/float64(max(writes, 1)), "frames/write")
}
