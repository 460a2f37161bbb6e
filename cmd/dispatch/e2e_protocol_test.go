package main

// Spec §3: the binary WebSocket protocol.

import (
	"bytes"
	"net"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
)

// The spec's example messages, for client 127.0.0.1.
const (
	openedID0Hex       = "00 3132372e302e302e31 00 0000000000000000 00000000"
	receivedID0Hex     = "02 3132372e302e302e31 00 0000000000000000 00000007 74657374696e67"
	closedID0Hex       = "01 3132372e302e302e31 00 0000000000000000 00000000"
	writeID0TestingHex = "03 3132372e302e302e31 00 0000000000000000 00000007 74657374696e67"
	closeID1Hex        = "04 3132372e302e302e31 00 0000000000000001 00000000"
	closedID1Hex       = "01 3132372e302e302e31 00 0000000000000001 00000000"
)

func TestProtocolExactBytesForTCPClient(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	expectBytes := func(what, wantHex string) {
		t.Helper()
		if got, want := d.next(), fromHex(t, wantHex); !bytes.Equal(got, want) {
			t.Fatalf("%s: got % x\n want % x", what, got, want)
		}
	}

	first := dialDevice(t, localhost, port)
	expectBytes("OPENED", openedID0Hex)
	deviceSend(t, first, []byte("testing"))
	expectBytes("RECEIVED", receivedID0Hex)
	d.send(fromHex(t, writeID0TestingHex))
	expectDeviceReceives(t, first, []byte("testing"))
	first.Close()
	expectBytes("CLOSED", closedID0Hex)

	second := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 1)
	d.send(fromHex(t, closeID1Hex))
	expectBytes("CLOSED after CLOSE", closedID1Hex)
	expectDeviceDisconnected(t, second)
}

func TestCodecMatchesSpecExample(t *testing.T) {
	t.Parallel()
	got := codec.AppendMessage(nil, codec.Received, []byte(localhost), 0, []byte("testing"))
	if want := fromHex(t, receivedID0Hex); !bytes.Equal(got, want) || len(got) != 30 {
		t.Fatalf("codec encodes % x, spec says % x", got, want)
	}
	if got := codec.AppendMessage(nil, codec.Opened, []byte(localhost), 0, nil); len(got) != 23 {
		t.Fatalf("OPENED is %d bytes, spec says 23", len(got))
	}
}

func TestClientIDsCountPerPortFromZero(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	other, otherPort := s.openPort(t, "tcp", localhost)

	devices := make([]*net.TCPConn, 3)
	for id := range uint64(3) {
		devices[id] = dialDevice(t, localhost, port)
		d.expectOpened(localhost, id)
	}
	dialDevice(t, localhost, otherPort)
	other.expectOpened(localhost, 0)

	// Ids are never reused while the port stays open.
	devices[1].Close()
	d.expectClientClosed(localhost, 1)
	dialDevice(t, localhost, port)
	d.expectOpened(localhost, 3)
}

func TestClientIDsResetWhenPortReopens(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)
	dialDevice(t, localhost, port)
	d.expectOpened(localhost, 1)

	d.leave()
	s.waitForStats(t, emptyStats)

	again := s.tcpDriver(t, port, localhost)
	dialDevice(t, localhost, port)
	again.expectOpened(localhost, 0)
}

func TestReceivedCarriesEachRead(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	device := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)

	for _, chunk := range []string{"a", "bcd", "\x00\xff binary \x00"} {
		deviceSend(t, device, []byte(chunk))
		d.expectReceived(localhost, 0, []byte(chunk))
	}

	big := randomBytes(t, 256<<10)
	deviceSend(t, device, big)
	if got := d.expectStream(localhost, 0, len(big)); !bytes.Equal(got, big) {
		t.Fatal("a 256 KiB stream arrived corrupted")
	}
}

func TestWriteReachesDevice(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	device := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)

	d.write(localhost, 0, []byte("hello"))
	expectDeviceReceives(t, device, []byte("hello"))

	big := randomBytes(t, 300<<10)
	d.write(localhost, 0, big)
	expectDeviceReceives(t, device, big)

	// Trailing bytes after data are ignored.
	d.send(append(codec.AppendMessage(nil, codec.Write, []byte(localhost), 0, []byte("exact")), "trailing"...))
	d.write(localhost, 0, []byte("|next"))
	expectDeviceReceives(t, device, []byte("exact|next"))
}

func TestWriteAndCloseMayAddressAnyClientOnThePort(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	listener, port := s.openPort(t, "tcp", localhost)
	stranger := s.tcpDriver(t, port, "127.0.0.2")
	device := dialDevice(t, localhost, port)
	listener.expectOpened(localhost, 0)

	stranger.write(localhost, 0, []byte("from a driver not listing the ip"))
	expectDeviceReceives(t, device, []byte("from a driver not listing the ip"))

	stranger.closeClient(localhost, 0)
	expectDeviceDisconnected(t, device)
	listener.expectClientClosed(localhost, 0)
}

