// Package dispatch is the PlaceOS dispatch kind: device TCP and UDP ports
// opened on demand while drivers listen. A port is a channel whose members
// are device connections (TCP) or the sources of datagrams (UDP) and whose
// upstreams are the drivers attached to it; a member is heard by the drivers
// whose accept list admits it.
package dispatch

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/loop/driver"
	"github.com/placeos-gnet/dispatch/stats"
)

// KindName is the kind's name in channel keys and metrics.
const KindName = "dispatch"

// Config is the dispatch kind's configuration.
type Config struct {
	DeviceHost       string // host device ports bind to; "" is every interface
	MaxDevicePending int    // unsent WRITE bytes per device (device closed past it)
	MaxPortConns     int    // device connections per TCP port
	MaxPorts         int    // device ports open at once, TCP and UDP together
	UDPQueueBytes    int    // datagram bytes queued per UDP port between reader and loop
	Version          Version
}

// Version is what GET .../version reports.
type Version struct {
	Commit          string
	Version         string
	BuildTime       string
	PlatformVersion string
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		MaxDevicePending: 1 << 20,
		MaxPortConns:     20000,
		MaxPorts:         4096,
		UDPQueueBytes:    8 << 20,
	}
}

func (c *Config) check() error {
	switch {
	case c.MaxDevicePending < 1:
		return errors.New("max device pending must be positive")
	case c.MaxPortConns < 1:
		return errors.New("max port conns must be positive")
	case c.MaxPorts < 1:
		return errors.New("max ports must be positive")
	case c.UDPQueueBytes < 64<<10:
		return errors.New("udp queue bytes must be at least 64 KiB")
	}
	return nil
}

// Kind serves dispatch ports.
type Kind struct {
	cfg  Config
	drv  *driver.Config
	auth driver.Auth
	hub  *loop.Hub

	tcp map[int]*port // device TCP ports, by port
	udp map[int]*port // device UDP ports, by port

	drivers, devices *loop.Class
	c                counters
	udpCounters      loop.UDPCounters
	published        atomic.Pointer[Counters]
}

// Counters are the kind's own counts, beyond its classes'.
type Counters struct {
	PortsOpened         uint64
	PortsRefused        uint64 // past MaxPorts
	DevicesRefusedIP    uint64 // TCP peer not on any accept list
	DevicesRefusedCap   uint64 // per-port or total connection cap reached
	DevicesRefusedStale uint64 // arrived after its port closed
	DatagramsIn         uint64
	DatagramsRefusedIP  uint64
	DatagramsEmpty      uint64 // counted by the readers, folded in at publish
	DatagramsDropped    uint64 // reader queue full; likewise
	DatagramsOut        uint64
	DatagramsOutDropped uint64 // socket buffer full or bad destination
	UDPBytesIn          uint64
	UDPBytesOut         uint64
}

type counters = Counters

// Register adds the dispatch kind and its routes to s.
func Register(s *loop.Server, cfg Config, drv *driver.Config) (*Kind, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if err := drv.Check(); err != nil {
		return nil, err
	}
	k := &Kind{cfg: cfg, drv: drv, auth: driver.NewAuth(drv.Secret), tcp: map[int]*port{}, udp: map[int]*port{}}
	k.published.Store(&Counters{})
	s.Register(k)
	for _, base := range []string{"/api/dispatch/v1", "/api/server"} {
		s.Handle(base, k.serveStats)
		s.Handle(base+"/", k.serveStats)
		s.Handle(base+"/healthz", k.serveHealth)
		s.Handle(base+"/version", k.serveVersion)
		s.Handle(base+"/tcp_dispatch", func(r *loop.Request) { k.attachDriver(r, protoTCP) })
		s.Handle(base+"/udp_dispatch", func(r *loop.Request) { k.attachDriver(r, protoUDP) })
	}
	return k, nil
}

// Name implements loop.Kind.
func (k *Kind) Name() string { return KindName }

// Start implements loop.Kind: ports open on demand, so nothing is bound yet.
func (k *Kind) Start(h *loop.Hub) error {
	k.hub = h
	k.drivers = driver.NewClass(h, KindName)
	k.devices = h.NewClass(KindName, "device").Say(loop.EndSlow, "device not reading, closing it")
	// In a cluster a port is open on every replica while a driver anywhere
	// listens, and the stats document counts every replica.
	h.SpanKind(KindName, k.openForCluster)
	h.Answer(statsTopic, func() []byte { d := k.localStats(); return d.AppendJSON(nil) })
	return nil
}

