package testkit

import (
	"errors"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/internal/freeport"
)

// FreePort returns a port that was free for network ("tcp" or "udp") on
// every address and was not handed out before in this process.
func FreePort(tb testing.TB, network string) int {
	tb.Helper()
	port, err := freeport.Pick(network)
	if err != nil {
		tb.Fatal(err)
	}
	return port
}

func FreeTCPPort(tb testing.TB) int { return FreePort(tb, "tcp") }
func FreeUDPPort(tb testing.TB) int { return FreePort(tb, "udp") }

// FreePortForBoth returns a port number free for TCP and for UDP.
func FreePortForBoth(tb testing.TB) int {
	tb.Helper()
	for range 100 {
		port := FreeTCPPort(tb)
		pc, err := net.ListenPacket("udp", net.JoinHostPort(Localhost, strconv.Itoa(port)))
		if err == nil {
			pc.Close()
			return port
		}
	}
	tb.Fatal("no port free for both TCP and UDP")
	return 0
}

// ErrPortInUse tells OnFreePort that a picked port turned out to be busy.
var ErrPortInUse = errors.New("port in use")

// OnFreePort calls register with freshly picked ports until it succeeds. A
// port that another process took between picking and binding (an upgrade
// answered 409, or ErrPortInUse) is retried with another one.
func OnFreePort(tb testing.TB, pick func(testing.TB) int, register func(port int) error) int {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		port := pick(tb)
		err := register(port)
		if err == nil {
			return port
		}
		var status ws.StatusError
		busy := errors.Is(err, ErrPortInUse) || errors.As(err, &status) && int(status) == http.StatusConflict
		if !busy || attempt == 5 {
			tb.Fatalf("registering on port %d: %v", port, err)
		}
	}
}
