package relay

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Config is the relay kind's configuration. The relay is off unless Listen
// is set.
type Config struct {
	// Listen is the relay's own listener, host:port: the access API, the
	// WebSockets and the browser page.
	Listen string
	// AccessURL is the access API's base URL as clients reach it (through
	// any proxy): tokens' aud must equal it. Empty: http://<Listen as bound>.
	AccessURL string
	// RelayURL is the WebSocket base URL handed out with each code. Empty:
	// ws://<Listen as bound>.
	RelayURL string
	// Secret checks HS256 tokens; PublicKeyFile (PEM) checks RS256, ES256
	// or EdDSA tokens. At least one is needed.
	Secret        string
	PublicKeyFile string
	// DataDir holds the deny list (bbolt); empty keeps it in memory only.
	DataDir string

	MaxTopics        int           // relay topics open at once; more are refused (503)
	MaxConns         int           // relay WebSockets at once; more are refused (503)
	MaxMessageBytes  int           // largest message a client may send (close 1009 past it)
	MaxPending       int           // unsent bytes per connection past which whole messages are dropped for it
	PingInterval     time.Duration // a connection quiet this long is pinged, and closed if still quiet after as long again
	CodeTTL          time.Duration // how long a code lives (practable: 30 s)
	MaxCodes         int           // codes outstanding; more access requests are refused (503)
	MetricsTopics    int           // largest topics with per-topic series; the rest summed as topic="_other"
	AllowNoBookingID bool          // accept tokens without booking_id (practable's RELAY_ALLOW_NO_BOOKING_ID)
}

// DefaultConfig returns the documented defaults (relay off).
func DefaultConfig() Config {
	return Config{
		MaxTopics:       10000,
		MaxConns:        20000,
		MaxMessageBytes: 1 << 20,
		MaxPending:      256 << 10,
		PingInterval:    30 * time.Second,
		CodeTTL:         30 * time.Second,
		MaxCodes:        100000,
		MetricsTopics:   20,
	}
}

// Enabled reports whether the relay is configured.
func (c *Config) Enabled() bool { return c.Listen != "" }

func (c *Config) check() error {
	switch {
	case c.Secret == "" && c.PublicKeyFile == "":
		return errors.New("relay: set a secret or a public key file, or tokens cannot be checked")
	case c.MaxTopics < 1:
		return errors.New("relay: max topics must be positive")
	case c.MaxConns < 1:
		return errors.New("relay: max conns must be positive")
	case c.MaxMessageBytes < 64:
		return errors.New("relay: max message bytes must be at least 64")
	case c.MaxPending < 16<<10:
		return errors.New("relay: max pending must be at least 16 KiB")
	case c.PingInterval < 100*time.Millisecond:
		return errors.New("relay: ping interval must be at least 100ms")
	case c.CodeTTL < 100*time.Millisecond:
		return errors.New("relay: code lifetime must be at least 100ms")
	case c.MaxCodes < 1:
		return errors.New("relay: max codes must be positive")
	case c.MetricsTopics < 0:
		return errors.New("relay: metrics topics must not be negative")
	}
	if _, err := basePath(c.AccessURL, "http", "https"); err != nil {
		return fmt.Errorf("relay access URL: %w", err)
	}
	if _, err := basePath(c.RelayURL, "ws", "wss"); err != nil {
		return fmt.Errorf("relay URL: %w", err)
	}
	return nil
}

// basePath checks a base URL (empty is allowed: the default) and returns
// its path without a trailing slash.
func basePath(base string, schemes ...string) (string, error) {
	if base == "" {
		return "", nil
	}
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	ok := false
	for _, s := range schemes {
		ok = ok || u.Scheme == s
	}
	switch {
	case !ok:
		return "", fmt.Errorf("want a %s URL, got %q", strings.Join(schemes, " or "), base)
	case u.Host == "":
		return "", fmt.Errorf("no host in %q", base)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		return "", fmt.Errorf("want scheme://host[:port][/path], got %q", base)
	}
	return strings.TrimRight(u.Path, "/"), nil
}
