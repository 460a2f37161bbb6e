package rooms

import (
	"errors"
	"fmt"
	"math"

	"github.com/placeos-gnet/dispatch/loop"
)

// The wire protocol as OpenTogetherTube's balancer speaks it: JSON objects,
// one per text frame. Clients send {"action":"auth","token":…} first and
// then objects of their own; the balancer and the Monolith exchange
// adjacently tagged envelopes {"type":…,"payload":{…}}. Parsers here return
// raw spans of their input, valid only while it is.

// Limits on what the protocol carries.
const (
	maxNameBytes     = 128  // a room name
	maxTokenBytes    = 4096 // a client's auth token
	maxIDBytes       = 64   // a Monolith id
	maxRegionBytes   = 64   // a region
	maxMetadataBytes = 8192 // a room's metadata kept for the room list
	maxAuthBytes     = 8192 // a client's first message
)

// authProblem is why a client's first message is refused: the close code
// the original balancer sends for it and a reason.
type authProblem struct {
	code   uint16
	reason string
}

var (
	authNotJSON   = &authProblem{1002, "failed to deserialize message"}
	authNotAuth   = &authProblem{4004, "did not send auth token"}
	authBadToken  = &authProblem{1002, "failed to deserialize message"}
	authTooLarge  = &authProblem{1009, "auth message too large"}
	authNotText   = &authProblem{1003, "auth message must be a text frame"}
	authLongToken = &authProblem{1008, "auth token too long"}
)

// parseAuth reads a client's first message, {"action":"auth","token":"…"},
// and returns the token as a raw JSON string (quotes included), ready to be
// sent on in join as it arrived.
func parseAuth(b []byte) (token []byte, problem *authProblem) {
	if len(b) > maxAuthBytes {
		return nil, authTooLarge
	}
	var action, tok []byte
	var actionSet bool
	err := eachMember(b, func(key, value []byte) error {
		switch {
		case keyIs(key, "action"):
			actionSet = true
			action, _ = bytesOf(value) // nil: not a string
		case keyIs(key, "token"):
			tok = value
		}
		return nil
	})
	switch {
	case err != nil:
		return nil, authNotJSON
	case !actionSet:
		// The original deserialises into a tagged enum: no tag does not parse.
		return nil, authNotJSON
	case string(action) != "auth":
		return nil, authNotAuth
	case len(tok) < 2 || tok[0] != '"':
		return nil, authBadToken
	case len(tok) > maxTokenBytes+2:
		return nil, authLongToken
	}
	return tok, nil
}

// envelope is a Monolith message: its type and its raw payload.
type envelope struct {
	typ     []byte
	payload []byte
}

var errNoType = errors.New(`no "type"`)

func parseEnvelope(b []byte) (envelope, error) {
	var e envelope
	var typeRaw []byte
	err := eachMember(b, func(key, value []byte) error {
		switch {
		case keyIs(key, "type"):
			typeRaw = value
		case keyIs(key, "payload"):
			e.payload = value
		}
		return nil
	})
	if err != nil {
		return e, err
	}
	if typeRaw == nil {
		return e, errNoType
	}
	if e.typ, err = bytesOf(typeRaw); err != nil {
		return e, fmt.Errorf(`"type": %w`, err)
	}
	return e, nil
}

// monolithInit is the Monolith's init payload.
type monolithInit struct {
	port   int
	region string
	id     string
	token  []byte // raw JSON string, nil when absent
}

func parseInit(payload []byte) (monolithInit, error) {
	var in monolithInit
	var port []byte
	var region, id []byte
	err := eachMember(payload, func(key, value []byte) error {
		switch {
		case keyIs(key, "port"):
			port = value
		case keyIs(key, "region"):
			region = value
		case keyIs(key, "id"):
			id = value
		case keyIs(key, "token"):
			in.token = value
		}
		return nil
	})
	if err != nil {
		return in, err
	}
	p, err := uintOf(port, math.MaxUint16)
	if err != nil || p == 0 {
		return in, errors.New(`"port" must be a port number`)
	}
	in.port = int(p)
	if in.id, err = stringOf(id); err != nil || in.id == "" || len(in.id) > maxIDBytes {
		return in, fmt.Errorf(`"id" must be a string of 1-%d bytes`, maxIDBytes)
	}
	if region != nil && !isNull(region) {
		if in.region, err = stringOf(region); err != nil || len(in.region) > maxRegionBytes {
			return in, fmt.Errorf(`"region" must be a string of at most %d bytes`, maxRegionBytes)
		}
	}
	if in.token != nil && (len(in.token) < 2 || in.token[0] != '"') {
		return in, errors.New(`"token" must be a string`)
	}
	return in, nil
}

// roomInfo is a room a Monolith reports (loaded, or an entry of gossip):
// its metadata as sent, and what the balancer reads of it.
type roomInfo struct {
	name    string
	epoch   uint32
	meta    []byte // the raw RoomMetadata object
	public  bool
	users   float64
	metaBig bool // metadata past maxMetadataBytes: not kept
}

