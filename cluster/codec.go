package cluster

// The bus message codec. One NATS message is a header and frames:
//
//	header: 'D' 1 | node u16 | instance u64                (12 bytes)
//	frame:  type u8 | fields (big-endian integers, length-prefixed bytes)
//
// A Channel frame names the channel the frames after it are about, so that
// a batch of events of one channel names it once. Lengths are checked
// against the message: a frame that does not fit is an error, never a read
// past the end. Everything a Frame holds points into the message.

import (
	"encoding/binary"
	"errors"
)

const (
	magic     = 'D'
	version   = 1
	headerLen = 12
	// maxMessage bounds the NATS messages the bus batches frames into (a
	// single larger frame goes alone; NATS accepts 1 MiB by default). With
	// inQueue it bounds what waits for the loop on the way in.
	maxMessage = 64 << 10
)

// FrameType is what a frame says.
type FrameType uint8

const (
	FrameChannel    FrameType = iota + 1 // kind, name: the channel of the frames after it
	FrameEvent                           // a member's event: opened, data, closed
	FrameWrite                           // a payload for a member held by the receiver
	FrameClose                           // close a member held by the receiver
	FrameBroadcast                       // an upstream's payload for every member
	FrameSnapBegin                       // the members the sender holds in the channel follow
	FrameSnapMember                      // one of them
	FrameSnapEnd                         // that was all of them
	FrameInterest                        // what the sender wants of the channel
	FrameResetBegin                      // the sender's whole interest follows
	FrameResetEnd                        // that was all of it
	FrameHeartbeat                       // the sender is alive
	FrameHello                           // the sender (re)joined: send it your interest
	FrameBye                             // the sender is leaving
	FrameQuery                           // answer topic to the sender (id)
	FrameAnswer                          // an answer to query id (a Query's or an Ask's)
	FrameAsk                             // a kind's question on topic to the receiver (id)
	FrameTell                            // a kind's one-way message on topic
	frameTypes
)

// Frame flags.
const (
	FlagText      = 1 << 0 // a WebSocket text payload
	FlagTransient = 1 << 1 // a transient member (a datagram's source)

	InterestUpstreams = 1 << 0 // the sender has upstreams: Filter is their union
	InterestMembers   = 1 << 1 // the sender has members that hear each other's payload
)

// Header says who sent a message.
type Header struct {
	Node     uint16
	Instance uint64 // random per process: a restarted replica is a new one
}

// Frame is one decoded frame; which fields are set depends on Type.
type Frame struct {
	Type       FrameType
	Kind, Name []byte // Channel
	Event      uint8  // Event: loop.EventType
	Flags      uint8
	ID         uint64 // member id; query id
	IP, Label  []byte
	Topic      []byte // Ask, Tell: the kind's topic
	Data       []byte // payload; Interest: the filter; Query: the topic; Ask: the question
}

// ErrMalformed is any message this codec cannot read.
var ErrMalformed = errors.New("cluster: malformed bus message")

// AppendHeader starts a message.
func AppendHeader(dst []byte, h Header) []byte {
	dst = append(dst, magic, version)
	dst = binary.BigEndian.AppendUint16(dst, h.Node)
	return binary.BigEndian.AppendUint64(dst, h.Instance)
}

func appendBytes8(dst, b []byte) []byte {
	if len(b) > 255 {
		b = b[:255]
	}
	return append(append(dst, byte(len(b))), b...)
}

func appendBytes16(dst, b []byte) []byte {
	if len(b) > 65535 {
		b = b[:65535]
	}
	return append(binary.BigEndian.AppendUint16(dst, uint16(len(b))), b...)
}

func appendBytes32(dst, b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(dst, uint32(len(b))), b...)
}

// AppendChannel appends a Channel frame.
func AppendChannel(dst []byte, kind, name string) []byte {
	dst = append(dst, byte(FrameChannel))
	dst = appendBytes8(dst, []byte(kind))
	return appendBytes16(dst, []byte(name))
}

// AppendEvent appends an Event frame.
func AppendEvent(dst []byte, event, flags uint8, id uint64, ip, label, data []byte) []byte {
	dst = append(dst, byte(FrameEvent), event, flags)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = appendBytes8(dst, ip)
	dst = appendBytes8(dst, label)
	return appendBytes32(dst, data)
}

// AppendWrite appends a Write frame.
func AppendWrite(dst []byte, flags uint8, id uint64, ip, data []byte) []byte {
	dst = append(dst, byte(FrameWrite), flags)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = appendBytes8(dst, ip)
	return appendBytes32(dst, data)
}

// AppendClose appends a Close frame.
func AppendClose(dst []byte, id uint64, ip []byte) []byte {
	dst = append(dst, byte(FrameClose))
	dst = binary.BigEndian.AppendUint64(dst, id)
	return appendBytes8(dst, ip)
}

// AppendBroadcast appends a Broadcast frame.
func AppendBroadcast(dst []byte, flags uint8, data []byte) []byte {
	dst = append(dst, byte(FrameBroadcast), flags)
	return appendBytes32(dst, data)
}

// AppendSnapMember appends a SnapMember frame.
func AppendSnapMember(dst []byte, flags uint8, id uint64, ip, label []byte) []byte {
	dst = append(dst, byte(FrameSnapMember), flags)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = appendBytes8(dst, ip)
	return appendBytes8(dst, label)
}