// statsTopic is the cluster-wide question behind the stats document.
const statsTopic = "dispatch.stats"

// openForCluster opens a port because a driver on another replica listens
// on it; nil when it cannot open.
func (k *Kind) openForCluster(name string) *loop.Channel {
	protoName, number, ok := strings.Cut(name, ":")
	n, err := strconv.Atoi(number)
	if !ok || err != nil || n < 1 || n > 65535 || protoName != "tcp" && protoName != "udp" {
		return nil
	}
	p := protoTCP
	if protoName == "udp" {
		p = protoUDP
	}
	pt, err := k.portFor(p, n)
	if err != nil {
		k.hub.Log().Warn("cannot open device port for drivers on other replicas", "proto", protoName, "port", n, "err", err)
		return nil
	}
	return pt.ch
}

// Tick implements loop.Kind.
func (k *Kind) Tick(*loop.Hub) {}

// Shutdown closes every port: devices are closed, and drivers hear CLOSED
// for them before the core sends them close 1001.
func (k *Kind) Shutdown(*loop.Hub) {
	for _, p := range k.tcp {
		p.close()
	}
	for _, p := range k.udp {
		p.close()
	}
}

// Counters returns the kind's counts as last published.
func (k *Kind) Counters() Counters { return *k.published.Load() }

func (k *Kind) serveHealth(r *loop.Request) {
	if r.Method != http.MethodGet {
		r.Error(http.StatusNotFound, "not found", "")
		return
	}
	r.Respond(http.StatusOK, "", nil)
}

func (k *Kind) serveVersion(r *loop.Request) {
	if r.Method != http.MethodGet {
		r.Error(http.StatusNotFound, "not found", "")
		return
	}
	v := k.cfg.Version
	b := []byte(`{"service":"dispatch","commit":`)
	b = loop.AppendJSONString(b, v.Commit)
	b = append(b, `,"version":`...)
	b = loop.AppendJSONString(b, v.Version)
	b = append(b, `,"build_time":`...)
	b = loop.AppendJSONString(b, v.BuildTime)
	b = append(b, `,"platform_version":`...)
	b = loop.AppendJSONString(b, v.PlatformVersion)
	r.Respond(http.StatusOK, "application/json", append(b, '}'))
}

// serveStats renders the stats document for every open port.
func (k *Kind) serveStats(r *loop.Request) {
	if k.auth.DocumentRequest(r, k.hub) {
		k.hub.Gather(r, statsTopic, "application/json", stats.Sum[stats.Dispatch])
	}
}

// localStats counts what this replica holds: its drivers and devices.
func (k *Kind) localStats() stats.Dispatch {
	var d stats.Dispatch
	for n, p := range k.udp {
		d.UDPListeners = append(d.UDPListeners, stats.PortCount{Port: n, Count: p.ch.LocalUpstreams()})
	}
	for n, p := range k.tcp {
		d.TCPListeners = append(d.TCPListeners, stats.PortCount{Port: n, Count: p.ch.LocalUpstreams()})
		d.TCPClients = append(d.TCPClients, stats.PortCount{Port: n, Count: len(p.devices)})
	}
	return d
}

// attachDriver validates a dispatch request, binds the device port if this
// is its first driver, and only then answers 101.
func (k *Kind) attachDriver(r *loop.Request, p proto) {
	h := k.hub
	query, ok := k.auth.Preamble(r, h, "port")
	if !ok {
		return
	}
	portValues, ok := query["port"]
	if !ok {
		driver.ParamError(r, h, http.StatusUnprocessableEntity, "port", "missing required parameter 'port'")
		return
	}
	acceptValues, ok := query["accept"]
	if !ok {
		driver.ParamError(r, h, http.StatusUnprocessableEntity, "accept", "missing required parameter 'accept'")
		return
	}
	number, err := strconv.Atoi(strings.TrimSpace(portValues[0]))
	if err != nil || number < 1 || number > 65535 {
		driver.ParamError(r, h, http.StatusBadRequest, "port", "invalid parameter value for 'port'")
		return
	}
	accept, err := driver.ParseAcceptList(acceptValues[0])
	if err != nil {
		driver.ParamError(r, h, http.StatusBadRequest, "accept", "invalid parameter value for 'accept'")
		return
	}
	// The 101 is composed before the port is bound, and sent after.
	answer, ok := r.Accept()
	if !ok {
		return
	}
	pt, err := k.portFor(p, number)
	if err != nil {
		h.Log().Warn("cannot open device port", "proto", p.String(), "port", number, "peer", r.Peer, "err", err)
		r.Error(http.StatusConflict, err.Error(), "port")
		return
	}
	d := driver.Attach(r, answer, k.drv, k.drivers, pt.ch, &accept, pt)
	h.Log().Info("driver registered", "proto", p.String(), "port", number,
		"peer", r.Peer, "module", d.Module, "accept", accept.String())
}

