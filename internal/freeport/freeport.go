// Package freeport picks port numbers for servers that tests and the
// benchmark harness start and bind themselves.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// handedOut holds every port Pick has returned, so that two callers in this
// process never get the same one.
var handedOut sync.Map

// Pick returns a port that was free for network ("tcp" or "udp") on every
// address and was not handed out before in this process. It picks from
// below the kernel's ephemeral range: outgoing connections (other tests,
// load generators) draw their source ports from that range, so a port
// picked there can be taken again before the server binds it.
func Pick(network string) (int, error) {
	if network != "tcp" && network != "udp" {
		return 0, fmt.Errorf("freeport: unknown network %q", network)
	}
	lo, hi := 20000, ephemeralStart()-1
	for range 1000 {
		port := lo + rand.IntN(hi-lo+1)
		if !unused(network, port) {
			continue
		}
		if _, taken := handedOut.LoadOrStore(network+"/"+strconv.Itoa(port), true); !taken {
			return port, nil
		}
	}
	return 0, fmt.Errorf("freeport: no unused %s port in %d-%d", network, lo, hi)
}

func unused(network string, port int) bool {
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

// ephemeralStart is the first port the kernel hands out on its own.
func ephemeralStart() int {
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
