package main

// Spec §4, UDP: datagrams in and out of a dispatch port.

import (
	"net"
	"strconv"
	"testing"
	"time"
)

func TestUDPReceivedCarriesSourcePortAndIP(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "udp", "127.0.0.1,127.0.0.2")
	for _, ip := range []string{localhost, "127.0.0.2"} {
		peer := udpPeer(t, ip)
		sendDatagram(t, peer, port, []byte("trap from "+ip))
		d.expectReceived(ip, udpPort(peer), []byte("trap from "+ip))
	}
}

func TestUDPIPv6Peer(t *testing.T) {
	t.Parallel()
	if pc, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback:", err)
	} else {
		pc.Close()
	}
	s := startServer(t)
	d, port := s.openPort(t, "udp", "::1")
	peer := udpPeer(t, "::1")
	if _, err := peer.WriteToUDP([]byte("over v6"), &net.UDPAddr{IP: net.IPv6loopback, Port: port}); err != nil {
		t.Fatal(err)
	}
	d.expectReceived("::1", udpPort(peer), []byte("over v6"))

	d.write("::1", udpPort(peer), []byte("back over v6"))
	if from := expectDatagram(t, peer, []byte("back over v6")); from.Port != port {
		t.Errorf("datagram came from port %d, want the dispatch port %d", from.Port, port)
	}
}

func TestUDPDriversListingSameIPBothReceive(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	first, port := s.openPort(t, "udp", localhost)
	second := s.udpDriver(t, port, "127.0.0.0/8")
	uninterested := s.udpDriver(t, port, "127.0.0.2")

	peer := udpPeer(t, localhost)
	sendDatagram(t, peer, port, []byte("for both"))
	first.expectReceived(localhost, udpPort(peer), []byte("for both"))
	second.expectReceived(localhost, udpPort(peer), []byte("for both"))

	// The uninterested driver's first message is the one for its own peer.
	own := udpPeer(t, "127.0.0.2")
	sendDatagram(t, own, port, []byte("mine"))
	uninterested.expectReceived("127.0.0.2", udpPort(own), []byte("mine"))
}

func TestUDPWriteSendsFromDispatchPort(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "udp", localhost)
	peer := udpPeer(t, localhost)

	d.write(localhost, udpPort(peer), []byte("reply"))
	from := expectDatagram(t, peer, []byte("reply"))
	if from.Port != port {
		t.Errorf("datagram came from port %d, want the dispatch port %d", from.Port, port)
	}

	// The accept list does not restrict WRITE: 127.0.0.2 is not listed.
	unlisted := udpPeer(t, "127.0.0.2")
	d.write("127.0.0.2", udpPort(unlisted), []byte("to anyone"))
	expectDatagram(t, unlisted, []byte("to anyone"))
}

func TestUDPZeroLengthDatagramIgnored(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "udp", localhost)
	peer := udpPeer(t, localhost)

	sendDatagram(t, peer, port, nil)
	sendDatagram(t, peer, port, []byte("after empty"))
	d.expectReceived(localhost, udpPort(peer), []byte("after empty"))
	s.waitForStats(t, udpStats(port, 1))
}

func TestUDPLargeDatagramsArriveWhole(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "udp", localhost)
	peer := udpPeer(t, localhost)
	if err := peer.SetWriteBuffer(256 << 10); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{32 << 10, 65507} { // 65507: the largest IPv4 UDP payload
		payload := randomBytes(t, size)
		sendDatagram(t, peer, port, payload)
		d.expectReceived(localhost, udpPort(peer), payload)
	}

	// And the other way round.
	payload := randomBytes(t, 32<<10)
	d.write(localhost, udpPort(peer), payload)
	expectDatagram(t, peer, payload)
}

func TestUDPUnlistedSourceDropped(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "udp", localhost)
	stranger := udpPeer(t, "127.0.0.2")
	friend := udpPeer(t, localhost)

	sendDatagram(t, stranger, port, []byte("dropped"))
	sendDatagram(t, friend, port, []byte("delivered"))
	d.expectReceived(localhost, udpPort(friend), []byte("delivered"))
	sendDatagram(t, stranger, port, []byte("dropped again"))
	sendDatagram(t, friend, port, []byte("delivered again"))
	d.expectReceived(localhost, udpPort(friend), []byte("delivered again"))
}

func TestUDPInvalidWriteIgnored(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "udp", localhost)
	peer := udpPeer(t, localhost)

	d.write("not-an-ip", udpPort(peer), []byte("bad ip"))
	d.write("", udpPort(peer), []byte("empty ip"))
	d.write(localhost, 0, []byte("port 0"))
	d.write(localhost, 65536, []byte("port 65536"))
	d.write(localhost, 1<<40, []byte("port 2^40"))

	d.write(localhost, udpPort(peer), []byte("valid"))
	expectDatagram(t, peer, []byte("valid"))
	sendDatagram(t, peer, port, []byte("session alive"))
	d.expectReceived(localhost, udpPort(peer), []byte("session alive"))
	s.waitForStats(t, udpStats(port, 1))

	s.stop() // flush every log line
	if !warnLine.MatchString(s.logs.String()) {
		t.Errorf("invalid UDP WRITEs were ignored without a warning")
	}
}

func TestUDPPortClosesWithLastDriver(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	first, port := s.openPort(t, "udp", localhost)
	second := s.udpDriver(t, port, localhost)

	first.drop()
	s.waitForStats(t, udpStats(port, 1))
	peer := udpPeer(t, localhost)
	sendDatagram(t, peer, port, []byte("still open"))
	second.expectReceived(localhost, udpPort(peer), []byte("still open"))

	second.leave()
	s.waitForStats(t, emptyStats)
	waitUDPPortFree(t, port)
}

// waitUDPPortFree binds the port until the server has released it.
func waitUDPPortFree(t *testing.T, port int) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for {
		conn, err := net.ListenPacket("udp", ":"+strconv.Itoa(port))
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("UDP port %d still bound: %v", port, err)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}
