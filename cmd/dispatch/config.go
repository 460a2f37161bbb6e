package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/placeos-gnet/dispatch/cluster"
	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/dispatch"
	drv "github.com/placeos-gnet/dispatch/loop/driver"
	"github.com/placeos-gnet/dispatch/loop/groups"
	"github.com/placeos-gnet/dispatch/loop/relay"
	"github.com/placeos-gnet/dispatch/loop/rooms"
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
	value                       flag.Value
	// def is the value before the environment and the command line apply:
	// what -h and the documentation call the default.
	def string
	// check validates the final value, whichever source it came from; nil
	// accepts anything Set accepts.
	check func() error
}

// label names a setting in errors the way an operator can act on it: by
// the flag and by the variable, since either may have set it.
func (s setting) label() string {
	return "--" + s.long + " (" + s.envName + ")"
}

// options is the parsed command line.
type options struct {
	core      loop.Config     // the loop itself
	driver    drv.Config      // driver sessions, on every kind
	dispatch  dispatch.Config // device ports
	groups    groups.Config   // socket groups
	relay     relay.Config    // relay topics
	rooms     rooms.Config    // the room balancer
	cluster   cluster.Config  // replicas over NATS
	bus       *cluster.Bus    // the cluster, once connected
	curlURL   string
	metrics   string
	prom      http.Handler // the Prometheus registry, served by --metrics and the room balancer
	version   bool
	logFormat string
	logLevel  slog.Level
	settings  []setting
	secretSrc string
	relaySrc  string // where the relay secret came from
	flags     *flag.FlagSet
	port      int // the HTTP port, joined into core.HTTPAddr once checked
	host      string
}

// parseOptions builds the configuration from args and the environment.
// Command-line flags win over environment variables. On flag.ErrHelp the
// options are returned too, so that the caller can print the usage where
// it chooses.
func parseOptions(args []string, e env) (*options, error) {
	o := newOptions()
	for _, s := range o.settings {
		if v, ok := e.get(s.envName); ok && v != "" {
			if err := s.value.Set(v); err != nil {
				return nil, fmt.Errorf("environment variable %s (--%s): %w", s.envName, s.long, err)
			}
		}
	}
	if err := o.flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return nil, err
	}
	if o.flags.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", o.flags.Arg(0))
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	o.core.HTTPAddr = netJoin(o.host, o.port)
	if n, err := strconv.Atoi(o.relay.Listen); err == nil {
		o.relay.Listen = netJoin(o.host, n)
	}
	if port, err := strconv.Atoi(o.rooms.Addr); err == nil {
		o.rooms.Addr = netJoin(o.host, port) // a bare port is on --bind
	}
	o.readEnvironmentOnly(e)
	if region, ok := e.get("FLY_REGION"); ok && region != "" && !o.isSet("rooms-region", e) {
		o.rooms.Region = region
	}
	if v, ok := e.get("LOG_LEVEL"); ok && v != "" {
		if err := o.logLevel.UnmarshalText([]byte(v)); err != nil {
			return nil, fmt.Errorf("LOG_LEVEL: %w", err)
		}
	}
	return o, nil
}

