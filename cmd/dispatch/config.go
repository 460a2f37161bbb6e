package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/dispatch"
	drv "github.com/placeos-gnet/dispatch/loop/driver"
	"github.com/placeos-gnet/dispatch/loop/groups"
)

// env reads a setting from the environment or, when the variable is not
// set, from the file $SECRETS_PATH/NAME (Docker and Kubernetes secrets).
type env struct {
	lookup      func(string) (string, bool)
	secretsPath string
}

func newEnv(lookup func(string) (string, bool)) env {
	path, ok := lookup("SECRETS_PATH")
	if !ok || path == "" {
		path = "/run/secrets"
	}
	return env{lookup: lookup, secretsPath: path}
}

func (e env) get(name string) (string, bool) {
	if v, ok := e.lookup(name); ok {
		return v, true
	}
	b, err := os.ReadFile(filepath.Join(e.secretsPath, name))
	if err != nil {
		return "", false
	}
	return strings.TrimRight(string(b), "\r\n"), true
}

// defaultSecret is the original service's well-known fallback token.
const defaultSecret = "testing"

// setting is one configurable value: a flag (with optional short alias) that
// falls back to an environment variable, then to a default.
type setting struct {
	long, short, envName, usage string
	secret                      bool
	value                       flag.Value
}

// options is the parsed command line.
type options struct {
	core      loop.Config
	driver    drv.Config
	dispatch  dispatch.Config
	groups    groups.Config
	curlURL   string
	metrics   string
	version   bool
	logFormat string
	logLevel  slog.Level
	settings  []setting
	secretSrc string
}

