package rooms

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/placeos-gnet/dispatch/loop"
)

// Every request to the balancer's listener that is not a WebSocket upgrade
// to a room is served here, by net/http on goroutines of its own, never on
// the loop. What needs the loop's state (where a room is, the state
// documents) is computed on the loop with Server.Run and handed back.

// Limits of the HTTP side.
const (
	loopQueryTimeout   = 5 * time.Second  // a request's question to the loop
	proxyDialTimeout   = 5 * time.Second  // connecting to a Monolith's HTTP port
	proxyHeaderTimeout = 30 * time.Second // its response head
	maxListedRooms     = 1000             // entries of /api/room/list
)

// Proxy routes, for counters and labels.
const (
	routeRoom = iota
	routeOther
	routeCount
)

var routeNames = [routeCount]string{"room", "other"}

// offLoopCounters are counted by the HTTP goroutines and the DNS poller.
type offLoopCounters struct {
	httpRequests    atomic.Uint64
	proxied         [routeCount]atomic.Uint64
	proxyErrors     [routeCount]atomic.Uint64
	proxyRefused    atomic.Uint64 // the in-flight cap was reached
	proxyNoMonolith atomic.Uint64
	proxyInFlight   atomic.Int64
	unauthorised    atomic.Uint64
	dnsFailures     atomic.Uint64
}

// ServeHTTP answers the balancer's own endpoints and proxies the rest to a
// Monolith.
func (k *Kind) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	k.off.httpRequests.Add(1)
	switch r.URL.Path {
	case "/api/status":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("OK"))
	case "/api/status/metrics":
		if k.cfg.Metrics == nil {
			jsonError(w, http.StatusNotFound, "metrics are not served")
			return
		}
		k.cfg.Metrics.ServeHTTP(w, r)
	case "/api/balancing":
		if k.authorised(w, r) {
			k.serveGathered(w, r, "text/plain; charset=utf-8", balancingTopic, mergeBalancing)
		}
	case "/api/state":
		if k.authorised(w, r) {
			k.serveGathered(w, r, "application/json", stateTopic, mergeState)
		}
	case "/api/room/list":
		if r.Method != http.MethodGet {
			k.serveProxy(w, r)
			return
		}
		k.serveFromLoop(w, r, "application/json", k.roomListJSON)
	default:
		k.serveProxy(w, r)
	}
}

func jsonError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(loop.AppendJSONError(nil, msg, ""))
}

// authorised checks the Bearer API key; without a configured key the
// protected endpoints always answer 401, as the original's do.
func (k *Kind) authorised(w http.ResponseWriter, r *http.Request) bool {
	if key := k.cfg.APIKey; key != "" {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		a, b := sha256.Sum256([]byte(strings.TrimSpace(token))), sha256.Sum256([]byte(key))
		if ok && subtle.ConstantTimeCompare(a[:], b[:]) == 1 {
			return true
		}
	}
	k.off.unauthorised.Add(1)
	k.offLog(&k.authLog, "refused balancer state requests: invalid API key", "last_peer", r.RemoteAddr, "path", r.URL.Path)
	jsonError(w, http.StatusUnauthorized, "invalid API key")
	return false
}

// serveFromLoop renders a document on the loop and sends it.
func (k *Kind) serveFromLoop(w http.ResponseWriter, r *http.Request, contentType string, render func([]byte) []byte) {
	ctx, cancel := context.WithTimeout(r.Context(), loopQueryTimeout)
	defer cancel()
	var doc []byte
	if err := k.srv.Run(ctx, func(*loop.Hub) { doc = render(nil) }); err != nil {
		jsonError(w, http.StatusServiceUnavailable, "the balancer is busy or stopping")
		return
	}
	w.Header().Set("Content-Type", contentType)
	_, _ = w.Write(doc)
}