// newOptions declares every setting with its default and its check, and
// the flag set that parses them.
func newOptions() *options {
	o := &options{core: loop.DefaultConfig(), driver: drv.DefaultConfig(), dispatch: dispatch.DefaultConfig(),
		groups: groups.DefaultConfig(), relay: relay.DefaultConfig(), rooms: rooms.DefaultConfig(), cluster: cluster.DefaultConfig(),
		host: "127.0.0.1", port: 3000}
	c, d, p, g, r, cl := &o.core, &o.driver, &o.dispatch, &o.groups, &o.relay, &o.cluster
	o.add("bind", "b", "SG_SERVER_HOST", "HTTP/WebSocket bind host", (*stringValue)(&o.host), nil)
	o.add("port", "p", "SG_SERVER_PORT", "HTTP/WebSocket port (0 picks a free one)", (*intValue)(&o.port), inRange(&o.port, 0, 65535))
	o.add("device-host", "", "DISPATCH_DEVICE_HOST", "host device ports bind to (empty: every interface)", (*stringValue)(&p.DeviceHost), nil)
	o.add("max-head-bytes", "", "DISPATCH_MAX_HEAD_BYTES", "request head bound; past it: 431", (*intValue)(&c.MaxHeadBytes), atLeast(&c.MaxHeadBytes, 256))
	o.add("handshake-timeout", "", "DISPATCH_HANDSHAKE_TIMEOUT", "time to send a complete request head", (*durationValue)(&c.HandshakeTimeout), positive(&c.HandshakeTimeout))
	o.add("max-handshakes", "", "DISPATCH_MAX_HANDSHAKES", "connections still sending a request head; more are refused", (*intValue)(&c.MaxHandshakes), atLeast(&c.MaxHandshakes, 1))
	o.add("max-message-bytes", "", "DISPATCH_MAX_MESSAGE_BYTES", "largest driver message; past it: close 1009", (*intValue)(&d.MaxMessageBytes), atLeast(&d.MaxMessageBytes, 64))
	o.add("max-driver-pending", "", "DISPATCH_MAX_DRIVER_PENDING", "unsent bytes per driver; past it: close 1008", (*intValue)(&d.MaxPending), atLeast(&d.MaxPending, 64<<10))
	o.add("max-device-pending", "", "DISPATCH_MAX_DEVICE_PENDING", "unsent WRITE bytes per device; past it the device is closed", (*intValue)(&p.MaxDevicePending), atLeast(&p.MaxDevicePending, 1))
	o.add("max-port-conns", "", "DISPATCH_MAX_PORT_CONNS", "device connections per TCP port; connections and UDP members per group listener", (*intValue)(&p.MaxPortConns), atLeast(&p.MaxPortConns, 1))
	o.add("max-conns", "", "DISPATCH_MAX_CONNS", "device and group connections in total", (*intValue)(&c.MaxConns), atLeast(&c.MaxConns, 1))
	o.add("metrics", "", "DISPATCH_METRICS_ADDR", "Prometheus /metrics and pprof listener, e.g. 9100 (loopback) or 0.0.0.0:9100; empty: off", (*stringValue)(&o.metrics), listenAddr(&o.metrics))
	o.add("udp-queue-bytes", "", "DISPATCH_UDP_QUEUE_BYTES", "datagram bytes queued per UDP port before dropping", (*intValue)(&p.UDPQueueBytes), atLeast(&p.UDPQueueBytes, 64<<10))
	o.add("group-tcp", "", "DISPATCH_GROUP_TCP", "socket group TCP listener: port (on the device host) or host:port; empty: off", (*stringValue)(&g.TCPAddr), listenAddr(&g.TCPAddr))
	o.add("group-udp", "", "DISPATCH_GROUP_UDP", "socket group UDP port (the UDP group's id): port or host:port; empty: off", (*stringValue)(&g.UDPAddr), listenAddr(&g.UDPAddr))
	o.add("group-prefix", "", "DISPATCH_GROUP_PREFIX", "what a socket group join message starts with", (*stringValue)(&g.Prefix), oneLine(&g.Prefix))
	o.add("group-join-timeout", "", "DISPATCH_GROUP_JOIN_TIMEOUT", "time a TCP member has to join; a join without newline completes then", (*durationValue)(&g.JoinTimeout), positive(&g.JoinTimeout))
	o.add("group-id-max-len", "", "DISPATCH_GROUP_ID_MAX_LEN", "longest socket group id, in bytes", (*intValue)(&g.IDMaxLen), inRange(&g.IDMaxLen, 1, maxGroupIDLen))
	o.add("group-udp-open", "", "DISPATCH_GROUP_UDP_OPEN", "forward datagrams from senders that are not UDP group members", (*boolValue)(&g.UDPOpen), nil)
	o.add("group-udp-idle", "", "DISPATCH_GROUP_UDP_IDLE", "a UDP group member silent this long is forgotten", (*durationValue)(&g.UDPIdle), positive(&g.UDPIdle))
	o.add("group-tcp-preconfig", "", "DISPATCH_GROUP_TCP_PRECONFIG", "comma-separated group:host; connections from host join group without the prefix", (*groupHostsValue)(&g.TCPPreconfig), nil)
	o.add("group-udp-preconfig", "", "DISPATCH_GROUP_UDP_PRECONFIG", "comma-separated host:port UDP group members from the start, never forgotten", (*udpMembersValue)(&g.UDPPreconfig), nil)
	o.add("max-member-pending", "", "DISPATCH_MAX_MEMBER_PENDING", "unsent bytes per TCP group member; past it the member is closed", (*intValue)(&g.MaxMemberPending), atLeast(&g.MaxMemberPending, 64<<10))
	o.add("high-water", "", "DISPATCH_HIGH_WATER", "unsent bytes past which a driver or group member holds back the devices and members that feed it", (*intValue)(&c.HighWater), atLeast(&c.HighWater, 1))
	o.add("low-water", "", "DISPATCH_LOW_WATER", "unsent bytes below which it lets them go again; below --high-water", (*intValue)(&c.LowWater), below(&c.LowWater, &c.HighWater))
	o.add("stall-timeout", "", "DISPATCH_STALL_TIMEOUT", "a driver or member held past --high-water that drains nothing this long is closed", (*durationValue)(&c.StallTimeout), positive(&c.StallTimeout))
	o.add("peer-read-buffer", "", "DISPATCH_PEER_READ_BUFFER", "kernel receive buffer of device and group connections, bounding what a held-back peer leaves in the kernel; 0: the kernel's autotuning", (*intValue)(&c.PeerReadBuffer), atLeast(&c.PeerReadBuffer, 0))
	o.add("read-size", "", "DISPATCH_READ_SIZE", "most bytes read from a socket at once (one buffer for the loop); a read from a device is one RECEIVED", (*intValue)(&c.ReadSize), inRange(&c.ReadSize, 4<<10, 16<<20))
	o.add("coalesce", "", "DISPATCH_COALESCE", "longest nap of a lightly loaded loop after writing a pass, so reads arriving meanwhile share one write per driver; 0: never nap", (*durationValue)(&c.CoalesceBudget), inDurationRange(&c.CoalesceBudget, 0, 10*time.Millisecond))
	o.add("max-ports", "", "DISPATCH_MAX_PORTS", "device ports open at once, TCP and UDP together; more are refused with 409", (*intValue)(&p.MaxPorts), atLeast(&p.MaxPorts, 1))
	o.add("group-max-groups", "", "DISPATCH_GROUP_MAX_GROUPS", "TCP socket groups at once; a join that would open one more is refused", (*intValue)(&g.MaxGroups), atLeast(&g.MaxGroups, 1))
	o.add("cluster", "", "DISPATCH_CLUSTER", "join the replicas on this external NATS: nats://host:4222,… (empty: run alone)", (*stringValue)(&cl.URLs), natsURLs(&cl.URLs))
	o.add("cluster-embedded", "", "DISPATCH_CLUSTER_EMBEDDED", "run a NATS server in the process, routed to --cluster-peers, and join the replicas on it", (*boolValue)(&cl.Embedded), exclusive(&cl.Embedded, &cl.URLs))
	o.add("cluster-route", "", "DISPATCH_CLUSTER_ROUTE", "with --cluster-embedded: host:port the NATS server accepts routes from peers on", (*stringValue)(&cl.Route), hostPort(&cl.Route))
	o.add("cluster-peers", "", "DISPATCH_CLUSTER_PEERS", "with --cluster-embedded: comma-separated host:port route addresses of the other replicas (this one's own may be listed)", (*stringValue)(&cl.Peers), hostPorts(&cl.Peers))
	o.add("cluster-name", "", "DISPATCH_CLUSTER_NAME", "the cluster's name: NATS subject prefix and route cluster name; replicas with the same name act as one", (*stringValue)(&cl.Name), token(&cl.Name))
	o.add("cluster-node", "", "DISPATCH_CLUSTER_NODE", "node number in the top bits of member ids (0-1023); -1: claim a free one, from the host name's -N ordinal if it has one", (*intValue)(&cl.Node), inRange(&cl.Node, -1, 1023))
	o.add("cluster-peer-timeout", "", "DISPATCH_CLUSTER_PEER_TIMEOUT", "a replica silent this long is gone: its devices are CLOSED to drivers elsewhere", (*durationValue)(&cl.PeerTimeout), atLeastDuration(&cl.PeerTimeout, 300*time.Millisecond))
	o.add("cluster-queue-bytes", "", "DISPATCH_CLUSTER_QUEUE_BYTES", "bytes queued toward NATS before bus messages are dropped (counted)", (*intValue)(&cl.QueueBytes), atLeast(&cl.QueueBytes, 1<<20))
	o.add("group-metrics-groups", "", "DISPATCH_GROUP_METRICS_GROUPS", "largest groups given series of their own in metrics; the rest are summed as group=\"_other\"", (*intValue)(&g.MetricsGroups), atLeast(&g.MetricsGroups, 0))
	o.add("relay-listen", "", "DISPATCH_RELAY_LISTEN", "relay topics listener (access API, WebSockets, browser page): port (on --bind) or host:port; empty: off", (*stringValue)(&r.Listen), listenAddr(&r.Listen))
	o.add("relay-access-url", "", "DISPATCH_RELAY_ACCESS_URL", "relay access base URL as clients reach it; tokens' aud must equal it (empty: http://<relay listener>)", (*stringValue)(&r.AccessURL), nil)
	o.add("relay-url", "", "DISPATCH_RELAY_URL", "relay WebSocket base URL handed out with codes (empty: ws://<relay listener>)", (*stringValue)(&r.RelayURL), nil)
	o.add("relay-public-key", "", "DISPATCH_RELAY_PUBLIC_KEY", "PEM public key file for RS256/ES256/EdDSA relay tokens (beside or instead of the secret)", (*stringValue)(&r.PublicKeyFile), nil)
	o.add("relay-data-dir", "", "DISPATCH_RELAY_DATA_DIR", "directory of the relay's deny list store; empty: memory only, lost on restart", (*stringValue)(&r.DataDir), nil)
	o.add("relay-max-topics", "", "DISPATCH_RELAY_MAX_TOPICS", "relay topics open at once; more are refused with 503", (*intValue)(&r.MaxTopics), atLeast(&r.MaxTopics, 1))
	o.add("relay-max-conns", "", "DISPATCH_RELAY_MAX_CONNS", "relay WebSocket connections at once; more are refused with 503", (*intValue)(&r.MaxConns), atLeast(&r.MaxConns, 1))
	o.add("relay-max-message-bytes", "", "DISPATCH_RELAY_MAX_MESSAGE_BYTES", "largest message a relay client may send; past it: close 1009", (*intValue)(&r.MaxMessageBytes), atLeast(&r.MaxMessageBytes, 64))
	o.add("relay-max-pending", "", "DISPATCH_RELAY_MAX_PENDING", "unsent bytes per relay connection past which whole messages are dropped for it", (*intValue)(&r.MaxPending), atLeast(&r.MaxPending, 16<<10))
	o.add("relay-ping-interval", "", "DISPATCH_RELAY_PING_INTERVAL", "a relay connection quiet this long is pinged, and closed if still quiet as long again", (*durationValue)(&r.PingInterval), atLeastDuration(&r.PingInterval, 100*time.Millisecond))
	o.add("relay-code-ttl", "", "DISPATCH_RELAY_CODE_TTL", "how long a relay connection code stays usable", (*durationValue)(&r.CodeTTL), atLeastDuration(&r.CodeTTL, 100*time.Millisecond))
	o.add("relay-max-codes", "", "DISPATCH_RELAY_MAX_CODES", "relay codes outstanding; more access requests are refused with 503", (*intValue)(&r.MaxCodes), atLeast(&r.MaxCodes, 1))
	o.add("relay-metrics-topics", "", "DISPATCH_RELAY_METRICS_TOPICS", "largest relay topics given series of their own in metrics; the rest are summed as topic=\"_other\"", (*intValue)(&r.MetricsTopics), atLeast(&r.MetricsTopics, 0))
	o.add("relay-allow-no-booking-id", "", "DISPATCH_RELAY_ALLOW_NO_BOOKING_ID", "accept relay tokens without a booking_id", (*boolValue)(&r.AllowNoBookingID), nil)
	o.addRooms()

	// The flag package prints nothing: run decides where help and errors go.
	fs := flag.NewFlagSet("dispatch", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	for _, s := range o.settings {
		fs.Var(s.value, s.long, s.usage)
		if s.short != "" {
			fs.Var(s.value, s.short, "short for --"+s.long)
		}
	}
	fs.StringVar(&o.curlURL, "curl", "", "GET `URL` and exit 0 for a status of 200-499 (health checks)")
	fs.StringVar(&o.curlURL, "c", "", "short for --curl")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.version, "v", false, "short for --version")
	o.flags = fs
	return o
}

