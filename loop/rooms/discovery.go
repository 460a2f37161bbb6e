package rooms

import (
	"context"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
)

// dnsTimeout bounds one lookup.
const dnsTimeout = 5 * time.Second

// pollDNS resolves the discovery name (A and AAAA) every DNSInterval on a
// goroutine of its own and posts each answer to the loop, where the
// targets are brought in line with it. A failed lookup keeps the Monoliths
// already known (a DNS hiccup must not drop every room) and is logged once
// per episode.
func (k *Kind) pollDNS(stop context.Context) {
	defer close(k.dnsStopped)
	cfg := &k.cfg
	resolver := net.DefaultResolver
	if cfg.DNSServer != "" {
		server := cfg.DNSServer
		resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}}
	}
	log := k.log
	port := strconv.Itoa(cfg.DNSPort)
	failing := false
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-stop.Done():
			return
		}
		ctx, cancel := context.WithTimeout(stop, dnsTimeout)
		ips, err := resolver.LookupNetIP(ctx, "ip", cfg.DNSName)
		cancel()
		timer.Reset(cfg.DNSInterval)
		if stop.Err() != nil {
			return
		}
		if err != nil {
			k.off.dnsFailures.Add(1)
			if !failing {
				failing = true
				log.Warn("Monolith discovery: DNS lookup failed, keeping the Monoliths already known", "name", cfg.DNSName, "err", err)
			}
			continue
		}
		if failing {
			failing = false
			log.Info("Monolith discovery: DNS answers again", "name", cfg.DNSName)
		}
		addrs := make([]string, 0, len(ips))
		for _, ip := range ips {
			addrs = append(addrs, net.JoinHostPort(ip.Unmap().WithZone("").String(), port))
		}
		slices.Sort(addrs)
		addrs = slices.Compact(addrs)
		if len(addrs) > maxMonoliths {
			addrs = addrs[:maxMonoliths]
		}
		if !k.srv.Post(func(*loop.Hub) { k.discovered(addrs) }) {
			return
		}
	}
}

// discovered applies a DNS answer, on the loop.
func (k *Kind) discovered(addrs []string) {
	if k.stopping {
		return
	}
	if !k.dnsDone || !slices.Equal(addrs, k.dnsAddrs) {
		k.hub.Log().Info("Monolith discovery: DNS answer", "name", k.cfg.DNSName, "addrs", addrs)
	}
	k.dnsDone = true
	k.dnsAddrs = addrs
	k.syncTargets()
}