func TestCloseNotifiesEveryInterestedDriver(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	requester, port := s.openPort(t, "tcp", localhost)
	peer := s.tcpDriver(t, port, localhost)
	uninterested := s.tcpDriver(t, port, "127.0.0.2")

	device := dialDevice(t, localhost, port)
	requester.expectOpened(localhost, 0)
	peer.expectOpened(localhost, 0)

	// CLOSE data is ignored, but its data_size is still present.
	requester.send(codec.AppendMessage(nil, codec.Close, []byte(localhost), 0, []byte("ignored")))
	expectDeviceDisconnected(t, device)
	requester.expectClientClosed(localhost, 0)
	peer.expectClientClosed(localhost, 0)

	// The uninterested driver's first message is about its own client.
	dialDevice(t, "127.0.0.2", port)
	uninterested.expectOpened("127.0.0.2", 1)
}

func TestUnknownClientWriteAndCloseAreNoOps(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	device := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)

	d.write(localhost, 7, []byte("nobody"))
	d.closeClient(localhost, 7)
	d.write(localhost, 1<<63, []byte("nobody"))
	d.closeClient("10.9.8.7", 99)

	d.write(localhost, 0, []byte("still here"))
	expectDeviceReceives(t, device, []byte("still here"))
	deviceSend(t, device, []byte("me too"))
	d.expectReceived(localhost, 0, []byte("me too"))
	s.waitForStats(t, tcpStats(port, 1, 1))
}

func TestTextMessagesAreIgnored(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	device := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)

	// A well-formed WRITE (valid UTF-8, all bytes < 0x80) sent as text.
	asText := codec.AppendMessage(nil, codec.Write, []byte(localhost), 0, []byte("TEXT"))
	if err := wsutil.WriteClientText(d.conn, asText); err != nil {
		t.Fatal(err)
	}
	if err := wsutil.WriteClientText(d.conn, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	d.write(localhost, 0, []byte("binary"))
	expectDeviceReceives(t, device, []byte("binary"))

	deviceSend(t, device, []byte("alive"))
	d.expectReceived(localhost, 0, []byte("alive"))
}

func TestPingGetsOnePongEchoingPayload(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, _ := s.openPort(t, "tcp", localhost)
	for _, payload := range []string{"first ping", "second ping", ""} {
		if err := wsutil.WriteClientMessage(d.conn, ws.OpPing, []byte(payload)); err != nil {
			t.Fatal(err)
		}
		h, got, err := d.readFrame()
		if err != nil {
			t.Fatalf("waiting for the pong to %q: %v", payload, err)
		}
		if h.OpCode != ws.OpPong || string(got) != payload {
			t.Fatalf("got %v frame %q, want pong %q", h.OpCode, got, payload)
		}
	}
}

func TestCloseFrameGetsCloseFrameBack(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	s.waitForStats(t, tcpStats(port, 1, 0))

	if err := wsutil.WriteClientMessage(d.conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")); err != nil {
		t.Fatal(err)
	}
	h, payload, err := d.readFrame()
	if err != nil {
		t.Fatalf("waiting for the close frame: %v", err)
	}
	if h.OpCode != ws.OpClose {
		t.Fatalf("got %v frame %q, want close", h.OpCode, payload)
	}
	if code, _ := ws.ParseCloseFrameData(payload); len(payload) >= 2 && code != ws.StatusNormalClosure {
		t.Errorf("close code %d, want 1000 echoed", code)
	}
	s.waitForStats(t, emptyStats)
}

func TestMalformedDriverMessageCloses1007(t *testing.T) {
	t.Parallel()
	ip := []byte(localhost)
	header := func(typ byte) []byte { return append([]byte{typ}, append(ip, 0)...) }
	cases := map[string][]byte{
		"empty":                {},
		"truncated id":         append(header(3), 0, 0, 0, 0),
		"truncated size":       append(header(3), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
		"no NUL":               append(append([]byte{3}, ip...), bytes.Repeat([]byte{0xff}, 16)...),
		"unknown type 5":       codec.AppendMessage(nil, 5, ip, 0, nil),
		"unknown type 255":     codec.AppendMessage(nil, 255, ip, 0, []byte("x")),
		"data_size past end":   append(codec.AppendHeader(nil, codec.Write, ip, 0, 16), "abc"...),
		"data_size way beyond": append(codec.AppendHeader(nil, codec.Write, ip, 0, 0xffffffff), "abc"...),
	}
	for name, msg := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := startServer(t)
			offender, port := s.openPort(t, "tcp", localhost)
			bystander := s.tcpDriver(t, port, localhost)
			s.waitForStats(t, tcpStats(port, 2, 0))

			offender.send(msg)
			offender.expectCloseCode(ws.StatusInvalidFramePayloadData)
			s.waitForStats(t, tcpStats(port, 1, 0))

			// The bystander noticed nothing and keeps working.
			device := dialDevice(t, localhost, port)
			bystander.expectOpened(localhost, 0)
			bystander.write(localhost, 0, []byte("still fine"))
			expectDeviceReceives(t, device, []byte("still fine"))
		})
	}
}