// AppendInterest appends an Interest frame: flags and the filter text.
func AppendInterest(dst []byte, flags uint8, filter []byte) []byte {
	dst = append(dst, byte(FrameInterest), flags)
	return appendBytes32(dst, filter)
}

// AppendQuery appends a Query frame.
func AppendQuery(dst []byte, id uint64, topic string) []byte {
	dst = append(dst, byte(FrameQuery))
	dst = binary.BigEndian.AppendUint64(dst, id)
	return appendBytes8(dst, []byte(topic))
}

// AppendAnswer appends an Answer frame.
func AppendAnswer(dst []byte, id uint64, data []byte) []byte {
	dst = append(dst, byte(FrameAnswer))
	dst = binary.BigEndian.AppendUint64(dst, id)
	return appendBytes32(dst, data)
}

// AppendAsk appends an Ask frame: question id, topic and question.
func AppendAsk(dst []byte, id uint64, topic string, question []byte) []byte {
	dst = append(dst, byte(FrameAsk))
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = appendBytes8(dst, []byte(topic))
	return appendBytes32(dst, question)
}

// AppendTell appends a Tell frame: topic and data.
func AppendTell(dst []byte, topic string, data []byte) []byte {
	dst = append(dst, byte(FrameTell))
	dst = appendBytes8(dst, []byte(topic))
	return appendBytes32(dst, data)
}

// AppendSimple appends a frame without fields: SnapBegin, SnapEnd,
// ResetBegin, ResetEnd, Heartbeat, Hello, Bye.
func AppendSimple(dst []byte, t FrameType) []byte { return append(dst, byte(t)) }

// Reader reads the frames of one message.
type Reader struct {
	Header
	rest []byte
}

// NewReader checks the header of msg.
func NewReader(msg []byte) (Reader, error) {
	if len(msg) < headerLen || msg[0] != magic || msg[1] != version {
		return Reader{}, ErrMalformed
	}
	return Reader{
		Header: Header{Node: binary.BigEndian.Uint16(msg[2:]), Instance: binary.BigEndian.Uint64(msg[4:])},
		rest:   msg[headerLen:],
	}, nil
}

// Next decodes the next frame into f; false at the end of the message. A
// malformed frame ends the reading with ErrMalformed.
func (r *Reader) Next(f *Frame) (bool, error) {
	if len(r.rest) == 0 {
		return false, nil
	}
	*f = Frame{Type: FrameType(r.rest[0])}
	d := decoder{b: r.rest[1:]}
	switch f.Type {
	case FrameChannel:
		f.Kind = d.bytes8()
		f.Name = d.bytes16()
	case FrameEvent:
		f.Event = d.u8()
		f.Flags = d.u8()
		f.ID = d.u64()
		f.IP = d.bytes8()
		f.Label = d.bytes8()
		f.Data = d.bytes32()
		if f.Event > 2 {
			d.bad = true
		}
	case FrameWrite:
		f.Flags = d.u8()
		f.ID = d.u64()
		f.IP = d.bytes8()
		f.Data = d.bytes32()
	case FrameClose:
		f.ID = d.u64()
		f.IP = d.bytes8()
	case FrameBroadcast:
		f.Flags = d.u8()
		f.Data = d.bytes32()
	case FrameSnapMember:
		f.Flags = d.u8()
		f.ID = d.u64()
		f.IP = d.bytes8()
		f.Label = d.bytes8()
	case FrameInterest:
		f.Flags = d.u8()
		f.Data = d.bytes32()
	case FrameQuery:
		f.ID = d.u64()
		f.Data = d.bytes8()
	case FrameAnswer:
		f.ID = d.u64()
		f.Data = d.bytes32()
	case FrameAsk:
		f.ID = d.u64()
		f.Topic = d.bytes8()
		f.Data = d.bytes32()
	case FrameTell:
		f.Topic = d.bytes8()
		f.Data = d.bytes32()
	case FrameSnapBegin, FrameSnapEnd, FrameResetBegin, FrameResetEnd, FrameHeartbeat, FrameHello, FrameBye:
	default:
		d.bad = true
	}
	if d.bad {
		r.rest = nil
		return false, ErrMalformed
	}
	r.rest = d.b
	return true, nil
}

type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) take(n int) []byte {
	if d.bad || n < 0 || n > len(d.b) {
		d.bad = true
		return nil
	}
	x := d.b[:n:n]
	d.b = d.b[n:]
	return x
}

func (d *decoder) u8() uint8 {
	if x := d.take(1); x != nil {
		return x[0]
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if x := d.take(8); x != nil {
		return binary.BigEndian.Uint64(x)
	}
	return 0
}

func (d *decoder) bytes8() []byte { return d.take(int(d.u8())) }

func (d *decoder) bytes16() []byte {
	if x := d.take(2); x != nil {
		return d.take(int(binary.BigEndian.Uint16(x)))
	}
	return nil
}

func (d *decoder) bytes32() []byte {
	if x := d.take(4); x != nil {
		n := binary.BigEndian.Uint32(x)
		if uint64(n) > uint64(len(d.b)) {
			d.bad = true
			return nil
		}
		return d.take(int(n))
	}
	return nil
}
