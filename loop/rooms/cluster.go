package rooms

// The balancer across replicas. Each replica is a balancer of its own to
// the Monoliths (its own id, its own link to each), as several original
// balancers are: a client's join, messages and leave go over its replica's
// link; a Monolith sends its loaded, unloaded and gossip to every balancer,
// one room_msg per balancer with clients in the room, and a unicast or a
// kick to the balancer the client joined through. None of that crosses the
// bus, and neither does the resolution of two copies of a room (every
// replica sees both loads and keeps the lower epoch).
//
// What crosses is where a new room goes. Left to themselves, two replicas
// whose clients open a room loaded nowhere may pick different Monoliths
// (the fewest rooms as each counts them, a random one), and the room is
// loaded twice until the duplicate is resolved and the losing copy's
// clients reconnect. So one replica decides for all: the placer, the live
// replica with the lowest node number. Another replica asks it
// (placeTopic) and maps the room where it says, if it has a link to that
// Monolith; the placer maps it there too, so its own clients and every
// later question agree. A placer that does not answer within the bus's
// deadline (gone, NATS away) leaves the choice to the replica that asked.
//
// /api/state and /api/balancing answer for every replica (Hub.GatherParts).

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/placeos-gnet/dispatch/loop"
)

// Topics of the balancer's questions between replicas.
const (
	placeTopic     = "rooms.place"     // Ask the placer: where does a room go
	stateTopic     = "rooms.state"     // Gather: /api/state, this replica's
	balancingTopic = "rooms.balancing" // Gather: /api/balancing, this replica's
)

// Outcomes of asking the placer, for rooms_placer_asks_total.
const (
	placedByPlacer    = iota // it named a Monolith linked here
	placerUnanswered         // no answer in time: placed here
	placerUnknownLink        // it named no Monolith, or one not linked here: placed here
	placeOutcomeCount
)

var placeOutcomeNames = [placeOutcomeCount]string{"placed_by_placer", "unanswered", "unknown_monolith"}

// startCluster registers what the balancer answers other replicas.
func (k *Kind) startCluster(h *loop.Hub) {
	h.OnAsk(placeTopic, k.placeFor)
	h.Answer(stateTopic, func() []byte { return k.stateJSON(nil) })
	h.Answer(balancingTopic, func() []byte { return k.balancingText(nil) })
}

// placer is the replica that decides where new rooms go, when it is
// another: the live replica with the lowest node number.
func (k *Kind) placer() (int, bool) {
	peers := k.hub.Peers()
	if len(peers) > 0 && peers[0] < k.hub.Node() {
		return peers[0], true
	}
	return 0, false
}

// whereNew finds the Monolith for a room loaded nowhere and calls done
// with it (nil: none), on the loop, now or once the placer has answered.
// With reserve the room is placed (mapped as a placeholder, here and at
// the placer); without, only located, as for a proxied request.
func (k *Kind) whereNew(name string, reserve bool, done func(m *monolith)) {
	node, ok := k.placer()
	if !ok {
		done(k.pick(roomKey(name)))
		return
	}
	k.hub.Ask(node, placeTopic, appendPlaceQuestion(nil, reserve, name), func(replies []loop.Reply) {
		if len(replies) != 1 || !replies[0].Answered {
			k.c.PlacerAsks[placerUnanswered]++
			k.rateLogs.placer.log(k, "the placer replica did not answer: a new room placed by this replica alone", "placer", node, "room", name)
			done(k.pick(roomKey(name)))
			return
		}
		if m := k.byID[string(replies[0].Data)]; m != nil {
			k.c.PlacerAsks[placedByPlacer]++
			done(m)
			return
		}
		k.c.PlacerAsks[placerUnknownLink]++
		done(k.pick(roomKey(name)))
	})
}

