// Package codec holds the wire formats spoken at the edges of the loop: the
// dispatch binary message, server-side WebSocket framing and the HTTP request
// head. Every parser works in place on the caller's bytes and every encoder
// appends to a caller-owned slice, so the hot path allocates nothing.
package codec

import (
	"encoding/binary"
	"errors"
)

// MsgType is the first byte of a dispatch message.
type MsgType uint8

// Message types, numbered as in the PlaceOS dispatch protocol.
const (
	Opened   MsgType = 0
	Closed   MsgType = 1
	Received MsgType = 2
	Write    MsgType = 3
	Close    MsgType = 4
)

func (t MsgType) String() string {
	switch t {
	case Opened:
		return "OPENED"
	case Closed:
		return "CLOSED"
	case Received:
		return "RECEIVED"
	case Write:
		return "WRITE"
	case Close:
		return "CLOSE"
	}
	return "UNKNOWN"
}

// Message is one decoded dispatch message. IP and Data alias the parsed
// buffer: they are valid only as long as that buffer is.
type Message struct {
	Type MsgType
	IP   []byte
	ID   uint64 // TCP client id, or UDP port
	Data []byte
}

// Errors returned by ParseMessage; each means the peer sent a malformed message.
var (
	ErrEmptyMessage   = errors.New("dispatch: empty message")
	ErrUnknownType    = errors.New("dispatch: unknown message type")
	ErrNoIPTerminator = errors.New("dispatch: ip address not NUL-terminated")
	ErrTruncated      = errors.New("dispatch: message truncated")
)

// fixedLen is the size of a message without its ip text and data: the type
// byte, the ip's NUL terminator, id_or_port and data_size.
const fixedLen = 1 + 1 + 8 + 4

// maxIPText bounds the ip field a driver may send; the longest textual IPv6
// address with a zone is well under it.
const maxIPText = 64

// HeaderLen is the length of a message header carrying an ip text of ipLen bytes.
func HeaderLen(ipLen int) int { return fixedLen + ipLen }

// ParseMessage decodes b in place. Trailing bytes after data are ignored, as
// the original service ignores them.
func ParseMessage(b []byte) (Message, error) {
	if len(b) == 0 {
		return Message{}, ErrEmptyMessage
	}
	t := MsgType(b[0])
	if t > Close {
		return Message{}, ErrUnknownType
	}
	rest := b[1:]
	limit := min(len(rest), maxIPText+1)
	nul := -1
	for i := 0; i < limit; i++ {
		if rest[i] == 0 {
			nul = i
			break
		}
	}
	if nul < 0 {
		return Message{}, ErrNoIPTerminator
	}
	ip := rest[:nul]
	rest = rest[nul+1:]
	if len(rest) < 12 {
		return Message{}, ErrTruncated
	}
	id := binary.BigEndian.Uint64(rest)
	size := binary.BigEndian.Uint32(rest[8:])
	rest = rest[12:]
	if uint64(size) > uint64(len(rest)) {
		return Message{}, ErrTruncated
	}
	return Message{Type: t, IP: ip, ID: id, Data: rest[:size]}, nil
}

// AppendHeader appends a message header announcing dataLen bytes of data;
// the caller appends (or writes alongside) the data itself.
func AppendHeader(dst []byte, t MsgType, ip []byte, id uint64, dataLen int) []byte {
	dst = append(dst, byte(t))
	dst = append(dst, ip...)
	dst = append(dst, 0)
	dst = binary.BigEndian.AppendUint64(dst, id)
	return binary.BigEndian.AppendUint32(dst, uint32(dataLen))
}

// AppendMessage appends a complete message.
func AppendMessage(dst []byte, t MsgType, ip []byte, id uint64, data []byte) []byte {
	dst = AppendHeader(dst, t, ip, id, len(data))
	return append(dst, data...)
}
