package codec

import (
	"encoding/binary"
	"errors"

	"github.com/gobwas/ws"
)

// MaxFrameHeaderLen is the longest WebSocket frame header (64-bit length and mask).
const MaxFrameHeaderLen = ws.MaxHeaderSize

// ErrFrameTooLarge means a frame announced more payload than the caller allows.
var ErrFrameTooLarge = errors.New("websocket: frame exceeds the size limit")

// ParseFrameHeader decodes the WebSocket frame header at the start of b. It
// returns n == 0 with no error when b does not yet hold the whole header.
// Header rules of RFC 6455 are checked with gobwas/ws's CheckHeader, so a
// returned ws.ProtocolError maps to close code 1002.
func ParseFrameHeader(b []byte, state ws.State) (h ws.Header, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n = 2
	switch l := b[1] & 0x7f; l {
	case 126:
		if len(b) < n+2 {
			return h, 0, nil
		}
		h.Length = int64(binary.BigEndian.Uint16(b[n:]))
		n += 2
	case 127:
		if len(b) < n+8 {
			return h, 0, nil
		}
		u := binary.BigEndian.Uint64(b[n:])
		if u > 1<<62 {
			return h, 0, ErrFrameTooLarge
		}
		h.Length = int64(u)
		n += 8
	default:
		h.Length = int64(l)
	}
	if h.Masked {
		if len(b) < n+4 {
			return h, 0, nil
		}
		copy(h.Mask[:], b[n:n+4])
		n += 4
	}
	if err := ws.CheckHeader(h, state); err != nil {
		return h, 0, err
	}
	return h, n, nil
}

// FrameHeaderLen is the size of an unmasked server frame header for a payload of n bytes.
func FrameHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n <= 0xffff:
		return 4
	default:
		return 10
	}
}

// AppendFrameHeader appends the header of a final, unmasked (server-to-client)
// frame carrying n bytes of payload.
func AppendFrameHeader(dst []byte, op ws.OpCode, n int) []byte {
	dst = append(dst, 0x80|byte(op))
	switch {
	case n < 126:
		return append(dst, byte(n))
	case n <= 0xffff:
		dst = append(dst, 126)
		return binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 127)
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
}

// AppendFrame appends a complete unmasked server frame.
func AppendFrame(dst []byte, op ws.OpCode, payload []byte) []byte {
	return append(AppendFrameHeader(dst, op, len(payload)), payload...)
}

// AppendCloseFrame appends a close frame with a status code and a short reason.
func AppendCloseFrame(dst []byte, code ws.StatusCode, reason string) []byte {
	if len(reason) > ws.MaxControlFramePayloadSize-2 {
		reason = reason[:ws.MaxControlFramePayloadSize-2]
	}
	dst = AppendFrameHeader(dst, ws.OpClose, 2+len(reason))
	dst = binary.BigEndian.AppendUint16(dst, uint16(code))
	return append(dst, reason...)
}

// CloseCodeFor maps a frame-level protocol violation to the close code RFC
// 6455 prescribes for it.
func CloseCodeFor(err error) ws.StatusCode {
	switch {
	case errors.Is(err, ErrFrameTooLarge):
		return ws.StatusMessageTooBig
	case errors.Is(err, ws.ErrProtocolInvalidUTF8):
		return ws.StatusInvalidFramePayloadData
	default:
		return ws.StatusProtocolError
	}
}