// addRooms declares the room balancer's settings.
func (o *options) addRooms() {
	r := &o.rooms
	o.add("rooms-addr", "", "DISPATCH_ROOMS_ADDR", "room balancer listener: port (on --bind) or host:port; empty: off", (*stringValue)(&r.Addr), listenAddr(&r.Addr))
	o.add("rooms-monoliths", "", "DISPATCH_ROOMS_MONOLITHS", "comma-separated host:port of Monolith balancing ports to dial", (*monolithsValue)(&r.Monoliths), nil)
	o.add("rooms-dns", "", "DISPATCH_ROOMS_DNS", "name:port: Monoliths are the name's A/AAAA records, at that balancing port; empty: off", &dnsValue{&r.DNSName, &r.DNSPort}, nil)
	o.add("rooms-dns-interval", "", "DISPATCH_ROOMS_DNS_INTERVAL", "how often --rooms-dns is resolved again", (*durationValue)(&r.DNSInterval), positive(&r.DNSInterval))
	o.add("rooms-dns-server", "", "DISPATCH_ROOMS_DNS_SERVER", "DNS server for --rooms-dns, ip or ip:port; empty: the system's", (*dnsServerValue)(&r.DNSServer), nil)
	o.add("rooms-strategy", "", "DISPATCH_ROOMS_STRATEGY", "where a new room goes: min-rooms, hash-ring or random", (*strategyValue)(&r.Strategy), nil)
	o.add("rooms-hash-weight", "", "DISPATCH_ROOMS_HASH_WEIGHT", "points per Monolith on the hash ring", (*intValue)(&r.HashWeight), inRange(&r.HashWeight, 1, 1000))
	o.add("rooms-region", "", "DISPATCH_ROOMS_REGION", "the balancer's region: Monoliths in it are preferred (else FLY_REGION)", (*stringValue)(&r.Region), nil)
	o.add("rooms-api-key", "", "DISPATCH_ROOMS_API_KEY", "Bearer key of /api/balancing and /api/state; empty: they answer 401", (*secretValue)(&r.APIKey), nil)
	o.add("rooms-init-token", "", "DISPATCH_ROOMS_INIT_TOKEN", "shared token sent in init and required in the Monolith's; empty: none", (*secretValue)(&r.InitToken), nil)
	o.add("rooms-auth-timeout", "", "DISPATCH_ROOMS_AUTH_TIMEOUT", "time a room client has to send its auth message (close 4004)", (*durationValue)(&r.AuthTimeout), positive(&r.AuthTimeout))
	o.add("rooms-init-timeout", "", "DISPATCH_ROOMS_INIT_TIMEOUT", "time a Monolith has to connect and send its init", (*durationValue)(&r.InitTimeout), positive(&r.InitTimeout))
	o.add("rooms-connect-retry", "", "DISPATCH_ROOMS_CONNECT_RETRY", "wait before dialling a Monolith again after a failed connection or handshake", (*durationValue)(&r.ConnectRetry), positive(&r.ConnectRetry))
	o.add("rooms-reconnect-delay", "", "DISPATCH_ROOMS_RECONNECT_DELAY", "wait before dialling a Monolith again after its link ended", (*durationValue)(&r.ReconnectDelay), positive(&r.ReconnectDelay))
	o.add("rooms-max-clients", "", "DISPATCH_ROOMS_MAX_CLIENTS", "room clients at once; more are refused with 503", (*intValue)(&r.MaxClients), atLeast(&r.MaxClients, 1))
	o.add("rooms-max-room-clients", "", "DISPATCH_ROOMS_MAX_ROOM_CLIENTS", "clients of one room on this balancer; more are closed with 1013", (*intValue)(&r.MaxRoomClients), atLeast(&r.MaxRoomClients, 1))
	o.add("rooms-max-rooms", "", "DISPATCH_ROOMS_MAX_ROOMS", "rooms tracked at once", (*intValue)(&r.MaxRooms), atLeast(&r.MaxRooms, 1))
	o.add("rooms-max-message-bytes", "", "DISPATCH_ROOMS_MAX_MESSAGE_BYTES", "largest room client message; past it: close 1009", (*intValue)(&r.MaxMessageBytes), atLeast(&r.MaxMessageBytes, 1024))
	o.add("rooms-max-monolith-message-bytes", "", "DISPATCH_ROOMS_MAX_MONOLITH_MESSAGE_BYTES", "largest Monolith message; past it the link is closed (1009)", (*intValue)(&r.MaxLinkMessageBytes), atLeast(&r.MaxLinkMessageBytes, 64<<10))
	o.add("rooms-max-client-pending", "", "DISPATCH_ROOMS_MAX_CLIENT_PENDING", "unsent bytes per room client; past it the client is closed (1008)", (*intValue)(&r.MaxClientPending), atLeast(&r.MaxClientPending, 64<<10))
	o.add("rooms-max-monolith-pending", "", "DISPATCH_ROOMS_MAX_MONOLITH_PENDING", "unsent bytes per Monolith link; past it the link is closed (its clients are held back from --high-water on)", (*intValue)(&r.MaxLinkPending), atLeast(&r.MaxLinkPending, 64<<10))
	o.add("rooms-max-proxy", "", "DISPATCH_ROOMS_MAX_PROXY", "HTTP requests proxied to Monoliths at once; more are answered 503", (*intValue)(&r.MaxProxy), atLeast(&r.MaxProxy, 1))
	o.add("rooms-metrics-rooms", "", "DISPATCH_ROOMS_METRICS_ROOMS", "largest rooms given series of their own in metrics; the rest are summed as room=\"_other\"", (*intValue)(&r.MetricsRooms), atLeast(&r.MetricsRooms, 0))
}