// serveGathered sends every replica's answer to topic, merged (alone,
// this replica's).
func (k *Kind) serveGathered(w http.ResponseWriter, r *http.Request, contentType, topic string, merge func([][]byte) []byte) {
	ctx, cancel := context.WithTimeout(r.Context(), loopQueryTimeout)
	defer cancel()
	done := make(chan [][]byte, 1)
	err := k.srv.Run(ctx, func(h *loop.Hub) {
		h.GatherParts(topic, func(parts [][]byte) { done <- parts })
	})
	var parts [][]byte
	if err == nil {
		select {
		case parts = <-done:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if err != nil {
		jsonError(w, http.StatusServiceUnavailable, "the balancer is busy or stopping")
		return
	}
	w.Header().Set("Content-Type", contentType)
	_, _ = w.Write(merge(parts))
}

// balancingText is the human-readable dump of /api/balancing.
func (k *Kind) balancingText(dst []byte) []byte {
	b := bytes.NewBuffer(dst)
	fmt.Fprintf(b, "balancer %s, region %s, strategy %s%s\n", k.id, k.cfg.Region, k.cfg.Strategy, k.replicaLine())
	fmt.Fprintf(b, "monoliths: %d connected, %d discovered\n", len(k.up), len(k.targets))
	fmt.Fprintf(b, "clients: %d\n", k.nClients)
	fmt.Fprintf(b, "rooms: %d\n", len(k.rooms))
	for _, key := range slices.Sorted(maps.Keys(k.rooms)) {
		r := k.rooms[key]
		epoch := strconv.FormatUint(uint64(r.epoch), 10)
		if r.epoch == placeholderEpoch {
			epoch = "placed, not yet loaded"
		}
		clients := 0
		if r.ch != nil {
			clients = r.ch.Members()
		}
		fmt.Fprintf(b, "  %s -> %s (epoch %s, %d clients here)\n", r.name, r.m.id, epoch, clients)
	}
	regions := map[string][]string{}
	for _, m := range k.up {
		regions[m.region] = append(regions[m.region], m.id)
	}
	b.WriteString("regions:\n")
	for _, region := range slices.Sorted(maps.Keys(regions)) {
		fmt.Fprintf(b, "  %s: %s\n", region, strings.Join(regions[region], ", "))
	}
	return b.Bytes()
}

// stateJSON is /api/state: {id, region, monoliths:[{id, region, rooms:[{name,
// clients:[{id, edge_region}]}]}]}, the original's BalancerState.
func (k *Kind) stateJSON(dst []byte) []byte {
	dst = append(dst, `{"id":`...)
	dst = loop.AppendJSONString(dst, k.id)
	dst = append(dst, `,"region":`...)
	dst = loop.AppendJSONString(dst, k.cfg.Region)
	dst = append(dst, `,"monoliths":[`...)
	for i, m := range k.up {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"id":`...)
		dst = loop.AppendJSONString(dst, m.id)
		dst = append(dst, `,"region":`...)
		dst = loop.AppendJSONString(dst, m.region)
		dst = append(dst, `,"rooms":[`...)
		for j, key := range slices.Sorted(maps.Keys(m.rooms)) {
			r := m.rooms[key]
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"name":`...)
			dst = loop.AppendJSONString(dst, r.name)
			dst = append(dst, `,"clients":[`...)
			if r.ch != nil {
				n := 0
				r.ch.EachMember(func(mb *loop.Member) {
					if n > 0 {
						dst = append(dst, ',')
					}
					n++
					dst = append(dst, `{"id":`...)
					dst = append(dst, mb.Label...)
					dst = append(dst, `,"edge_region":`...)
					dst = loop.AppendJSONString(dst, k.edgeOf(mb))
					dst = append(dst, '}')
				})
			}
			dst = append(dst, "]}"...)
		}
		dst = append(dst, "]}"...)
	}
	return append(dst, "]}"...)
}

// edgeOf is a member's Fly-Region, found through its id.
func (k *Kind) edgeOf(mb *loop.Member) string {
	id, _ := stringOf(mb.Label)
	if cl := k.clientByID[id]; cl != nil {
		return cl.edge
	}
	return ""
}

// roomListJSON is /api/room/list: the metadata of every public room the
// Monoliths reported, as they sent it, most users first.
func (k *Kind) roomListJSON(dst []byte) []byte {
	var list []*room
	for _, r := range k.rooms {
		if r.pub && r.meta != nil {
			list = append(list, r)
		}
	}
	slices.SortFunc(list, func(a, b *room) int {
		switch {
		case a.users > b.users:
			return -1
		case a.users < b.users:
			return 1
		}
		return strings.Compare(a.key, b.key)
	})
	if len(list) > maxListedRooms {
		list = list[:maxListedRooms]
	}
	dst = append(dst, '[')
	for i, r := range list {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, r.meta...)
	}
	return append(dst, ']')
}

