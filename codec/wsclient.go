package codec

import (
	"encoding/binary"

	"github.com/gobwas/ws"
)

// Client-side framing (RFC 6455 §5.3): every frame a client sends is masked
// with a key of its own, which the caller draws from a strong source.

// MaskedFrameHeaderLen is the size of a masked client frame header for a
// payload of n bytes.
func MaskedFrameHeaderLen(n int) int { return FrameHeaderLen(n) + 4 }

// AppendMaskedFrameHeader appends the header of a final, masked
// (client-to-server) frame carrying n bytes of payload. The payload that
// follows must be masked with the same key: MaskFrame does it in place.
func AppendMaskedFrameHeader(dst []byte, op ws.OpCode, n int, mask [4]byte) []byte {
	start := len(dst)
	dst = AppendFrameHeader(dst, op, n)
	dst[start+1] |= 0x80
	return append(dst, mask[:]...)
}

// AppendMaskedFrame appends a complete masked client frame.
func AppendMaskedFrame(dst []byte, op ws.OpCode, payload []byte, mask [4]byte) []byte {
	dst = AppendMaskedFrameHeader(dst, op, len(payload), mask)
	start := len(dst)
	dst = append(dst, payload...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

// AppendMaskedCloseFrame appends a masked close frame with a status code and
// a short reason.
func AppendMaskedCloseFrame(dst []byte, code ws.StatusCode, reason string, mask [4]byte) []byte {
	if len(reason) > ws.MaxControlFramePayloadSize-2 {
		reason = reason[:ws.MaxControlFramePayloadSize-2]
	}
	var payload [ws.MaxControlFramePayloadSize]byte
	binary.BigEndian.PutUint16(payload[:], uint16(code))
	n := 2 + copy(payload[2:], reason)
	return AppendMaskedFrame(dst, ws.OpClose, payload[:n], mask)
}

// MaskFrame masks, in place, the payload of one complete frame that starts
// with a header written by AppendMaskedFrameHeader. A frame that is not
// masked, or is cut short, is left alone.
func MaskFrame(frame []byte) {
	h, n, err := ParseFrameHeader(frame, ws.StateServerSide)
	if err != nil || n == 0 || !h.Masked || int64(len(frame)-n) != h.Length {
		return
	}
	ws.Cipher(frame[n:], h.Mask, 0)
}