// isSet reports whether a setting was given by its flag or its variable.
func (o *options) isSet(long string, e env) bool {
	set := false
	o.flags.Visit(func(f *flag.Flag) { set = set || f.Name == long })
	if v, ok := e.get(o.setting(long).envName); ok && v != "" {
		set = true
	}
	return set
}

func (o *options) add(long, short, envName, usage string, v flag.Value, check func() error) {
	o.settings = append(o.settings, setting{long: long, short: short, envName: envName, usage: usage,
		value: v, def: v.String(), check: check})
}

// check validates every setting here rather than leaving it to the kinds,
// so that a refusal names the flag and the variable the operator set.
func (o *options) check() error {
	for _, s := range o.settings {
		if s.check == nil {
			continue
		}
		if err := s.check(); err != nil {
			return fmt.Errorf("%s: %w", s.label(), err)
		}
	}
	return nil
}

// setting returns the setting with this long name; it panics on a name no
// setting has, which is a programming error.
func (o *options) setting(long string) setting {
	for _, s := range o.settings {
		if s.long == long {
			return s
		}
	}
	panic("no setting --" + long)
}

// readEnvironmentOnly reads what has no flag: the secret, logging and the
// platform version.
func (o *options) readEnvironmentOnly(e env) {
	o.driver.Secret, o.secretSrc = defaultSecret, "default"
	for _, name := range []string{"PLACE_SERVER_SECRET", "SERVER_SECRET"} {
		if v, ok := e.get(name); ok && v != "" {
			o.driver.Secret, o.secretSrc = v, name
			break
		}
	}
	o.relay.Secret, o.relaySrc = "", "none"
	for _, name := range []string{"DISPATCH_RELAY_SECRET", "RELAY_SECRET"} {
		if v, ok := e.get(name); ok && v != "" {
			o.relay.Secret, o.relaySrc = v, name
			break
		}
	}
	o.logLevel = slog.LevelDebug
	if v, _ := e.get("SG_ENV"); v == "production" {
		o.logLevel = slog.LevelInfo
	}
	o.logFormat, _ = e.get("PLACE_LOG_FORMAT")
	v, _ := e.get("PLACE_VERSION")
	o.dispatch.Version = dispatch.Version{Commit: commit, Version: version, BuildTime: buildTime, PlatformVersion: v}
	if o.dispatch.Version.PlatformVersion == "" {
		o.dispatch.Version.PlatformVersion = "DEV"
	}
}

