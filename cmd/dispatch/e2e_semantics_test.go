package main

// Spec §4: port lifetime, accept lists, fan-out and client lifetime (TCP).

import (
	"fmt"
	"net"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestTCPAndUDPPortsAreSeparateNamespaces(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	var tcp, udp *testkit.Driver
	port := testkit.OnFreePort(t, testkit.FreePortForBoth, func(port int) (err error) {
		if tcp, err = testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.BasePath, "tcp", port, testkit.Localhost), testkit.DriverHeader(s)); err != nil {
			return err
		}
		if udp, err = testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.BasePath, "udp", port, testkit.Localhost), testkit.DriverHeader(s)); err != nil {
			tcp.Leave()
		}
		return err
	})
	testkit.WaitForStats(t, s, fmt.Sprintf(`{"udp_listeners":{"%d":1},"tcp_listeners":{"%d":1},"tcp_clients":{"%d":0}}`, port, port, port))

	peer := testkit.UDPPeer(t, testkit.Localhost)
	testkit.SendDatagram(t, peer, port, []byte("over udp"))
	udp.ExpectReceived(testkit.Localhost, testkit.UDPPort(peer), []byte("over udp"))

	device := testkit.DialDevice(t, testkit.Localhost, port)
	testkit.Send(t, device, []byte("over tcp"))
	// The TCP driver's first messages are its own: nothing from the UDP side.
	tcp.ExpectOpened(testkit.Localhost, 0)
	tcp.ExpectReceived(testkit.Localhost, 0, []byte("over tcp"))

	// Closing one side leaves the other open.
	udp.Leave()
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))
	testkit.Send(t, device, []byte("tcp still open"))
	tcp.ExpectReceived(testkit.Localhost, 0, []byte("tcp still open"))
}

func TestPortOpensWithFirstDriverAndClosesWithLast(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	var first *testkit.Driver
	port := testkit.OnFreePort(t, testkit.FreeTCPPort, func(port int) (err error) {
		if conn, err := testkit.TryDialDevice(testkit.Localhost, port); err == nil {
			conn.Close() // someone else listens there
			return testkit.ErrPortInUse
		}
		first, err = testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.BasePath, "tcp", port, testkit.Localhost), testkit.DriverHeader(s))
		return err
	})
	device := testkit.DialDevice(t, testkit.Localhost, port)
	first.ExpectOpened(testkit.Localhost, 0)

	second := testkit.TCPDriver(t, s, port, testkit.Localhost)
	first.Drop()
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))
	testkit.Send(t, device, []byte("port still open"))
	second.ExpectReceived(testkit.Localhost, 0, []byte("port still open"))

	second.Drop()
	testkit.ExpectDisconnected(t, device)
	testkit.WaitForStats(t, s, testkit.EmptyStats)
	testkit.WaitTCPPortClosed(t, port)
}

func TestUnlistedIPIsClosedAtOnceWithoutID(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port, _ := testkit.OpenPortWithDevice(t, s, testkit.Localhost)

	for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
		testkit.ExpectDisconnected(t, testkit.DialDevice(t, ip, port))
	}

	// No OPENED for the refused ones, and no id consumed.
	testkit.DialDevice(t, testkit.Localhost, port)
	d.ExpectOpened(testkit.Localhost, 1)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 2))
}

func TestDriversListingSameIPBothGetEveryEvent(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	first, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	second := testkit.TCPDriver(t, s, port, "127.0.0.0/8")

	device := testkit.DialDevice(t, testkit.Localhost, port)
	testkit.Send(t, device, []byte("for both"))
	for _, d := range []*testkit.Driver{first, second} {
		d.ExpectOpened(testkit.Localhost, 0)
		d.ExpectReceived(testkit.Localhost, 0, []byte("for both"))
	}
	device.Close()
	first.ExpectClosed(testkit.Localhost, 0)
	second.ExpectClosed(testkit.Localhost, 0)
}

func TestDriverGetsNothingForUnlistedIP(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	listener, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	other := testkit.TCPDriver(t, s, port, "127.0.0.2")

	device := testkit.DialDevice(t, testkit.Localhost, port)
	testkit.Send(t, device, []byte("not for other"))
	listener.ExpectOpened(testkit.Localhost, 0)
	listener.ExpectReceived(testkit.Localhost, 0, []byte("not for other"))
	device.Close()
	listener.ExpectClosed(testkit.Localhost, 0)

	// other's first message is about its own device: it saw none of the above.
	testkit.DialDevice(t, "127.0.0.2", port)
	other.ExpectOpened("127.0.0.2", 1)
}

func TestDeviceStaysWhileAnotherDriverListsItsIP(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	leaving, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	staying := testkit.TCPDriver(t, s, port, testkit.Localhost)
	device := testkit.DialDevice(t, testkit.Localhost, port)
	leaving.ExpectOpened(testkit.Localhost, 0)
	staying.ExpectOpened(testkit.Localhost, 0)

	leaving.Leave()
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))

	testkit.Send(t, device, []byte("still connected"))
	staying.ExpectReceived(testkit.Localhost, 0, []byte("still connected"))
	staying.Write(testkit.Localhost, 0, []byte("yes"))
	testkit.ExpectReceives(t, device, []byte("yes"))
}

func TestClientsClosedWhenTheirIPLosesLastListingDriver(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	leaving, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	keeper := testkit.TCPDriver(t, s, port, "127.0.0.2")

	var orphans []*net.TCPConn
	for id := range uint64(2) {
		orphans = append(orphans, testkit.DialDevice(t, testkit.Localhost, port))
		leaving.ExpectOpened(testkit.Localhost, id)
	}
	survivor := testkit.DialDevice(t, "127.0.0.2", port)
	keeper.ExpectOpened("127.0.0.2", 2)

	leaving.Leave()
	for _, orphan := range orphans {
		testkit.ExpectDisconnected(t, orphan)
	}
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))

	testkit.Send(t, survivor, []byte("unaffected"))
	keeper.ExpectReceived("127.0.0.2", 2, []byte("unaffected"))
}

func TestDeviceHalfCloseProducesClosed(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port, device := testkit.OpenPortWithDevice(t, s, testkit.Localhost)
	testkit.Send(t, device, []byte("last words"))
	if err := device.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	d.ExpectReceived(testkit.Localhost, 0, []byte("last words"))
	d.ExpectClosed(testkit.Localhost, 0)
	testkit.ExpectDisconnected(t, device)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 0))
}
