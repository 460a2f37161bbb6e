package rooms

import (
	"github.com/placeos-gnet/dispatch/loop"
	"github.com/placeos-gnet/dispatch/stats"
)

// Counters are the kind's own counts, beyond its classes'. The classes
// (kind rooms, roles client and monolith) count connections, messages,
// bytes, ends by reason, pauses.
type Counters struct {
	UpgradesRefused       [refusedCount]uint64    // WebSocket upgrades answered with an error
	AuthRefused           [authReasonCount]uint64 // clients closed before or at their auth message
	Joins, Leaves         uint64
	ClientMessages        uint64                    // forwarded to a Monolith as client_msg
	ClientMessagesRefused uint64                    // not a JSON object: the client was closed
	EarlyOverflows        uint64                    // more than maxEarlyMessages before the join: the client was closed
	Placements            uint64                    // rooms placed on a Monolith by the strategy
	PlacerAsks            [placeOutcomeCount]uint64 // new rooms this replica asked the placer replica about
	RoomsRefused          uint64                    // rooms not tracked or not opened for the rooms cap
	Duplicates            [dupCount]uint64
	MetadataTooLarge      uint64
	LinkMessages          [msgCount]uint64 // Monolith messages applied, by type
	LinkMessagesRefused   uint64           // Monolith messages that could not be applied
	Unrouted              uint64           // room_msg or kick for a client or room not on that link
	Broadcasts, Unicasts  uint64
	Kicks                 uint64
	LinkAttempts          [attemptCount]uint64
}

// Why upgrades are refused.
const (
	refusedBadName = iota
	refusedNoMonolith
	refusedClientCap
	refusedCount
)

var refusedNames = [refusedCount]string{"bad_room_name", "no_monolith", "client_cap"}

// Why clients are closed before they join.
const (
	authTimeout = iota
	authReasonNotJSON
	authReasonNotAuth
	authReasonBadToken
	authReasonTooLarge
	authReasonNotText
	authReasonLongToken
	authNoMonolith
	authRoomFull
	authReasonCount
)

var authReasonNames = [authReasonCount]string{"timeout", "not_json", "not_auth", "bad_token", "too_large", "binary", "token_too_long", "no_monolith", "room_full"}

func authReasonOf(p *authProblem) int {
	switch p {
	case authNotJSON:
		return authReasonNotJSON
	case authNotAuth:
		return authReasonNotAuth
	case authBadToken:
		return authReasonBadToken
	case authTooLarge:
		return authReasonTooLarge
	case authNotText:
		return authReasonNotText
	}
	return authReasonLongToken
}

// How duplicate rooms were resolved.
const (
	dupOldUnloaded      = iota // the newcomer had the lower epoch: the old copy was unloaded
	dupNewcomerUnloaded        // the newcomer was told to unload
	dupEqual                   // same epoch: kept where it was
	dupCount
)

var dupNames = [dupCount]string{"old_copy_unloaded", "new_copy_unloaded", "same_epoch"}

// Monolith message types.
const (
	msgInit = iota
	msgLoaded
	msgUnloaded
	msgGossip
	msgRoomMsg
	msgKick
	msgOther
	msgCount
)

var msgNames = [msgCount]string{"init", "loaded", "unloaded", "gossip", "room_msg", "kick", "unknown"}

// Outcomes of link attempts.
const (
	attemptConnected = iota
	attemptConnectFailed
	attemptHandshakeFailed
	attemptCount
)

var attemptNames = [attemptCount]string{"connected", "connect_failed", "handshake_failed"}

// Counters returns the kind's counts as last published.
func (k *Kind) Counters() Counters { return *k.published.Load() }

