package testkit

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/gobwas/ws"
)

// handedOut holds every port FreePort has returned, so that two tests of
// this process never pick the same one.
var handedOut sync.Map

// FreePort returns a port that was free for network ("tcp" or "udp") on
// every address and was not handed out before in this process.
func FreePort(tb testing.TB, network string) int {
	tb.Helper()
	for {
		port := unusedPort(tb, network)
		if _, taken := handedOut.LoadOrStore(network+"/"+strconv.Itoa(port), true); !taken {
			return port
		}
	}
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

// unusedPort returns a port with nothing bound to it on any address. It
// picks from below the kernel's ephemeral range: outgoing connections (other
// tests, load generators) draw their source ports from that range, so a port
// picked there can be taken again before the server binds it.
func unusedPort(tb testing.TB, network string) int {
	tb.Helper()
	if network != "tcp" && network != "udp" {
		tb.Fatalf("unusedPort: unknown network %q", network)
	}
	lo, hi := 20000, ephemeralPortsStart()-1
	for range 1000 {
		port := lo + rand.IntN(hi-lo+1)
		if portUnused(network, port) {
			return port
		}
	}
	tb.Fatalf("no unused %s port in %d-%d", network, lo, hi)
	return 0
}

func portUnused(network string, port int) bool {
	addr := ":" + strconv.Itoa(port)
	if network == "udp" {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		return pc.Close() == nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	return ln.Close() == nil
}

// ephemeralPortsStart is the first port the kernel hands out on its own.
func ephemeralPortsStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 21000 {
				return n
			}
		}
	}
	return 32768
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