// targetKey carries the chosen Monolith through the proxy's Rewrite.
type targetKey struct{}

// serveProxy sends a request on to a Monolith: /api/room/<name>/… to the
// room's Monolith or the one it would be placed on, anything else to any
// Monolith (of the balancer's region first). Body and status go through as
// they are.
func (k *Kind) serveProxy(w http.ResponseWriter, r *http.Request) {
	route, key, name := routeOther, "", ""
	if rest, ok := strings.CutPrefix(r.URL.Path, roomPrefix); ok {
		name, _, _ = strings.Cut(rest, "/")
		if nameProblem(name) == "" {
			route, key = routeRoom, roomKey(name)
		}
	}
	select {
	case k.proxySlots <- struct{}{}:
		defer func() { <-k.proxySlots }()
	default:
		k.off.proxyRefused.Add(1)
		k.offLog(&k.proxyFullLog, "too many proxied requests in flight: refusing", "limit", k.cfg.MaxProxy, "peer", r.RemoteAddr)
		jsonError(w, http.StatusServiceUnavailable, "too many requests in flight")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), loopQueryTimeout)
	found := make(chan *url.URL, 1)
	send := func(m *monolith) {
		var target *url.URL
		if m != nil {
			u := *m.httpURL
			target = &u
		}
		found <- target
	}
	err := k.srv.Run(ctx, func(*loop.Hub) {
		switch {
		case key == "":
			var m *monolith
			if cands := k.candidates(); len(cands) > 0 {
				m = cands[randIntN(len(cands))]
			}
			send(m)
		case k.rooms[key] != nil:
			send(k.rooms[key].m)
		default:
			k.whereNew(name, false, send) // where the placer would put it, in a cluster
		}
	})
	var target *url.URL
	if err == nil {
		select {
		case target = <-found:
		case <-ctx.Done():
		}
	}
	cancel()
	if err != nil || target == nil {
		k.off.proxyNoMonolith.Add(1)
		jsonError(w, http.StatusServiceUnavailable, "No monoliths available to handle request")
		return
	}
	k.off.proxied[route].Add(1)
	k.off.proxyInFlight.Add(1)
	defer k.off.proxyInFlight.Add(-1)
	r = r.WithContext(context.WithValue(r.Context(), targetKey{}, proxyTarget{target, route}))
	k.proxy.ServeHTTP(w, r)
}

type proxyTarget struct {
	url   *url.URL
	route int
}

func (k *Kind) newProxy() *httputil.ReverseProxy {
	dialer := &net.Dialer{Timeout: proxyDialTimeout}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(targetKey{}).(proxyTarget)
			pr.SetURL(t.url)
			pr.SetXForwarded()
			pr.Out.Host = pr.In.Host
		},
		Transport: &http.Transport{
			DialContext:           dialer.DialContext,
			ResponseHeaderTimeout: proxyHeaderTimeout,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t := r.Context().Value(targetKey{}).(proxyTarget)
			k.off.proxyErrors[t.route].Add(1)
			k.offLog(&k.proxyErrLog, "proxying to a Monolith failed", "monolith", t.url.Host, "path", r.URL.Path, "err", err)
			jsonError(w, http.StatusBadGateway, "the Monolith could not be reached")
		},
		ErrorLog: slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug),
	}
}

// offLogger is a RateLog for goroutines other than the loop.
type offLogger struct {
	mu sync.Mutex
	r  loop.RateLog
}

func (k *Kind) offLog(l *offLogger, msg string, args ...any) {
	l.mu.Lock()
	due := l.r.Due(time.Now())
	count := 0
	if due {
		count = l.r.Take()
	}
	l.mu.Unlock()
	if due {
		k.log.Warn(msg, append(args, "count", count)...)
	}
}