// Collect implements loop.Kind.
func (k *Kind) Collect(_ *loop.Hub, dst []stats.Sample) []stats.Sample {
	c := k.c
	k.published.Store(&c)
	ready := 0.0
	if k.dnsDone && len(k.up) == len(k.targets) {
		ready = 1
	}
	dst = append(dst,
		stats.S(roomsMonoliths, float64(len(k.up)), "connected"),
		stats.S(roomsMonoliths, float64(len(k.targets)), "discovered"),
		stats.S(roomsReady, ready),
		stats.S(roomsRooms, float64(len(k.rooms))),
		stats.S(roomsAuthenticating, float64(k.nAuthing)),
		stats.S(roomsJoins, float64(c.Joins)),
		stats.S(roomsLeaves, float64(c.Leaves)),
		stats.S(roomsClientMessages, float64(c.ClientMessages), "forwarded"),
		stats.S(roomsClientMessages, float64(c.ClientMessagesRefused), "refused"),
		stats.S(roomsClientMessages, float64(c.EarlyOverflows), "refused_before_join"),
		stats.S(roomsPlacements, float64(c.Placements), k.cfg.Strategy.String()),
		stats.S(roomsRefused, float64(c.RoomsRefused)),
		stats.S(roomsMetadataDropped, float64(c.MetadataTooLarge)),
		stats.S(roomsLinkRefused, float64(c.LinkMessagesRefused)),
		stats.S(roomsDelivered, float64(c.Broadcasts), "broadcast"),
		stats.S(roomsDelivered, float64(c.Unicasts), "unicast"),
		stats.S(roomsDelivered, float64(c.Unrouted), "unrouted"),
		stats.S(roomsKicks, float64(c.Kicks)),
		stats.S(roomsHTTP, float64(k.off.httpRequests.Load())),
		stats.S(roomsProxyInFlight, float64(k.off.proxyInFlight.Load())),
		stats.S(roomsProxyRefused, float64(k.off.proxyRefused.Load()), "in_flight_cap"),
		stats.S(roomsProxyRefused, float64(k.off.proxyNoMonolith.Load()), "no_monolith"),
		stats.S(roomsUnauthorised, float64(k.off.unauthorised.Load())),
		stats.S(roomsDNSFailures, float64(k.off.dnsFailures.Load())),
	)
	dst = labelled(dst, roomsUpgradesRefused, c.UpgradesRefused[:], refusedNames[:])
	dst = labelled(dst, roomsAuthRefused, c.AuthRefused[:], authReasonNames[:])
	dst = labelled(dst, roomsDuplicates, c.Duplicates[:], dupNames[:])
	dst = labelled(dst, roomsUnmapped, k.unmapReasons[:], unmapReasonNames[:])
	dst = labelled(dst, roomsLinkMessages, c.LinkMessages[:], msgNames[:])
	dst = labelled(dst, roomsLinkAttempts, c.LinkAttempts[:], attemptNames[:])
	dst = labelled(dst, roomsPlacerAsks, c.PlacerAsks[:], placeOutcomeNames[:])
	for i := range routeCount {
		dst = append(dst,
			stats.S(roomsProxied, float64(k.off.proxied[i].Load()), routeNames[i]),
			stats.S(roomsProxyErrors, float64(k.off.proxyErrors[i].Load()), routeNames[i]))
	}
	ranked := make([]stats.Ranked, 0, len(k.rooms))
	for _, r := range k.rooms {
		if r.ch != nil {
			n := float64(r.ch.Members())
			ranked = append(ranked, stats.Ranked{Name: r.name, Rank: n, Values: [stats.MaxRanked]float64{n}})
		}
	}
	for _, r := range stats.Bounded(ranked, k.cfg.MetricsRooms) {
		dst = append(dst, stats.S(roomsRoomClients, r.Values[0], r.Name))
	}
	return dst
}

// labelled appends one sample per count, labelled with its name.
func labelled(dst []stats.Sample, d *stats.Desc, counts []uint64, names []string) []stats.Sample {
	for i, n := range counts {
		dst = append(dst, stats.S(d, float64(n), names[i]))
	}
	return dst
}

