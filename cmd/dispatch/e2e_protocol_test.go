package main

// Spec §3: the binary WebSocket protocol.

import (
	"bytes"
	"net"
	"testing"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/internal/testkit"
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
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	expectBytes := func(what, wantHex string) {
		t.Helper()
		if got, want := d.Next(), testkit.FromHex(t, wantHex); !bytes.Equal(got, want) {
			t.Fatalf("%s: got % x\n want % x", what, got, want)
		}
	}

	first := testkit.DialDevice(t, testkit.Localhost, port)
	expectBytes("OPENED", openedID0Hex)
	testkit.Send(t, first, []byte("testing"))
	expectBytes("RECEIVED", receivedID0Hex)
	d.Send(testkit.FromHex(t, writeID0TestingHex))
	testkit.ExpectReceives(t, first, []byte("testing"))
	first.Close()
	expectBytes("CLOSED", closedID0Hex)

	second := testkit.DialDevice(t, testkit.Localhost, port)
	d.ExpectOpened(testkit.Localhost, 1)
	d.Send(testkit.FromHex(t, closeID1Hex))
	expectBytes("CLOSED after CLOSE", closedID1Hex)
	testkit.ExpectDisconnected(t, second)
}

func TestCodecMatchesSpecExample(t *testing.T) {
	t.Parallel()
	got := codec.AppendMessage(nil, codec.Received, []byte(testkit.Localhost), 0, []byte("testing"))
	if want := testkit.FromHex(t, receivedID0Hex); !bytes.Equal(got, want) || len(got) != 30 {
		t.Fatalf("codec encodes % x, spec says % x", got, want)
	}
	if got := codec.AppendMessage(nil, codec.Opened, []byte(testkit.Localhost), 0, nil); len(got) != 23 {
		t.Fatalf("OPENED is %d bytes, spec says 23", len(got))
	}
}

func TestClientIDsCountPerPortFromZero(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	other, otherPort := testkit.OpenPort(t, s, "tcp", testkit.Localhost)

	devices := make([]*net.TCPConn, 3)
	for id := range uint64(3) {
		devices[id] = testkit.DialDevice(t, testkit.Localhost, port)
		d.ExpectOpened(testkit.Localhost, id)
	}
	testkit.DialDevice(t, testkit.Localhost, otherPort)
	other.ExpectOpened(testkit.Localhost, 0)

	// Ids are never reused while the port stays open.
	devices[1].Close()
	d.ExpectClosed(testkit.Localhost, 1)
	testkit.DialDevice(t, testkit.Localhost, port)
	d.ExpectOpened(testkit.Localhost, 3)
}

func TestClientIDsResetWhenPortReopens(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port, _ := testkit.OpenPortWithDevice(t, s, testkit.Localhost)
	testkit.DialDevice(t, testkit.Localhost, port)
	d.ExpectOpened(testkit.Localhost, 1)

	d.Leave()
	testkit.WaitForStats(t, s, testkit.EmptyStats)

	again := testkit.TCPDriver(t, s, port, testkit.Localhost)
	testkit.DialDevice(t, testkit.Localhost, port)
	again.ExpectOpened(testkit.Localhost, 0)
}

func TestReceivedCarriesEachRead(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, _, device := testkit.OpenPortWithDevice(t, s, testkit.Localhost)

	for _, chunk := range []string{"a", "bcd", "\x00\xff binary \x00"} {
		testkit.Send(t, device, []byte(chunk))
		d.ExpectReceived(testkit.Localhost, 0, []byte(chunk))
	}

	big := testkit.RandomBytes(t, 256<<10)
	testkit.Send(t, device, big)
	if got := d.ExpectStream(testkit.Localhost, 0, len(big)); !bytes.Equal(got, big) {
		t.Fatal("a 256 KiB stream arrived corrupted")
	}
}

func TestWriteReachesDevice(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, _, device := testkit.OpenPortWithDevice(t, s, testkit.Localhost)

	d.Write(testkit.Localhost, 0, []byte("hello"))
	testkit.ExpectReceives(t, device, []byte("hello"))

	big := testkit.RandomBytes(t, 300<<10)
	d.Write(testkit.Localhost, 0, big)
	testkit.ExpectReceives(t, device, big)

	// Trailing bytes after data are ignored.
	d.Send(append(codec.AppendMessage(nil, codec.Write, []byte(testkit.Localhost), 0, []byte("exact")), "trailing"...))
	d.Write(testkit.Localhost, 0, []byte("|next"))
	testkit.ExpectReceives(t, device, []byte("exact|next"))
}