// parseOptions builds the configuration from args and the environment.
// Command-line flags win over environment variables.
func parseOptions(args []string, e env, stderr io.Writer) (*options, error) {
	o := &options{core: loop.DefaultConfig(), dispatch: dispatch.DefaultConfig(), groups: groups.DefaultConfig(),
		driver: drv.Config{MaxMessageBytes: 1 << 20, MaxPending: 16 << 20}}
	host, port := "127.0.0.1", 3000
	fs := flag.NewFlagSet("dispatch", flag.ContinueOnError)
	fs.SetOutput(stderr)

	add := func(s setting) { o.settings = append(o.settings, s) }
	add(setting{"bind", "b", "SG_SERVER_HOST", "HTTP/WebSocket bind host", false, (*stringValue)(&host)})
	add(setting{"port", "p", "SG_SERVER_PORT", "HTTP/WebSocket port (0 picks a free one)", false, (*intValue)(&port)})
	add(setting{"device-host", "", "DISPATCH_DEVICE_HOST", "host device ports bind to (empty: every interface)", false, (*stringValue)(&o.dispatch.DeviceHost)})
	add(setting{"max-head-bytes", "", "DISPATCH_MAX_HEAD_BYTES", "request head bound; past it: 431", false, (*intValue)(&o.core.MaxHeadBytes)})
	add(setting{"handshake-timeout", "", "DISPATCH_HANDSHAKE_TIMEOUT", "time to send a complete request head", false, (*durationValue)(&o.core.HandshakeTimeout)})
	add(setting{"max-handshakes", "", "DISPATCH_MAX_HANDSHAKES", "connections still sending a request head; more are refused", false, (*intValue)(&o.core.MaxHandshakes)})
	add(setting{"max-message-bytes", "", "DISPATCH_MAX_MESSAGE_BYTES", "largest driver message; past it: close 1009", false, (*intValue)(&o.driver.MaxMessageBytes)})
	add(setting{"max-driver-pending", "", "DISPATCH_MAX_DRIVER_PENDING", "unsent bytes per driver; past it: close 1008", false, (*intValue)(&o.driver.MaxPending)})
	add(setting{"max-device-pending", "", "DISPATCH_MAX_DEVICE_PENDING", "unsent WRITE bytes per device; past it the device is closed", false, (*intValue)(&o.dispatch.MaxDevicePending)})
	add(setting{"max-port-conns", "", "DISPATCH_MAX_PORT_CONNS", "device connections per TCP port", false, (*intValue)(&o.dispatch.MaxPortConns)})
	add(setting{"max-conns", "", "DISPATCH_MAX_CONNS", "device connections in total", false, (*intValue)(&o.core.MaxConns)})
	add(setting{"metrics", "", "DISPATCH_METRICS_ADDR", "Prometheus /metrics and pprof listener, e.g. 9100 (loopback) or 0.0.0.0:9100; empty: off", false, (*stringValue)(&o.metrics)})
	add(setting{"udp-queue-bytes", "", "DISPATCH_UDP_QUEUE_BYTES", "datagram bytes queued per UDP port before dropping", false, (*intValue)(&o.dispatch.UDPQueueBytes)})
	add(setting{"group-tcp", "", "DISPATCH_GROUP_TCP", "socket group TCP listener: port (on the device host) or host:port; empty: off", false, (*stringValue)(&o.groups.TCPAddr)})
	add(setting{"group-udp", "", "DISPATCH_GROUP_UDP", "socket group UDP port (the UDP group's id): port or host:port; empty: off", false, (*stringValue)(&o.groups.UDPAddr)})
	add(setting{"group-prefix", "", "DISPATCH_GROUP_PREFIX", "what a socket group join message starts with", false, (*stringValue)(&o.groups.Prefix)})
	add(setting{"group-join-timeout", "", "DISPATCH_GROUP_JOIN_TIMEOUT", "time a TCP member has to join; a join without newline completes then", false, (*durationValue)(&o.groups.JoinTimeout)})
	add(setting{"group-id-max-len", "", "DISPATCH_GROUP_ID_MAX_LEN", "longest socket group id, in bytes", false, (*intValue)(&o.groups.IDMaxLen)})
	add(setting{"group-udp-open", "", "DISPATCH_GROUP_UDP_OPEN", "forward datagrams from senders that are not UDP group members", false, (*boolValue)(&o.groups.UDPOpen)})
	add(setting{"group-udp-idle", "", "DISPATCH_GROUP_UDP_IDLE", "a UDP group member silent this long is forgotten", false, (*durationValue)(&o.groups.UDPIdle)})
	add(setting{"group-tcp-preconfig", "", "DISPATCH_GROUP_TCP_PRECONFIG", "comma-separated group:host; connections from host join group without the prefix", false, (*groupHostsValue)(&o.groups.TCPPreconfig)})
	add(setting{"group-udp-preconfig", "", "DISPATCH_GROUP_UDP_PRECONFIG", "comma-separated host:port UDP group members from the start, never forgotten", false, (*udpMembersValue)(&o.groups.UDPPreconfig)})
	add(setting{"max-member-pending", "", "DISPATCH_MAX_MEMBER_PENDING", "unsent bytes per TCP group member; past it the member is closed", false, (*intValue)(&o.groups.MaxMemberPending)})

	for _, s := range o.settings {
		if v, ok := e.get(s.envName); ok && v != "" {
			if err := s.value.Set(v); err != nil {
				return nil, fmt.Errorf("environment variable %s: %w", s.envName, err)
			}
		}
		fs.Var(s.value, s.long, s.usage)
		if s.short != "" {
			fs.Var(s.value, s.short, "short for --"+s.long)
		}
	}
	fs.StringVar(&o.curlURL, "curl", "", "GET `URL` and exit 0 for a status of 200-499 (health checks)")
	fs.StringVar(&o.curlURL, "c", "", "short for --curl")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.version, "v", false, "short for --version")
	fs.Usage = func() { o.usage(fs.Output()) }
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if port < 0 || port > 65535 {
		return nil, errors.New("port must be in 0-65535")
	}
	o.core.HTTPAddr = netJoin(host, port)

	o.driver.Secret, o.secretSrc = defaultSecret, "default"
	for _, name := range []string{"PLACE_SERVER_SECRET", "SERVER_SECRET"} {
		if v, ok := e.get(name); ok && v != "" {
			o.driver.Secret, o.secretSrc = v, name
			break
		}
	}
	o.logLevel = slog.LevelDebug
	if v, _ := e.get("SG_ENV"); v == "production" {
		o.logLevel = slog.LevelInfo
	}
	if v, ok := e.get("LOG_LEVEL"); ok && v != "" {
		if err := o.logLevel.UnmarshalText([]byte(v)); err != nil {
			return nil, fmt.Errorf("LOG_LEVEL: %w", err)
		}
	}
	o.logFormat, _ = e.get("PLACE_LOG_FORMAT")
	v, _ := e.get("PLACE_VERSION")
	o.dispatch.Version = dispatch.Version{Commit: commit, Version: version, BuildTime: buildTime, PlatformVersion: v}
	if o.dispatch.Version.PlatformVersion == "" {
		o.dispatch.Version.PlatformVersion = "DEV"
	}
	return o, nil
}