// placeFor answers another replica's question: the Monolith the room is
// on, or the one the strategy picks (mapped here at once as a placeholder
// when the room is being placed, so that every later answer agrees).
// Empty when no Monolith is linked here.
func (k *Kind) placeFor(_ int, question []byte) []byte {
	reserve, name, err := parsePlaceQuestion(question)
	if err != nil {
		return nil
	}
	key := roomKey(name)
	if r := k.rooms[key]; r != nil {
		return []byte(r.m.id)
	}
	m := k.pick(key)
	if m == nil {
		return nil
	}
	if reserve && len(k.rooms) < k.cfg.MaxRooms {
		// No client here waits for it: the Monolith's gossip drops it if
		// the room never loads (monolith.gossip).
		k.mapRoom(name, m, placeholderEpoch)
		k.c.Placements++
	}
	return []byte(m.id)
}

// The place question: flags u8 (placeReserve), then the room's name as
// the client spelled it.
const placeReserve = 1 << 0

var errPlaceQuestion = errors.New("rooms: malformed placement question")

func appendPlaceQuestion(dst []byte, reserve bool, name string) []byte {
	var flags byte
	if reserve {
		flags = placeReserve
	}
	return append(append(dst, flags), name...)
}

func parsePlaceQuestion(b []byte) (reserve bool, name string, err error) {
	if len(b) < 2 || b[0]&^placeReserve != 0 || nameProblem(string(b[1:])) != "" {
		return false, "", errPlaceQuestion
	}
	return b[0]&placeReserve != 0, string(b[1:]), nil
}

// The state document's shape, as every replica renders it (stateJSON).
type stateDoc struct {
	ID        string          `json:"id"`
	Region    string          `json:"region"`
	Monoliths []stateMonolith `json:"monoliths"`
}

type stateMonolith struct {
	ID     string      `json:"id"`
	Region string      `json:"region"`
	Rooms  []stateRoom `json:"rooms"`
}

type stateRoom struct {
	Name    string            `json:"name"`
	Clients []json.RawMessage `json:"clients"`
}

// mergeState is the cluster's /api/state: this replica's id and region,
// every Monolith any replica links to, each room once with the clients of
// every replica. Parts that do not parse are left out.
func mergeState(parts [][]byte) []byte {
	var out stateDoc
	monoliths := map[string]int{}
	rooms := map[string]map[string]int{}
	for i, p := range parts {
		var doc stateDoc
		if json.Unmarshal(p, &doc) != nil {
			continue
		}
		if i == 0 {
			out.ID, out.Region = doc.ID, doc.Region
		}
		for _, m := range doc.Monoliths {
			mi, ok := monoliths[m.ID]
			if !ok {
				mi = len(out.Monoliths)
				monoliths[m.ID] = mi
				rooms[m.ID] = map[string]int{}
				out.Monoliths = append(out.Monoliths, stateMonolith{ID: m.ID, Region: m.Region, Rooms: []stateRoom{}})
			}
			om := &out.Monoliths[mi]
			for _, r := range m.Rooms {
				ri, ok := rooms[m.ID][r.Name]
				if !ok {
					ri = len(om.Rooms)
					rooms[m.ID][r.Name] = ri
					om.Rooms = append(om.Rooms, stateRoom{Name: r.Name, Clients: []json.RawMessage{}})
				}
				om.Rooms[ri].Clients = append(om.Rooms[ri].Clients, r.Clients...)
			}
		}
	}
	if out.Monoliths == nil {
		out.Monoliths = []stateMonolith{}
	}
	b, _ := json.Marshal(out)
	return b
}

// mergeBalancing is the cluster's /api/balancing: every replica's dump,
// this one's first.
func mergeBalancing(parts [][]byte) []byte {
	return bytes.Join(parts, []byte("\n"))
}

// replicaLine names the replica in its /api/balancing dump, in a cluster.
func (k *Kind) replicaLine() string {
	if !k.hub.Clustered() {
		return ""
	}
	return ", replica node " + strconv.Itoa(k.hub.Node())
}
