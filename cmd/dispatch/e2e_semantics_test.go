package main

// Spec §4: port lifetime, accept lists, fan-out and client lifetime (TCP).

import (
	"fmt"
	"net"
	"testing"
)

func TestTCPAndUDPPortsAreSeparateNamespaces(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	var tcp, udp *driver
	port := onFreePort(t, freePortForBoth, func(port int) (err error) {
		if tcp, err = s.dialDriver(t, dispatchTarget(basePath, "tcp", port, localhost), s.driverHeader()); err != nil {
			return err
		}
		if udp, err = s.dialDriver(t, dispatchTarget(basePath, "udp", port, localhost), s.driverHeader()); err != nil {
			tcp.leave()
		}
		return err
	})
	s.waitForStats(t, fmt.Sprintf(`{"udp_listeners":{"%d":1},"tcp_listeners":{"%d":1},"tcp_clients":{"%d":0}}`, port, port, port))

	peer := udpPeer(t, localhost)
	sendDatagram(t, peer, port, []byte("over udp"))
	udp.expectReceived(localhost, udpPort(peer), []byte("over udp"))

	device := dialDevice(t, localhost, port)
	deviceSend(t, device, []byte("over tcp"))
	// The TCP driver's first messages are its own: nothing from the UDP side.
	tcp.expectOpened(localhost, 0)
	tcp.expectReceived(localhost, 0, []byte("over tcp"))

	// Closing one side leaves the other open.
	udp.leave()
	s.waitForStats(t, tcpStats(port, 1, 1))
	deviceSend(t, device, []byte("tcp still open"))
	tcp.expectReceived(localhost, 0, []byte("tcp still open"))
}

func TestPortOpensWithFirstDriverAndClosesWithLast(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	var first *driver
	port := onFreePort(t, freeTCPPort, func(port int) (err error) {
		if conn, err := tryDialDevice(localhost, port); err == nil {
			conn.Close() // someone else listens there
			return errPortInUse
		}
		first, err = s.dialDriver(t, dispatchTarget(basePath, "tcp", port, localhost), s.driverHeader())
		return err
	})
	device := dialDevice(t, localhost, port)
	first.expectOpened(localhost, 0)

	second := s.tcpDriver(t, port, localhost)
	first.drop()
	s.waitForStats(t, tcpStats(port, 1, 1))
	deviceSend(t, device, []byte("port still open"))
	second.expectReceived(localhost, 0, []byte("port still open"))

	second.drop()
	expectDeviceDisconnected(t, device)
	s.waitForStats(t, emptyStats)
	waitTCPPortClosed(t, port)
}

func TestUnlistedIPIsClosedAtOnceWithoutID(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)

	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		expectDeviceDisconnected(t, dialDevice(t, ip, port))
	}

	// No OPENED for the refused ones, and no id consumed.
	dialDevice(t, localhost, port)
	d.expectOpened(localhost, 1)
	s.waitForStats(t, tcpStats(port, 1, 2))
}

func TestDriversListingSameIPBothGetEveryEvent(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	first, port := s.openPort(t, "tcp", localhost)
	second := s.tcpDriver(t, port, "127.0.0.0/8")

	device := dialDevice(t, localhost, port)
	deviceSend(t, device, []byte("for both"))
	for _, d := range []*driver{first, second} {
		d.expectOpened(localhost, 0)
		d.expectReceived(localhost, 0, []byte("for both"))
	}
	device.Close()
	first.expectClientClosed(localhost, 0)
	second.expectClientClosed(localhost, 0)
}

func TestDriverGetsNothingForUnlistedIP(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	listener, port := s.openPort(t, "tcp", localhost)
	other := s.tcpDriver(t, port, "127.0.0.2")

	device := dialDevice(t, localhost, port)
	deviceSend(t, device, []byte("not for other"))
	listener.expectOpened(localhost, 0)
	listener.expectReceived(localhost, 0, []byte("not for other"))
	device.Close()
	listener.expectClientClosed(localhost, 0)

	// other's first message is about its own device: it saw none of the above.
	dialDevice(t, "127.0.0.2", port)
	other.expectOpened("127.0.0.2", 1)
}

func TestDeviceStaysWhileAnotherDriverListsItsIP(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	leaving, port := s.openPort(t, "tcp", localhost)
	staying := s.tcpDriver(t, port, localhost)
	device := dialDevice(t, localhost, port)
	leaving.expectOpened(localhost, 0)
	staying.expectOpened(localhost, 0)

	leaving.leave()
	s.waitForStats(t, tcpStats(port, 1, 1))

	deviceSend(t, device, []byte("still connected"))
	staying.expectReceived(localhost, 0, []byte("still connected"))
	staying.write(localhost, 0, []byte("yes"))
	expectDeviceReceives(t, device, []byte("yes"))
}

func TestClientsClosedWhenTheirIPLosesLastListingDriver(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	leaving, port := s.openPort(t, "tcp", localhost)
	keeper := s.tcpDriver(t, port, "127.0.0.2")

	var orphans []*net.TCPConn
	for id := range uint64(2) {
		orphans = append(orphans, dialDevice(t, localhost, port))
		leaving.expectOpened(localhost, id)
	}
	survivor := dialDevice(t, "127.0.0.2", port)
	keeper.expectOpened("127.0.0.2", 2)

	leaving.leave()
	for _, orphan := range orphans {
		expectDeviceDisconnected(t, orphan)
	}
	s.waitForStats(t, tcpStats(port, 1, 1))

	deviceSend(t, survivor, []byte("unaffected"))
	keeper.expectReceived("127.0.0.2", 2, []byte("unaffected"))
}

func TestDeviceHalfCloseProducesClosed(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	device := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)
	deviceSend(t, device, []byte("last words"))
	if err := device.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	d.expectReceived(localhost, 0, []byte("last words"))
	d.expectClientClosed(localhost, 0)
	expectDeviceDisconnected(t, device)
	s.waitForStats(t, tcpStats(port, 1, 0))
}