// Collect implements loop.Kind: the kind's series, under the names the
// server has always exported.
func (k *Kind) Collect(_ *loop.Hub, dst []stats.Sample) []stats.Sample {
	c := k.c
	c.DatagramsEmpty = k.udpCounters.Empty.Load()
	c.DatagramsDropped = k.udpCounters.Dropped.Load()
	k.published.Store(&c)
	dv := &k.devices.ClassCounters
	return append(dst,
		stats.S(portsOpen, float64(len(k.tcp)), "tcp"),
		stats.S(portsOpen, float64(len(k.udp)), "udp"),
		stats.S(deviceConns, float64(dv.Open)),
		stats.S(deviceBytes, float64(dv.BytesIn), "tcp", "in"),
		stats.S(deviceBytes, float64(dv.BytesOut), "tcp", "out"),
		stats.S(deviceBytes, float64(c.UDPBytesIn), "udp", "in"),
		stats.S(deviceBytes, float64(c.UDPBytesOut), "udp", "out"),
		stats.S(deviceMessages, float64(dv.MessagesIn), "tcp", "in"),
		stats.S(deviceMessages, float64(dv.FramesOut), "tcp", "out"),
		stats.S(deviceMessages, float64(c.DatagramsIn), "udp", "in"),
		stats.S(deviceMessages, float64(c.DatagramsOut), "udp", "out"),
		stats.S(portsOpened, float64(c.PortsOpened)),
		stats.S(portsRefused, float64(c.PortsRefused)),
		stats.S(driversRegistered, float64(k.drivers.Opened)),
		stats.S(devicesAccepted, float64(dv.Opened)),
		stats.S(refusedPeers, float64(c.DevicesRefusedIP), "tcp", "not_accepted"),
		stats.S(refusedPeers, float64(c.DevicesRefusedCap), "tcp", "connection_cap"),
		stats.S(refusedPeers, float64(c.DevicesRefusedStale), "tcp", "port_closed"),
		stats.S(refusedPeers, float64(c.DatagramsRefusedIP), "udp", "not_accepted"),
		stats.S(stats.DatagramsDropped, float64(c.DatagramsDropped), "queue_full"),
		stats.S(stats.DatagramsDropped, float64(c.DatagramsEmpty), "empty"),
		stats.S(stats.DatagramsDropped, float64(c.DatagramsOutDropped), "send_failed"),
	)
}

var (
	portsOpen         = stats.NewGauge("ports_open", "Device ports open.", "proto")
	deviceConns       = stats.NewGauge("device_connections", "Device TCP connections open on dispatch ports.")
	deviceBytes       = stats.NewCounter("device_bytes_total", "Payload bytes exchanged with devices.", "proto", "direction")
	deviceMessages    = stats.NewCounter("device_messages_total", "Reads from and writes to devices (TCP), datagrams (UDP).", "proto", "direction")
	portsOpened       = stats.NewCounter("ports_opened_total", "Device ports opened.")
	portsRefused      = stats.NewCounter("ports_refused_total", "Device ports not opened: the cap on open ports was reached.")
	driversRegistered = stats.NewCounter("drivers_registered_total", "Driver sessions registered on dispatch ports.")
	devicesAccepted   = stats.NewCounter("device_connections_accepted_total", "Device TCP connections admitted.")
	refusedPeers      = stats.NewCounter("refused_peers_total", "Device peers refused.", "proto", "reason")
)

// refusalLog rate-limits the log line for refused peers: one line per port
// per interval, carrying the count since the last line.
type refusalLog struct {
	loop.RateLog
	last string
}

func (r *refusalLog) note(h *loop.Hub, p *port, peer string) {
	r.last = peer
	if r.Due(h.Now()) {
		h.Log().Info("refused peers not on any accept list", "proto", p.proto.String(), "port", p.number,
			"count", r.Take(), "last_peer", peer)
	}
}

// flush logs what is still counted when the port closes.
func (r *refusalLog) flush(h *loop.Hub, p *port) {
	if n := r.Take(); n > 0 {
		h.Log().Info("refused peers not on any accept list", "proto", p.proto.String(), "port", p.number,
			"count", n, "last_peer", r.last)
	}
}
