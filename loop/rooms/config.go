package rooms

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Strategy picks a Monolith for a room that is loaded nowhere.
type Strategy uint8

const (
	// MinRooms picks the Monolith with the fewest rooms (the default).
	MinRooms Strategy = iota
	// HashRing hashes the room name onto a ring of Monoliths, Weight
	// points each: every balancer with the same Monoliths agrees.
	HashRing
	// Random picks any.
	Random
)

var strategyNames = [...]string{"min-rooms", "hash-ring", "random"}

func (s Strategy) String() string { return strategyNames[s] }

// ParseStrategy reads a strategy by this server's name (min-rooms,
// hash-ring, random) or the original's (MinRooms, HashRing, Random).
func ParseStrategy(s string) (Strategy, error) {
	norm := strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), "-", ""))
	for i, name := range strategyNames {
		if norm == strings.ReplaceAll(name, "-", "") {
			return Strategy(i), nil
		}
	}
	return 0, fmt.Errorf("want min-rooms, hash-ring or random, got %q", s)
}

// Config is the rooms kind's configuration. The kind is off while Addr is
// empty.
type Config struct {
	Addr        string        // the balancer's own HTTP/WebSocket listener, host:port
	Monoliths   []string      // Monolith balancing ports, host:port, dialled from the start
	DNSName     string        // DNS discovery: a name whose A/AAAA records are Monoliths; empty: off
	DNSPort     int           // their balancing port
	DNSInterval time.Duration // how often the name is resolved again
	DNSServer   string        // ip:port of the DNS server to ask; empty: the system's

	Strategy   Strategy
	HashWeight int    // points per Monolith on the hash ring
	Region     string // the balancer's region: Monoliths in it are preferred
	APIKey     string // bearer key of /api/balancing and /api/state; empty: they answer 401
	InitToken  string // shared token carried in init both ways; empty: none

	AuthTimeout    time.Duration // a client's auth message must arrive within it
	InitTimeout    time.Duration // a Monolith's init must arrive within it (and the dial complete)
	ConnectRetry   time.Duration // after a failed connection or handshake
	ReconnectDelay time.Duration // after an established link ends

	MaxClients          int // client connections in total, authenticated or not
	MaxRoomClients      int // clients of one room on this balancer
	MaxRooms            int // rooms known (loaded on some Monolith, or being placed)
	MaxMessageBytes     int // largest client message (close 1009 past it)
	MaxLinkMessageBytes int // largest Monolith message (the link is closed past it)
	MaxClientPending    int // unsent bytes per client (cut with 1008 past it)
	MaxLinkPending      int // unsent bytes per Monolith link, a safety net far above the watermarks
	MaxProxy            int // proxied HTTP requests in flight
	MetricsRooms        int // rooms given series of their own in metrics

	// Metrics serves /api/status/metrics: the binary's Prometheus
	// registry. Nil: 404.
	Metrics http.Handler
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		DNSInterval:         5 * time.Second,
		Strategy:            MinRooms,
		HashWeight:          5,
		Region:              "unknown",
		AuthTimeout:         20 * time.Second,
		InitTimeout:         20 * time.Second,
		ConnectRetry:        5 * time.Second,
		ReconnectDelay:      time.Second,
		MaxClients:          20000,
		MaxRoomClients:      5000,
		MaxRooms:            10000,
		MaxMessageBytes:     64 << 10,
		MaxLinkMessageBytes: 16 << 20,
		MaxClientPending:    4 << 20,
		MaxLinkPending:      64 << 20,
		MaxProxy:            1024,
		MetricsRooms:        20,
	}
}

// maxMonoliths bounds the Monoliths dialled at once, whatever discovery
// returns.
const maxMonoliths = 256

// Check validates the settings.
func (c *Config) Check() error {
	switch {
	case c.DNSName != "" && (c.DNSPort < 1 || c.DNSPort > 65535):
		return errors.New("DNS discovery needs a port")
	case c.DNSInterval <= 0:
		return errors.New("DNS interval must be positive")
	case c.HashWeight < 1:
		return errors.New("hash weight must be at least 1")
	case c.AuthTimeout <= 0, c.InitTimeout <= 0, c.ConnectRetry <= 0, c.ReconnectDelay <= 0:
		return errors.New("rooms timeouts and delays must be positive")
	case c.MaxClients < 1, c.MaxRoomClients < 1, c.MaxRooms < 1, c.MaxProxy < 1:
		return errors.New("rooms caps must be positive")
	case c.MaxMessageBytes < 1024:
		return errors.New("max client message must be at least 1024 bytes")
	case c.MaxLinkMessageBytes < 64<<10:
		return errors.New("max Monolith message must be at least 64 KiB")
	case c.MaxClientPending < 64<<10 || c.MaxLinkPending < 64<<10:
		return errors.New("pending bounds must be at least 64 KiB")
	case c.MetricsRooms < 0:
		return errors.New("metrics rooms must not be negative")
	case len(c.Monoliths) > maxMonoliths:
		return fmt.Errorf("at most %d Monoliths", maxMonoliths)
	}
	for _, m := range c.Monoliths {
		if err := checkHostPort(m); err != nil {
			return err
		}
	}
	return nil
}

// checkHostPort accepts host:port with a numeric port in 1-65535.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Errorf("want host:port, got %q", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("want host:port with a port in 1-65535, got %q", addr)
	}
	return nil
}

// ParseMonoliths reads a comma-separated list of host:port.
func ParseMonoliths(s string) ([]string, error) {
	var out []string
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		if err := checkHostPort(entry); err != nil {
			return nil, err
		}
		out = append(out, entry)
	}
	return out, nil
}

// ParseDNS reads name:port for DNS discovery; empty turns it off.
func ParseDNS(s string) (name string, port int, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", 0, nil
	}
	if err := checkHostPort(s); err != nil {
		return "", 0, err
	}
	name, p, _ := net.SplitHostPort(s)
	port, _ = strconv.Atoi(p)
	return name, port, nil
}

// ParseDNSServer reads ip or ip:port (port 53 when absent); empty means
// the system's resolver.
func ParseDNSServer(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.String(), nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.AddrPortFrom(a, 53).String(), nil
	}
	return "", fmt.Errorf("want ip or ip:port, got %q", s)
}
