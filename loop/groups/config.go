package groups

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Config is the socket-group kind's configuration. The listeners are off
// while their address is empty.
type Config struct {
	TCPAddr          string           // TCP group listener: host:port, or a bare port on DeviceHost
	UDPAddr          string           // UDP group port, likewise; its port number is the UDP group's id
	DeviceHost       string           // host a bare port binds to
	Prefix           string           // what a member's join message starts with
	JoinTimeout      time.Duration    // time a TCP member has to join
	IDMaxLen         int              // longest group id, in bytes
	UDPOpen          bool             // forward datagrams from senders that are not members too
	UDPIdle          time.Duration    // a UDP member silent for this long is forgotten
	TCPPreconfig     []Host           // hosts whose TCP connections join a group without the prefix
	UDPPreconfig     []netip.AddrPort // UDP members from the start, never forgotten
	MaxMemberPending int              // unsent bytes per TCP member (member closed past it)
	MaxMembers       int              // TCP group connections in total; UDP members likewise
	MaxGroups        int              // TCP groups at once; joins that would open one more are refused
	MetricsGroups    int              // groups with series of their own in metrics; the rest are summed
	UDPQueueBytes    int              // datagram bytes queued between the UDP reader and the loop
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Prefix:           "SOCKETFORWARDER-NEW:",
		JoinTimeout:      5 * time.Second,
		IDMaxLen:         128,
		UDPIdle:          5 * time.Minute,
		MaxMemberPending: 4 << 20,
		MaxMembers:       20000,
		MaxGroups:        10000,
		MetricsGroups:    20,
		UDPQueueBytes:    8 << 20,
	}
}

// maxIDLen caps IDMaxLen: a join line is buffered whole.
const maxIDLen = 4096

// check validates the settings and turns a bare port into an address on
// DeviceHost.
func (cfg *Config) check() error {
	switch {
	case cfg.MaxMemberPending < 64<<10:
		return errors.New("max member pending must be at least 64 KiB")
	case cfg.Prefix == "" || strings.ContainsAny(cfg.Prefix, "\r\n"):
		return errors.New("group prefix must be one non-empty line")
	case cfg.JoinTimeout <= 0:
		return errors.New("group join timeout must be positive")
	case cfg.IDMaxLen < 1 || cfg.IDMaxLen > maxIDLen:
		return fmt.Errorf("group id max length must be in 1-%d", maxIDLen)
	case cfg.UDPIdle <= 0:
		return errors.New("group UDP idle time must be positive")
	case cfg.MaxMembers < 1:
		return errors.New("max members must be positive")
	case cfg.MaxGroups < 1:
		return errors.New("max groups must be positive")
	case cfg.MetricsGroups < 0:
		return errors.New("metrics groups must not be negative")
	case cfg.UDPQueueBytes < 64<<10:
		return errors.New("udp queue bytes must be at least 64 KiB")
	}
	cfg.TCPAddr = listenAddr(cfg.TCPAddr, cfg.DeviceHost)
	cfg.UDPAddr = listenAddr(cfg.UDPAddr, cfg.DeviceHost)
	hosts := make(map[netip.Addr]string, len(cfg.TCPPreconfig))
	for _, h := range cfg.TCPPreconfig {
		if problem := idProblem(h.Group, cfg.IDMaxLen); problem != "" {
			return fmt.Errorf("preconfigured TCP group member %s: %s", h, problem)
		}
		if !h.Host.IsValid() {
			return fmt.Errorf("preconfigured TCP group member %s: no host", h)
		}
		if other, dup := hosts[h.Host]; dup && other != h.Group {
			return fmt.Errorf("preconfigured TCP host %s is listed for groups %q and %q", h.Host, other, h.Group)
		}
		hosts[h.Host] = h.Group
	}
	for _, a := range cfg.UDPPreconfig {
		if !a.IsValid() || a.Port() == 0 {
			return fmt.Errorf("preconfigured UDP group member %q: want ip:port", a.String())
		}
	}
	return nil
}

// listenAddr makes a bare port mean that port on DeviceHost, where the
// dispatch ports listen too.
func listenAddr(addr, deviceHost string) string {
	if _, err := strconv.ParseUint(addr, 10, 16); err == nil {
		return net.JoinHostPort(deviceHost, addr)
	}
	return addr
}

// idProblem says what is wrong with a group id, or "" when nothing is. Ids
// are compared byte for byte; valid UTF-8 keeps them exact as JSON keys.
func idProblem(id string, maxLen int) string {
	switch {
	case id == "":
		return "empty group id"
	case len(id) > maxLen:
		return "group id too long"
	case !utf8.ValidString(id):
		return "group id is not valid UTF-8"
	}
	return ""
}

// Host is a preconfigured TCP member: every connection from Host joins
// Group at once, without sending the join prefix.
type Host struct {
	Group string
	Host  netip.Addr
}

func (g Host) String() string {
	if g.Host.Is6() {
		return g.Group + ":[" + g.Host.String() + "]"
	}
	return g.Group + ":" + g.Host.String()
}

// ParseHosts parses comma-separated group:host entries; an IPv6 host is
// written in brackets (group:[::1]). Whitespace around an entry is dropped;
// the group id is everything before the host's colon.
func ParseHosts(s string) ([]Host, error) {
	var hosts []Host
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		var group, host string
		if strings.HasSuffix(entry, "]") {
			i := strings.LastIndex(entry, ":[")
			if i < 0 {
				return nil, fmt.Errorf("group host %q: want group:host", entry)
			}
			group, host = entry[:i], entry[i+2:len(entry)-1]
		} else {
			i := strings.LastIndexByte(entry, ':')
			if i < 0 {
				return nil, fmt.Errorf("group host %q: want group:host", entry)
			}
			group, host = entry[:i], entry[i+1:]
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return nil, fmt.Errorf("group host %q: %w", entry, err)
		}
		hosts = append(hosts, Host{Group: group, Host: ip.Unmap().WithZone("")})
	}
	return hosts, nil
}

// ParseUDPMembers parses comma-separated host:port entries ([v6]:port).
func ParseUDPMembers(s string) ([]netip.AddrPort, error) {
	var members []netip.AddrPort
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(entry)
		if err != nil {
			return nil, fmt.Errorf("udp member %q: %w", entry, err)
		}
		members = append(members, netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port()))
	}
	return members, nil
}

// parsePort reads a decimal port in 1-65535 without allocating.
func parsePort(b []byte) (uint16, bool) {
	if len(b) == 0 || len(b) > 5 {
		return 0, false
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, false
	}
	return uint16(n), true
}
