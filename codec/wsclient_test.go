package codec

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

// Masked frames are what a server reads: gobwas/ws unmasks them back to
// the payload, whatever its length.
func TestMaskedFramesReadBackAsTheirPayload(t *testing.T) {
	mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	for _, n := range []int{0, 1, 125, 126, 65535, 65536} {
		payload := bytes.Repeat([]byte("abcdefg"), n/7+1)[:n]
		for name, frame := range map[string][]byte{
			"whole": AppendMaskedFrame(nil, ws.OpText, payload, mask),
			"header then MaskFrame": func() []byte {
				b := AppendMaskedFrameHeader([]byte("junk"), ws.OpText, n, mask)
				b = append(b, payload...)
				MaskFrame(b[4:])
				return b[4:]
			}(),
		} {
			if len(frame) != MaskedFrameHeaderLen(n)+n {
				t.Fatalf("%s, %d bytes: frame of %d bytes", name, n, len(frame))
			}
			f, err := ws.ReadFrame(bytes.NewReader(frame))
			if err != nil {
				t.Fatalf("%s, %d bytes: %v", name, n, err)
			}
			if !f.Header.Masked || f.Header.Mask != mask || !f.Header.Fin || f.Header.OpCode != ws.OpText {
				t.Fatalf("%s, %d bytes: header %+v", name, n, f.Header)
			}
			ws.Cipher(f.Payload, f.Header.Mask, 0)
			if !bytes.Equal(f.Payload, payload) {
				t.Fatalf("%s, %d bytes: payload differs", name, n)
			}
		}
	}
}

func TestMaskedCloseFrame(t *testing.T) {
	frame := AppendMaskedCloseFrame(nil, 4004, "did not send auth token", [4]byte{1, 2, 3, 4})
	f, err := ws.ReadFrame(bytes.NewReader(frame))
	if err != nil {
		t.Fatal(err)
	}
	ws.Cipher(f.Payload, f.Header.Mask, 0)
	code, reason := ws.ParseCloseFrameData(f.Payload)
	if f.Header.OpCode != ws.OpClose || code != 4004 || reason != "did not send auth token" {
		t.Fatalf("close frame: %v %d %q", f.Header.OpCode, code, reason)
	}
}

// MaskFrame leaves alone what it cannot have written.
func TestMaskFrameIgnoresOtherFrames(t *testing.T) {
	unmasked := AppendFrame(nil, ws.OpText, []byte("hello"))
	short := AppendMaskedFrame(nil, ws.OpText, []byte("hello"), [4]byte{9, 9, 9, 9})
	short = short[:len(short)-1]
	for name, frame := range map[string][]byte{"unmasked": unmasked, "cut short": short} {
		before := append([]byte(nil), frame...)
		MaskFrame(frame)
		if !bytes.Equal(frame, before) {
			t.Errorf("%s: changed", name)
		}
	}
}