func (o *options) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: dispatch [flags]\n\nPlaceOS dispatch: device ports opened on demand for drivers attached over WebSockets.\n\nFlags (each falls back to its environment variable, then the default):\n")
	for _, s := range o.settings {
		name := "--" + s.long
		if s.short != "" {
			name = "-" + s.short + ", " + name
		}
		fmt.Fprintf(w, "  %-24s %-28s default %-12q %s\n", name, s.envName, s.value.String(), s.usage)
	}
	fmt.Fprintf(w, "  %-24s %-28s %-20s %s\n", "-c, --curl URL", "", "", "GET URL, exit 0 for 200-499 (health check)")
	fmt.Fprintf(w, "  %-24s %-28s %-20s %s\n", "-v, --version", "", "", "print the version and exit")
	fmt.Fprintf(w, "\nEnvironment only:\n"+
		"  PLACE_SERVER_SECRET, else SERVER_SECRET   shared bearer token (default \"testing\": change it)\n"+
		"  SECRETS_PATH                              directory of secret files for unset variables (default /run/secrets)\n"+
		"  SG_ENV=production                         info-level logs (otherwise debug)\n"+
		"  LOG_LEVEL                                 debug|info|warn|error, overrides SG_ENV\n"+
		"  PLACE_LOG_FORMAT=json                     JSON logs (otherwise text)\n"+
		"  PLACE_VERSION                             platform version reported by /version\n")
}

// logConfig writes the effective configuration at info level; the secret is
// never printed, only where it came from.
func (o *options) logConfig(log *slog.Logger) {
	attrs := []any{"http", o.core.HTTPAddr, "secret_source", o.secretSrc}
	for _, s := range o.settings {
		if s.long == "bind" || s.long == "port" {
			continue
		}
		attrs = append(attrs, s.long, s.value.String())
	}
	attrs = append(attrs, "log_level", o.logLevel.String())
	log.Info("configuration", attrs...)
}

func netJoin(host string, port int) string {
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(port)
}

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("not an integer: %q", s)
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("not a duration: %q", s)
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }

type boolValue bool

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("not a boolean: %q", s)
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }

type groupHostsValue []groups.Host

func (v *groupHostsValue) Set(s string) error {
	hosts, err := groups.ParseHosts(s)
	*v = hosts
	return err
}

func (v *groupHostsValue) String() string {
	parts := make([]string, len(*v))
	for i, h := range *v {
		parts[i] = h.String()
	}
	return strings.Join(parts, ",")
}

type udpMembersValue []netip.AddrPort

func (v *udpMembersValue) Set(s string) error {
	members, err := groups.ParseUDPMembers(s)
	*v = members
	return err
}

func (v *udpMembersValue) String() string {
	parts := make([]string, len(*v))
	for i, a := range *v {
		parts[i] = a.String()
	}
	return strings.Join(parts, ",")
}
