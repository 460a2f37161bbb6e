package dispatch_test

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/inproc"
	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestTCPRoundTripExactBytes(t *testing.T) {
	s := inproc.Start(t, inproc.Options{})
	port := testkit.FreeTCPPort(t)
	drv := testkit.TCPDriver(t, s, port, "127.0.0.1")
	dev := testkit.DialDevice(t, "127.0.0.1", port)

	if got, want := hex.EncodeToString(drv.Next()), "00"+"3132372e302e302e31"+"00"+"0000000000000000"+"00000000"; got != want {
		t.Fatalf("OPENED = %s, want %s", got, want)
	}
	testkit.Send(t, dev, []byte("testing"))
	if got, want := hex.EncodeToString(drv.Next()), "02"+"3132372e302e302e31"+"00"+"0000000000000000"+"00000007"+"74657374696e67"; got != want {
		t.Fatalf("RECEIVED = %s, want %s", got, want)
	}
	drv.Write("127.0.0.1", 0, []byte("reply"))
	testkit.ExpectReceives(t, dev, []byte("reply"))
	drv.CloseClient("127.0.0.1", 0)
	if m := drv.NextParsed(); m.Type != codec.Closed || m.ID != 0 {
		t.Fatalf("want CLOSED id 0, got %v id %d", m.Type, m.ID)
	}
	if _, err := dev.Read(make([]byte, 5)); err == nil {
		t.Fatal("device still open after CLOSE")
	}
}

func TestUDPRoundTrip(t *testing.T) {
	s := inproc.Start(t, inproc.Options{})
	port := testkit.FreeUDPPort(t)
	drv := testkit.UDPDriver(t, s, port, "127.0.0.1")
	peer := testkit.UDPPeer(t, "127.0.0.1")
	testkit.SendDatagram(t, peer, port, nil) // zero-length: ignored
	big := bytes.Repeat([]byte("x"), 32<<10)
	testkit.SendDatagram(t, peer, port, big)
	m := drv.NextParsed()
	if m.Type != codec.Received || m.ID != testkit.UDPPort(peer) || !bytes.Equal(m.Data, big) {
		t.Fatalf("unexpected %v id %d len %d", m.Type, m.ID, len(m.Data))
	}
	drv.Write("127.0.0.1", m.ID, []byte("pong"))
	testkit.ExpectDatagramFrom(t, peer, port, []byte("pong"))
}

func TestMalformedMessageClosesWith1007(t *testing.T) {
	s := inproc.Start(t, inproc.Options{})
	port := testkit.FreeTCPPort(t)
	drv := testkit.TCPDriver(t, s, port, "127.0.0.1")
	drv.Send([]byte{3, '1', '2'})
	drv.ExpectCloseCode(ws.StatusInvalidFramePayloadData)
	testkit.Eventually(t, testkit.EventTimeout, "port closed with its last driver", func() bool {
		return strings.Contains(testkit.StatsBody(t, s, testkit.BasePath), `"tcp_listeners":{}`)
	})
}

// Large reads skip the arena and are written at once; small ones are
// batched. Interleaved, every driver must still see the device's exact byte
// stream in order.
func TestLargeAndSmallReadsKeepTheirOrder(t *testing.T) {
	s := inproc.Start(t, inproc.Options{})
	port := testkit.FreeTCPPort(t)
	drivers := []*testkit.Driver{testkit.TCPDriver(t, s, port, "127.0.0.1"), testkit.TCPDriver(t, s, port, "127.0.0.0/8")}
	dev := testkit.DialDevice(t, "127.0.0.1", port)
	for _, d := range drivers {
		if m := d.NextParsed(); m.Type != codec.Opened {
			t.Fatalf("want OPENED, got %v", m.Type)
		}
	}
	var sent []byte
	for i := range 40 {
		size := 10
		if i%3 == 0 {
			size = 48 << 10
		}
		chunk := bytes.Repeat([]byte{byte('a' + i%26)}, size)
		sent = append(sent, chunk...)
		testkit.Send(t, dev, chunk)
	}
	for i, d := range drivers {
		var got []byte
		for len(got) < len(sent) {
			m := d.NextParsed()
			if m.Type != codec.Received {
				t.Fatalf("driver %d: want RECEIVED, got %v", i, m.Type)
			}
			got = append(got, m.Data...)
		}
		if !bytes.Equal(got, sent) {
			t.Fatalf("driver %d: stream differs (got %d bytes, sent %d)", i, len(got), len(sent))
		}
	}
}