// maxGroupIDLen mirrors the cap groups.Register enforces: a join line is buffered whole.
const maxGroupIDLen = 4096

func atLeast(p *int, lo int) func() error {
	return func() error {
		if *p < lo {
			return fmt.Errorf("must be at least %d, got %d", lo, *p)
		}
		return nil
	}
}

func inRange(p *int, lo, hi int) func() error {
	return func() error {
		if *p < lo || *p > hi {
			return fmt.Errorf("must be in %d-%d, got %d", lo, hi, *p)
		}
		return nil
	}
}

// below checks a setting against another that it must stay under.
func below(p, limit *int) func() error {
	return func() error {
		if *p < 0 || *p >= *limit {
			return fmt.Errorf("must be at least 0 and below %d, got %d", *limit, *p)
		}
		return nil
	}
}

func inDurationRange(p *time.Duration, lo, hi time.Duration) func() error {
	return func() error {
		if *p < lo || *p > hi {
			return fmt.Errorf("must be in %v-%v, got %v", lo, hi, *p)
		}
		return nil
	}
}

func positive(p *time.Duration) func() error {
	return func() error {
		if *p <= 0 {
			return fmt.Errorf("must be positive, got %v", *p)
		}
		return nil
	}
}

func atLeastDuration(p *time.Duration, lo time.Duration) func() error {
	return func() error {
		if *p < lo {
			return fmt.Errorf("must be at least %v, got %v", lo, *p)
		}
		return nil
	}
}

