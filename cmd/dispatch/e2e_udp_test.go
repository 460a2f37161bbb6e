package main

// Spec §4, UDP: datagrams in and out of a dispatch port.

import (
	"net"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestUDPReceivedCarriesSourcePortAndIP(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "udp", "127.0.0.1,127.0.0.2")
	for _, ip := range []string{testkit.Localhost, "127.0.0.2"} {
		peer := testkit.UDPPeer(t, ip)
		testkit.SendDatagram(t, peer, port, []byte("trap from "+ip))
		d.ExpectReceived(ip, testkit.UDPPort(peer), []byte("trap from "+ip))
	}
}

func TestUDPIPv6Peer(t *testing.T) {
	t.Parallel()
	if pc, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback:", err)
	} else {
		pc.Close()
	}
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "udp", "::1")
	peer := testkit.UDPPeer(t, "::1")
	if _, err := peer.WriteToUDP([]byte("over v6"), &net.UDPAddr{IP: net.IPv6loopback, Port: port}); err != nil {
		t.Fatal(err)
	}
	d.ExpectReceived("::1", testkit.UDPPort(peer), []byte("over v6"))

	d.Write("::1", testkit.UDPPort(peer), []byte("back over v6"))
	if from := testkit.ExpectDatagram(t, peer, []byte("back over v6")); from.Port != port {
		t.Errorf("datagram came from port %d, want the dispatch port %d", from.Port, port)
	}
}

func TestUDPDriversListingSameIPBothReceive(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	first, port := testkit.OpenPort(t, s, "udp", testkit.Localhost)
	second := testkit.UDPDriver(t, s, port, "127.0.0.0/8")
	uninterested := testkit.UDPDriver(t, s, port, "127.0.0.2")

	peer := testkit.UDPPeer(t, testkit.Localhost)
	testkit.SendDatagram(t, peer, port, []byte("for both"))
	first.ExpectReceived(testkit.Localhost, testkit.UDPPort(peer), []byte("for both"))
	second.ExpectReceived(testkit.Localhost, testkit.UDPPort(peer), []byte("for both"))

	// The uninterested driver's first message is the one for its own peer.
	own := testkit.UDPPeer(t, "127.0.0.2")
	testkit.SendDatagram(t, own, port, []byte("mine"))
	uninterested.ExpectReceived("127.0.0.2", testkit.UDPPort(own), []byte("mine"))
}

func TestUDPWriteSendsFromDispatchPort(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "udp", testkit.Localhost)
	peer := testkit.UDPPeer(t, testkit.Localhost)

	d.Write(testkit.Localhost, testkit.UDPPort(peer), []byte("reply"))
	from := testkit.ExpectDatagram(t, peer, []byte("reply"))
	if from.Port != port {
		t.Errorf("datagram came from port %d, want the dispatch port %d", from.Port, port)
	}

	// The accept list does not restrict WRITE: 127.0.0.2 is not listed.
	unlisted := testkit.UDPPeer(t, "127.0.0.2")
	d.Write("127.0.0.2", testkit.UDPPort(unlisted), []byte("to anyone"))
	testkit.ExpectDatagram(t, unlisted, []byte("to anyone"))
}

func TestUDPZeroLengthDatagramIgnored(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "udp", testkit.Localhost)
	peer := testkit.UDPPeer(t, testkit.Localhost)

	testkit.SendDatagram(t, peer, port, nil)
	testkit.SendDatagram(t, peer, port, []byte("after empty"))
	d.ExpectReceived(testkit.Localhost, testkit.UDPPort(peer), []byte("after empty"))
	testkit.WaitForStats(t, s, testkit.UDPStats(port, 1))
}

func TestUDPLargeDatagramsArriveWhole(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "udp", testkit.Localhost)
	peer := testkit.UDPPeer(t, testkit.Localhost)
	if err := peer.SetWriteBuffer(256 << 10); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{32 << 10, 65507} { // 65507: the largest IPv4 UDP payload
		payload := testkit.RandomBytes(t, size)
		testkit.SendDatagram(t, peer, port, payload)
		d.ExpectReceived(testkit.Localhost, testkit.UDPPort(peer), payload)
	}

	// And the other way round.
	payload := testkit.RandomBytes(t, 32<<10)
	d.Write(testkit.Localhost, testkit.UDPPort(peer), payload)
	testkit.ExpectDatagram(t, peer, payload)
}

func TestUDPUnlistedSourceDropped(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "udp", testkit.Localhost)
	stranger := testkit.UDPPeer(t, "127.0.0.2")
	friend := testkit.UDPPeer(t, testkit.Localhost)

	testkit.SendDatagram(t, stranger, port, []byte("dropped"))
	testkit.SendDatagram(t, friend, port, []byte("delivered"))
	d.ExpectReceived(testkit.Localhost, testkit.UDPPort(friend), []byte("delivered"))
	testkit.SendDatagram(t, stranger, port, []byte("dropped again"))
	testkit.SendDatagram(t, friend, port, []byte("delivered again"))
	d.ExpectReceived(testkit.Localhost, testkit.UDPPort(friend), []byte("delivered again"))
}

func TestUDPInvalidWriteIgnored(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port := testkit.OpenPort(t, s, "udp", testkit.Localhost)
	peer := testkit.UDPPeer(t, testkit.Localhost)

	d.Write("not-an-ip", testkit.UDPPort(peer), []byte("bad ip"))
	d.Write("", testkit.UDPPort(peer), []byte("empty ip"))
	d.Write(testkit.Localhost, 0, []byte("port 0"))
	d.Write(testkit.Localhost, 65536, []byte("port 65536"))
	d.Write(testkit.Localhost, 1<<40, []byte("port 2^40"))

	d.Write(testkit.Localhost, testkit.UDPPort(peer), []byte("valid"))
	testkit.ExpectDatagram(t, peer, []byte("valid"))
	testkit.SendDatagram(t, peer, port, []byte("session alive"))
	d.ExpectReceived(testkit.Localhost, testkit.UDPPort(peer), []byte("session alive"))
	testkit.WaitForStats(t, s, testkit.UDPStats(port, 1))

	s.Stop() // flush every log line
	if !testkit.WarnLine.MatchString(s.Logs()) {
		t.Errorf("invalid UDP WRITEs were ignored without a warning")
	}
}

func TestUDPPortClosesWithLastDriver(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	first, port := testkit.OpenPort(t, s, "udp", testkit.Localhost)
	second := testkit.UDPDriver(t, s, port, testkit.Localhost)

	first.Drop()
	testkit.WaitForStats(t, s, testkit.UDPStats(port, 1))
	peer := testkit.UDPPeer(t, testkit.Localhost)
	testkit.SendDatagram(t, peer, port, []byte("still open"))
	second.ExpectReceived(testkit.Localhost, testkit.UDPPort(peer), []byte("still open"))

	second.Leave()
	testkit.WaitForStats(t, s, testkit.EmptyStats)
	testkit.WaitUDPPortFree(t, port)
}