var (
	roomsMonoliths       = stats.NewGauge("rooms_monoliths", "Monoliths: connected (handshake done) and discovered.", "state")
	roomsReady           = stats.NewGauge("rooms_ready", "1 when discovery has answered and every discovered Monolith is connected.")
	roomsRooms           = stats.NewGauge("rooms_rooms", "Rooms the balancer knows are loaded (or is placing).")
	roomsAuthenticating  = stats.NewGauge("rooms_clients_authenticating", "Room clients connected that have not sent their auth message yet.")
	roomsJoins           = stats.NewCounter("rooms_joins_total", "Room clients that authenticated and joined their room.")
	roomsLeaves          = stats.NewCounter("rooms_leaves_total", "Room clients that left their room (leave sent to the Monolith).")
	roomsClientMessages  = stats.NewCounter("rooms_client_messages_total", "Client messages: forwarded to the Monolith as client_msg, or refused (not a JSON object, or past the bound held before the join; the client is closed).", "outcome")
	roomsPlacements      = stats.NewCounter("rooms_placements_total", "Rooms placed on a Monolith by the selection strategy.", "strategy")
	roomsRefused         = stats.NewCounter("rooms_rooms_refused_total", "Rooms not tracked or not opened because the rooms cap was reached.")
	roomsMetadataDropped = stats.NewCounter("rooms_metadata_dropped_total", "Room metadata past its size bound, not kept for the room list.")
	roomsLinkRefused     = stats.NewCounter("rooms_monolith_messages_refused_total", "Monolith messages that could not be applied (malformed, binary, second init).")
	roomsDelivered       = stats.NewCounter("rooms_room_messages_total", "Monolith room_msg: broadcast to a room, sent to one client, or unrouted (no such client or room on that link).", "kind")
	roomsKicks           = stats.NewCounter("rooms_kicks_total", "Clients closed by a Monolith's kick.")
	roomsHTTP            = stats.NewCounter("rooms_http_requests_total", "HTTP requests to the balancer that are not room WebSocket upgrades.")
	roomsProxyInFlight   = stats.NewGauge("rooms_proxy_requests_in_flight", "Requests being proxied to a Monolith.")
	roomsProxyRefused    = stats.NewCounter("rooms_proxy_refused_total", "Requests not proxied: too many in flight, or no Monolith.", "reason")
	roomsUnauthorised    = stats.NewCounter("rooms_unauthorised_total", "Requests to /api/balancing or /api/state without the API key.")
	roomsDNSFailures     = stats.NewCounter("rooms_dns_failures_total", "DNS discovery lookups that failed.")
	roomsUpgradesRefused = stats.NewCounter("rooms_upgrades_refused_total", "Room WebSocket upgrades refused before the 101.", "reason")
	roomsAuthRefused     = stats.NewCounter("rooms_auth_refused_total", "Room clients closed before joining, by reason.", "reason")
	roomsDuplicates      = stats.NewCounter("rooms_duplicates_total", "Rooms reported loaded on two Monoliths, by outcome.", "outcome")
	roomsUnmapped        = stats.NewCounter("rooms_unmapped_total", "Rooms forgotten (their clients here closed with 1000), by reason.", "reason")
	roomsLinkMessages    = stats.NewCounter("rooms_monolith_messages_total", "Monolith messages applied, by type.", "type")
	roomsLinkAttempts    = stats.NewCounter("rooms_monolith_attempts_total", "Attempts to link to a Monolith, by outcome.", "outcome")
	roomsProxied         = stats.NewCounter("rooms_proxy_requests_total", "Requests proxied to a Monolith, by route.", "route")
	roomsProxyErrors     = stats.NewCounter("rooms_proxy_errors_total", "Proxied requests that failed (502), by route.", "route")
	roomsPlacerAsks      = stats.NewCounter("rooms_placer_asks_total", "New rooms this replica asked the placer replica about (a cluster): placed where it said, or here because it did not answer or named a Monolith not linked here.", "outcome")
	roomsRoomClients     = stats.NewGauge("rooms_room_clients", "Clients of a room on this balancer (the largest rooms; the rest summed as room=\"_other\").", "room")
)
