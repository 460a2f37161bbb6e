package main

// Spec §5: the stats JSON.

import (
	"net/http"
	"testing"
)

func TestStatsEmptyShape(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, path := range []string{basePath, basePath + "/"} {
		expectResponse(t, path, s.get(t, path, s.bearerHeader()), http.StatusOK, "application/json", emptyStats)
		expectResponse(t, path+" without token", s.get(t, path), http.StatusUnauthorized, "application/json", invalidTokenBody)
	}
}

func TestStatsTCPCountsGoUpAndDown(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	first, port := s.openPort(t, "tcp", localhost)
	s.waitForStats(t, tcpStats(port, 1, 0))

	second := s.tcpDriver(t, port, localhost+",127.0.0.2")
	s.waitForStats(t, tcpStats(port, 2, 0))

	deviceA := dialDevice(t, localhost, port)
	first.expectOpened(localhost, 0)
	deviceB := dialDevice(t, "127.0.0.2", port)
	second.expectOpened(localhost, 0)
	second.expectOpened("127.0.0.2", 1)
	s.waitForStats(t, tcpStats(port, 2, 2))

	deviceA.Close()
	first.expectClientClosed(localhost, 0)
	s.waitForStats(t, tcpStats(port, 2, 1))

	first.leave()
	s.waitForStats(t, tcpStats(port, 1, 1))

	second.drop()
	s.waitForStats(t, emptyStats)
	expectDeviceDisconnected(t, deviceB)
}

func TestStatsUDPCountsGoUpAndDown(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	first, port := s.openPort(t, "udp", localhost)
	s.waitForStats(t, udpStats(port, 1))

	second := s.udpDriver(t, port, localhost)
	s.waitForStats(t, udpStats(port, 2))

	first.leave()
	s.waitForStats(t, udpStats(port, 1))
	second.drop()
	s.waitForStats(t, emptyStats)
}

func TestStatsTCPClientsDropOnceOnDriverClose(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	device := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)
	s.waitForStats(t, tcpStats(port, 1, 1))

	d.closeClient(localhost, 0)
	d.expectClientClosed(localhost, 0)
	expectDeviceDisconnected(t, device)
	s.waitForStats(t, tcpStats(port, 1, 0))

	// A second decrement, early or late, would show here.
	dialDevice(t, localhost, port)
	d.expectOpened(localhost, 1)
	s.waitForStats(t, tcpStats(port, 1, 1))
}

func TestStatsTCPClientsDropOnceOnDeviceClose(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	d, port := s.openPort(t, "tcp", localhost)
	device := dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)
	s.waitForStats(t, tcpStats(port, 1, 1))

	device.Close()
	d.expectClientClosed(localhost, 0)
	s.waitForStats(t, tcpStats(port, 1, 0))

	dialDevice(t, localhost, port)
	d.expectOpened(localhost, 1)
	s.waitForStats(t, tcpStats(port, 1, 1))
}