// natsURLs accepts "" or comma-separated nats:// (or tls://) URLs.
func natsURLs(p *string) func() error {
	return func() error {
		for _, u := range strings.Split(*p, ",") {
			u = strings.TrimSpace(u)
			if u == "" && *p == "" {
				return nil
			}
			rest, ok := strings.CutPrefix(u, "nats://")
			if !ok {
				rest, ok = strings.CutPrefix(u, "tls://")
			}
			if !ok || rest == "" {
				return fmt.Errorf("want nats://host:port[,…], got %q", u)
			}
		}
		return nil
	}
}

// exclusive refuses a flag set together with another that excludes it.
func exclusive(on *bool, other *string) func() error {
	return func() error {
		if *on && *other != "" {
			return errors.New("excludes --cluster (an external NATS)")
		}
		return nil
	}
}

// hostPort accepts host:port with a numeric port of 1-65535.
func hostPort(p *string) func() error {
	return func() error {
		_, port, err := net.SplitHostPort(*p)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 {
			return fmt.Errorf("want host:port, got %q", *p)
		}
		return nil
	}
}

// hostPorts accepts "" or comma-separated host:port addresses.
func hostPorts(p *string) func() error {
	return func() error {
		for _, a := range strings.Split(*p, ",") {
			if a = strings.TrimSpace(a); a == "" {
				continue
			}
			if err := hostPort(&a)(); err != nil {
				return err
			}
		}
		return nil
	}
}

