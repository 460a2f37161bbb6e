package groups

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
)

// registerKind validates cfg as the server does, on a core that is never started.
func registerKind(t *testing.T, cfg Config) (*Kind, error) {
	t.Helper()
	s, err := loop.New(loop.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return Register(s, cfg, &driver.Config{Secret: "s3cret", MaxMessageBytes: 1 << 20, MaxPending: 16 << 20})
}

func TestGroupConfigIsValidated(t *testing.T) {
	for name, tweak := range map[string]func(*Config){
		"empty prefix":         func(c *Config) { c.Prefix = "" },
		"multi-line prefix":    func(c *Config) { c.Prefix = "A\nB" },
		"zero join timeout":    func(c *Config) { c.JoinTimeout = 0 },
		"zero idle":            func(c *Config) { c.UDPIdle = 0 },
		"zero id length":       func(c *Config) { c.IDMaxLen = 0 },
		"small member pending": func(c *Config) { c.MaxMemberPending = 1024 },
		"preconfig id too long": func(c *Config) {
			c.TCPPreconfig = []Host{{strings.Repeat("x", 129), netip.MustParseAddr("10.0.0.1")}}
		},
		"preconfig host twice": func(c *Config) {
			c.TCPPreconfig = []Host{{"a", netip.MustParseAddr("10.0.0.1")}, {"b", netip.MustParseAddr("10.0.0.1")}}
		},
		"udp preconfig port 0": func(c *Config) { c.UDPPreconfig = []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:0")} },
	} {
		cfg := DefaultConfig()
		tweak(&cfg)
		if _, err := registerKind(t, cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	cfg := DefaultConfig()
	cfg.DeviceHost = "127.0.0.1"
	cfg.TCPAddr, cfg.UDPAddr = "7000", "[::1]:7001"
	k, err := registerKind(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if k.cfg.TCPAddr != "127.0.0.1:7000" || k.cfg.UDPAddr != "[::1]:7001" {
		t.Fatalf("addresses: %q %q", k.cfg.TCPAddr, k.cfg.UDPAddr)
	}
}

func TestParseHostsAndUDPMembers(t *testing.T) {
	hosts, err := ParseHosts(" a:127.0.0.1 ,, b:c:[::1],d:[::ffff:10.0.0.1]")
	if err != nil {
		t.Fatal(err)
	}
	want := []Host{
		{"a", netip.MustParseAddr("127.0.0.1")},
		{"b:c", netip.MustParseAddr("::1")},
		{"d", netip.MustParseAddr("10.0.0.1")},
	}
	if !slices.Equal(hosts, want) {
		t.Fatalf("got %v, want %v", hosts, want)
	}
	for _, bad := range []string{"nohost", "a:notanip", "a:[::1"} {
		if _, err := ParseHosts(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	members, err := ParseUDPMembers("127.0.0.1:9000, [::1]:9001")
	if err != nil || len(members) != 2 || members[1].String() != "[::1]:9001" {
		t.Fatalf("got %v, %v", members, err)
	}
	if _, err := ParseUDPMembers("127.0.0.1"); err == nil {
		t.Fatal("member without a port accepted")
	}
	if got := fmt.Sprint(want[1]); got != "b:c:[::1]" {
		t.Fatalf("String() = %q", got)
	}
}

func TestParsePort(t *testing.T) {
	for in, want := range map[string]int{"1": 1, "65535": 65535, "0": -1, "65536": -1, "": -1, "12a": -1, "123456": -1, "-1": -1} {
		got, ok := parsePort([]byte(in))
		if (want < 0) == ok || (ok && int(got) != want) {
			t.Errorf("parsePort(%q) = %d %v", in, got, ok)
		}
	}
}