func TestWriteAndCloseMayAddressAnyClientOnThePort(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	listener, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	stranger := testkit.TCPDriver(t, s, port, "127.0.0.2")
	device := testkit.DialDevice(t, testkit.Localhost, port)
	listener.ExpectOpened(testkit.Localhost, 0)

	stranger.Write(testkit.Localhost, 0, []byte("from a driver not listing the ip"))
	testkit.ExpectReceives(t, device, []byte("from a driver not listing the ip"))

	stranger.CloseClient(testkit.Localhost, 0)
	testkit.ExpectDisconnected(t, device)
	listener.ExpectClosed(testkit.Localhost, 0)
}

func TestCloseNotifiesEveryInterestedDriver(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	requester, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	peer := testkit.TCPDriver(t, s, port, testkit.Localhost)
	uninterested := testkit.TCPDriver(t, s, port, "127.0.0.2")

	device := testkit.DialDevice(t, testkit.Localhost, port)
	requester.ExpectOpened(testkit.Localhost, 0)
	peer.ExpectOpened(testkit.Localhost, 0)

	// CLOSE data is ignored, but its data_size is still present.
	requester.Send(codec.AppendMessage(nil, codec.Close, []byte(testkit.Localhost), 0, []byte("ignored")))
	testkit.ExpectDisconnected(t, device)
	requester.ExpectClosed(testkit.Localhost, 0)
	peer.ExpectClosed(testkit.Localhost, 0)

	// The uninterested driver's first message is about its own client.
	testkit.DialDevice(t, "127.0.0.2", port)
	uninterested.ExpectOpened("127.0.0.2", 1)
}

func TestUnknownClientWriteAndCloseAreNoOps(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port, device := testkit.OpenPortWithDevice(t, s, testkit.Localhost)

	d.Write(testkit.Localhost, 7, []byte("nobody"))
	d.CloseClient(testkit.Localhost, 7)
	d.Write(testkit.Localhost, 1<<63, []byte("nobody"))
	d.CloseClient("10.9.8.7", 99)

	d.Write(testkit.Localhost, 0, []byte("still here"))
	testkit.ExpectReceives(t, device, []byte("still here"))
	testkit.Send(t, device, []byte("me too"))
	d.ExpectReceived(testkit.Localhost, 0, []byte("me too"))
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))
}

func TestTextMessagesAreIgnored(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, _, device := testkit.OpenPortWithDevice(t, s, testkit.Localhost)

	// A well-formed WRITE (valid UTF-8, all bytes < 0x80) sent as text.
	asText := codec.AppendMessage(nil, codec.Write, []byte(testkit.Localhost), 0, []byte("TEXT"))
	if err := wsutil.WriteClientText(d.Conn, asText); err != nil {
		t.Fatal(err)
	}
	if err := wsutil.WriteClientText(d.Conn, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	d.Write(testkit.Localhost, 0, []byte("binary"))
	testkit.ExpectReceives(t, device, []byte("binary"))

	testkit.Send(t, device, []byte("alive"))
	d.ExpectReceived(testkit.Localhost, 0, []byte("alive"))
}

func TestPingGetsOnePongEchoingPayload(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, _ := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	for _, payload := range []string{"first ping", "second ping", ""} {
		if err := wsutil.WriteClientMessage(d.Conn, ws.OpPing, []byte(payload)); err != nil {
			t.Fatal(err)
		}
		h, got, err := d.ReadFrame()
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
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 0))

	if err := wsutil.WriteClientMessage(d.Conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")); err != nil {
		t.Fatal(err)
	}
	h, payload, err := d.ReadFrame()
	if err != nil {
		t.Fatalf("waiting for the close frame: %v", err)
	}
	if h.OpCode != ws.OpClose {
		t.Fatalf("got %v frame %q, want close", h.OpCode, payload)
	}
	if code, _ := ws.ParseCloseFrameData(payload); len(payload) >= 2 && code != ws.StatusNormalClosure {
		t.Errorf("close code %d, want 1000 echoed", code)
	}
	testkit.WaitForStats(t, s, testkit.EmptyStats)
}

func TestMalformedDriverMessageCloses1007(t *testing.T) {
	ip := []byte(testkit.Localhost)
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
	forEachKind(t, func(t *testing.T, k channelKind) {
		for name, msg := range cases {
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				s := testkit.Start(t, k.env()...)
				offender, ch := k.open(t, s, testkit.Localhost)
				bystander := attach(t, s, k, ch, testkit.Localhost)
				k.waitCounts(t, s, ch, 2, 0)

				offender.Send(msg)
				offender.ExpectCloseCode(ws.StatusInvalidFramePayloadData)
				k.waitCounts(t, s, ch, 1, 0)

				// The bystander noticed nothing and keeps working.
				producer := connect(t, s, k, ch, testkit.Localhost)
				id := expectOpened(t, k, bystander, ch, testkit.Localhost)
				bystander.Write(testkit.Localhost, id, []byte("still fine"))
				testkit.ExpectReceives(t, producer, []byte("still fine"))
			})
		}
	})
}