// token accepts letters, digits, '-' and '_': one NATS subject token.
func token(p *string) func() error {
	return func() error {
		if *p == "" || strings.IndexFunc(*p, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
		}) >= 0 {
			return fmt.Errorf("want letters, digits, '-' or '_', got %q", *p)
		}
		return nil
	}
}

func oneLine(p *string) func() error {
	return func() error {
		if *p == "" || strings.ContainsAny(*p, "\r\n") {
			return fmt.Errorf("must be one non-empty line, got %q", *p)
		}
		return nil
	}
}

// listenAddr accepts an empty address (off), a bare port or host:port with
// a numeric port. Service names are refused: "abc" would otherwise reach
// net.Listen as a port name and fail only once the server is up.
func listenAddr(p *string) func() error {
	return func() error {
		addr := *p
		if addr == "" {
			return nil
		}
		port := addr
		if strings.Contains(addr, ":") {
			var err error
			if _, port, err = net.SplitHostPort(addr); err != nil {
				return fmt.Errorf("want a port or host:port, got %q", addr)
			}
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("want a port (0-65535) or host:port, got %q", addr)
		}
		return nil
	}
}

func (o *options) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: dispatch [flags]\n       dispatch token [flags]   (mint a relay token; dispatch token -h)\n\nPlaceOS dispatch: device ports opened on demand for drivers attached over WebSockets.\n\nFlags (each falls back to its environment variable, then the default):\n")
	for _, s := range o.settings {
		name := "--" + s.long
		if s.short != "" {
			name = "-" + s.short + ", " + name
		}
		fmt.Fprintf(w, "  %-24s %-28s default %-12q %s\n", name, s.envName, s.def, s.usage)
	}
	fmt.Fprintf(w, "  %-24s %-28s %-20s %s\n", "-c, --curl URL", "", "", "GET URL, exit 0 for 200-499 (health check)")
	fmt.Fprintf(w, "  %-24s %-28s %-20s %s\n", "-v, --version", "", "", "print the version and exit")
	fmt.Fprintf(w, "\nEnvironment only:\n"+
		"  PLACE_SERVER_SECRET, else SERVER_SECRET   shared bearer token (default \"testing\": change it)\n"+
		"  DISPATCH_RELAY_SECRET, else RELAY_SECRET  HS256 secret of relay tokens (no default)\n"+
		"  SECRETS_PATH                              directory of secret files for unset variables (default /run/secrets)\n"+
		"  SG_ENV=production                         info-level logs (otherwise debug)\n"+
		"  LOG_LEVEL                                 debug|info|warn|error, overrides SG_ENV\n"+
		"  PLACE_LOG_FORMAT=json                     JSON logs (otherwise text)\n"+
		"  PLACE_VERSION                             platform version reported by /version\n")
}

