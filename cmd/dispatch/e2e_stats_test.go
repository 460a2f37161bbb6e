package main

// Spec §5: the stats JSON.

import (
	"net/http"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestStatsEmptyShape(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	for _, path := range []string{testkit.BasePath, testkit.BasePath + "/"} {
		testkit.ExpectResponse(t, path, testkit.Get(t, s, path, testkit.BearerHeader(s)), http.StatusOK, "application/json", testkit.EmptyStats)
		testkit.ExpectResponse(t, path+" without token", testkit.Get(t, s, path), http.StatusUnauthorized, "application/json", testkit.InvalidTokenBody)
	}
}

func TestStatsTCPCountsGoUpAndDown(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	first, port := testkit.OpenPort(t, s, "tcp", testkit.Localhost)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 0))

	second := testkit.TCPDriver(t, s, port, testkit.Localhost+",127.0.0.2")
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 2, 0))

	deviceA := testkit.DialDevice(t, testkit.Localhost, port)
	first.ExpectOpened(testkit.Localhost, 0)
	deviceB := testkit.DialDevice(t, "127.0.0.2", port)
	second.ExpectOpened(testkit.Localhost, 0)
	second.ExpectOpened("127.0.0.2", 1)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 2, 2))

	deviceA.Close()
	first.ExpectClosed(testkit.Localhost, 0)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 2, 1))

	first.Leave()
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))

	second.Drop()
	testkit.WaitForStats(t, s, testkit.EmptyStats)
	testkit.ExpectDisconnected(t, deviceB)
}

func TestStatsUDPCountsGoUpAndDown(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	first, port := testkit.OpenPort(t, s, "udp", testkit.Localhost)
	testkit.WaitForStats(t, s, testkit.UDPStats(port, 1))

	second := testkit.UDPDriver(t, s, port, testkit.Localhost)
	testkit.WaitForStats(t, s, testkit.UDPStats(port, 2))

	first.Leave()
	testkit.WaitForStats(t, s, testkit.UDPStats(port, 1))
	second.Drop()
	testkit.WaitForStats(t, s, testkit.EmptyStats)
}

func TestStatsTCPClientsDropOnceOnDriverClose(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port, device := testkit.OpenPortWithDevice(t, s, testkit.Localhost)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))

	d.CloseClient(testkit.Localhost, 0)
	d.ExpectClosed(testkit.Localhost, 0)
	testkit.ExpectDisconnected(t, device)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 0))

	// A second decrement, early or late, would show here.
	testkit.DialDevice(t, testkit.Localhost, port)
	d.ExpectOpened(testkit.Localhost, 1)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))
}

func TestStatsTCPClientsDropOnceOnDeviceClose(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	d, port, device := testkit.OpenPortWithDevice(t, s, testkit.Localhost)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))

	device.Close()
	d.ExpectClosed(testkit.Localhost, 0)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 0))

	testkit.DialDevice(t, testkit.Localhost, port)
	d.ExpectOpened(testkit.Localhost, 1)
	testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 1))
}
