package driver

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/placeos-gnet/dispatch/loop"
)

// AcceptList is a driver's set of admitted peer addresses: its filter on a
// channel's members.
type AcceptList struct {
	addrs    []netip.Addr
	prefixes []netip.Prefix
}

// Everyone admits every address: a group driver that names no accept list.
var Everyone = AcceptList{prefixes: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}

// ParseAcceptList splits on commas; entries are trimmed, empty ones
// dropped, duplicates removed; each is an IP (IPv4-mapped IPv6 is its IPv4
// form) or a CIDR range.
func ParseAcceptList(s string) (AcceptList, error) {
	var a AcceptList
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		if strings.Contains(entry, "/") {
			p, err := netip.ParsePrefix(entry)
			if err != nil {
				return AcceptList{}, err
			}
			if p.Addr().Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			p = p.Masked()
			if !slices.Contains(a.prefixes, p) {
				a.prefixes = append(a.prefixes, p)
			}
			continue
		}
		ip, err := netip.ParseAddr(entry)
		if err != nil {
			return AcceptList{}, err
		}
		ip = ip.Unmap().WithZone("")
		if !slices.Contains(a.addrs, ip) {
			a.addrs = append(a.addrs, ip)
		}
	}
	return a, nil
}

// Contains reports whether ip is admitted.
func (a *AcceptList) Contains(ip netip.Addr) bool {
	for _, x := range a.addrs {
		if x == ip {
			return true
		}
	}
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Admits makes an accept list a channel filter.
func (a *AcceptList) Admits(m *loop.Member) bool { return a.Contains(m.IP) }

func (a *AcceptList) String() string {
	parts := make([]string, 0, len(a.addrs)+len(a.prefixes))
	for _, x := range a.addrs {
		parts = append(parts, x.String())
	}
	for _, p := range a.prefixes {
		parts = append(parts, p.String())
	}
	return strings.Join(parts, ",")
}