// logConfig writes the effective configuration at info level; the secret is
// never printed, only where it came from.
func (o *options) logConfig(log *slog.Logger) {
	attrs := []any{"http", o.core.HTTPAddr, "secret_source", o.secretSrc, "relay_secret_source", o.relaySrc}
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

// secretValue never shows its value: the configuration line and -h say
// only whether it is set.
type secretValue string

func (v *secretValue) Set(s string) error { *v = secretValue(s); return nil }
func (v *secretValue) String() string {
	if *v == "" {
		return ""
	}
	return "(set)"
}

type monolithsValue []string

func (v *monolithsValue) Set(s string) error {
	list, err := rooms.ParseMonoliths(s)
	*v = list
	return err
}
func (v *monolithsValue) String() string { return strings.Join(*v, ",") }

type dnsValue struct {
	name *string
	port *int
}

func (v *dnsValue) Set(s string) error {
	name, port, err := rooms.ParseDNS(s)
	*v.name, *v.port = name, port
	return err
}

func (v *dnsValue) String() string {
	if v.name == nil || *v.name == "" {
		return ""
	}
	return net.JoinHostPort(*v.name, strconv.Itoa(*v.port))
}

type dnsServerValue string

func (v *dnsServerValue) Set(s string) error {
	server, err := rooms.ParseDNSServer(s)
	*v = dnsServerValue(server)
	return err
}
func (v *dnsServerValue) String() string { return string(*v) }

type strategyValue rooms.Strategy

func (v *strategyValue) Set(s string) error {
	st, err := rooms.ParseStrategy(s)
	*v = strategyValue(st)
	return err
}
func (v *strategyValue) String() string { return rooms.Strategy(*v).String() }

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