// parseLoaded reads {"room": RoomMetadata, "load_epoch": u32}.
func parseLoaded(payload []byte) (roomInfo, error) {
	var ri roomInfo
	var epoch []byte
	err := eachMember(payload, func(key, value []byte) error {
		switch {
		case keyIs(key, "room"):
			ri.meta = value
		case keyIs(key, "load_epoch"):
			epoch = value
		}
		return nil
	})
	if err != nil {
		return ri, err
	}
	e, err := uintOf(epoch, math.MaxUint32)
	if err != nil {
		return ri, errors.New(`"load_epoch" must be an unsigned 32-bit integer`)
	}
	ri.epoch = uint32(e)
	if ri.meta == nil {
		return ri, errors.New(`no "room"`)
	}
	err = eachMember(ri.meta, func(key, value []byte) error {
		switch {
		case keyIs(key, "name"):
			ri.name, _ = stringOf(value)
		case keyIs(key, "visibility"):
			v, _ := bytesOf(value)
			ri.public = string(v) == "public"
		case keyIs(key, "users"):
			ri.users = numberOf(value)
		}
		return nil
	})
	if err != nil {
		return ri, fmt.Errorf(`"room": %w`, err)
	}
	if problem := nameProblem(ri.name); problem != "" {
		return ri, fmt.Errorf(`"room": "name": %s`, problem)
	}
	if len(ri.meta) > maxMetadataBytes {
		ri.meta, ri.metaBig = nil, true
	}
	return ri, nil
}

// numberOf reads a small non-negative count (users), 0 when it is not one.
func numberOf(raw []byte) float64 {
	n, err := uintOf(raw, 1<<53)
	if err != nil {
		return 0
	}
	return float64(n)
}

// parseGossip reads {"rooms": [{"room": RoomMetadata, "load_epoch": u32}, …]}.
func parseGossip(payload []byte, fn func(roomInfo) error) error {
	var list []byte
	err := eachMember(payload, func(key, value []byte) error {
		if keyIs(key, "rooms") {
			list = value
		}
		return nil
	})
	if err != nil {
		return err
	}
	if list == nil {
		return errors.New(`no "rooms"`)
	}
	return eachElement(list, func(entry []byte) error {
		ri, err := parseLoaded(entry)
		if err != nil {
			return fmt.Errorf(`"rooms": %w`, err)
		}
		return fn(ri)
	})
}

// parseUnloaded reads {"name": …, "reason": …}.
func parseUnloaded(payload []byte) (name string, err error) {
	var raw []byte
	err = eachMember(payload, func(key, value []byte) error {
		if keyIs(key, "name") {
			raw = value
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if name, err = stringOf(raw); err != nil {
		return "", errors.New(`"name" must be a string`)
	}
	return name, nil
}

// roomMsg is {"room": …, "client_id": …?, "payload": …}; client is nil for
// a broadcast (absent or null).
type roomMsg struct {
	room    []byte
	client  []byte
	payload []byte
}

func parseRoomMsg(b []byte) (roomMsg, error) {
	var m roomMsg
	var room, client []byte
	err := eachMember(b, func(key, value []byte) error {
		switch {
		case keyIs(key, "room"):
			room = value
		case keyIs(key, "client_id"):
			client = value
		case keyIs(key, "payload"):
			m.payload = value
		}
		return nil
	})
	if err != nil {
		return m, err
	}
	if m.room, err = bytesOf(room); err != nil {
		return m, errors.New(`"room" must be a string`)
	}
	if client != nil && !isNull(client) {
		if m.client, err = bytesOf(client); err != nil {
			return m, errors.New(`"client_id" must be a string or null`)
		}
	}
	if m.payload == nil {
		return m, errors.New(`no "payload"`)
	}
	return m, nil
}

// parseKick reads {"client_id": …, "reason": u16}.
func parseKick(payload []byte) (client []byte, code uint16, err error) {
	var rawClient, rawReason []byte
	err = eachMember(payload, func(key, value []byte) error {
		switch {
		case keyIs(key, "client_id"):
			rawClient = value
		case keyIs(key, "reason"):
			rawReason = value
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	if client, err = bytesOf(rawClient); err != nil {
		return nil, 0, errors.New(`"client_id" must be a string`)
	}
	n, err := uintOf(rawReason, math.MaxUint16)
	if err != nil {
		return nil, 0, errors.New(`"reason" must be an unsigned 16-bit integer`)
	}
	return client, uint16(n), nil
}

// nameProblem says what is wrong with a room name, or "" when nothing is.
func nameProblem(name string) string {
	switch {
	case name == "":
		return "empty room name"
	case len(name) > maxNameBytes:
		return "room name too long"
	}
	for _, r := range name {
		if r == '/' || r < 0x20 || r == 0x7f || r == '\ufffd' {
			return "room name holds a character it may not"
		}
	}
	return ""
}

// roomKey is the name rooms are compared by: ASCII letters folded to lower
// case, as the original's RoomName compares them; the spelling is kept
// apart.
func roomKey(name string) string {
	for i := 0; i < len(name); i++ {
		if c := name[i]; c >= 'A' && c <= 'Z' {
			b := []byte(name)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return name
}

// appendRoomKey appends the key of a raw name to dst, for lookups that
// must not allocate.
func appendRoomKey(dst, name []byte) []byte {
	for _, c := range name {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// Messages the balancer sends.

func appendInit(dst []byte, id, token string) []byte {
	dst = append(dst, `{"type":"init","payload":{"id":`...)
	dst = loop.AppendJSONString(dst, id)
	if token != "" {
		dst = append(dst, `,"token":`...)
		dst = loop.AppendJSONString(dst, token)
	}
	return append(dst, "}}"...)
}

// appendJoin: token is the raw JSON string the client sent.
func appendJoin(dst []byte, room string, client []byte, token []byte) []byte {
	dst = append(dst, `{"type":"join","payload":{"room":`...)
	dst = loop.AppendJSONString(dst, room)
	dst = append(dst, `,"client":`...)
	dst = append(dst, client...)
	dst = append(dst, `,"token":`...)
	dst = append(dst, token...)
	return append(dst, "}}"...)
}

func appendUnload(dst []byte, room string) []byte {
	dst = append(dst, `{"type":"unload","payload":{"room":`...)
	dst = loop.AppendJSONString(dst, room)
	return append(dst, "}}"...)
}
