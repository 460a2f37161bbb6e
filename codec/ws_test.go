package codec

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

func maskedFrame(op ws.OpCode, fin bool, payload []byte) []byte {
	var b bytes.Buffer
	f := ws.MaskFrameInPlaceWith(ws.NewFrame(op, fin, append([]byte(nil), payload...)), [4]byte{1, 2, 3, 4})
	if err := ws.WriteFrame(&b, f); err != nil {
		panic(err)
	}
	return b.Bytes()
}

func TestParseFrameHeaderLengths(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 1 << 20} {
		frame := maskedFrame(ws.OpBinary, true, make([]byte, n))
		h, hn, err := ParseFrameHeader(frame, ws.StateServerSide)
		if err != nil || hn == 0 {
			t.Fatalf("len %d: hn %d err %v", n, hn, err)
		}
		if h.Length != int64(n) || !h.Fin || !h.Masked || h.OpCode != ws.OpBinary || hn+n != len(frame) {
			t.Fatalf("len %d: header %+v hn %d", n, h, hn)
		}
		// Every strict prefix of the header is "not yet".
		for i := 0; i < hn; i++ {
			if _, got, err := ParseFrameHeader(frame[:i], ws.StateServerSide); got != 0 || err != nil {
				t.Fatalf("len %d prefix %d: hn %d err %v", n, i, got, err)
			}
		}
	}
}

func TestParseFrameHeaderProtocolErrors(t *testing.T) {
	unmasked := AppendFrame(nil, ws.OpBinary, []byte("x"))
	rsv := maskedFrame(ws.OpBinary, true, []byte("x"))
	rsv[0] |= 0x40
	badOp := maskedFrame(ws.OpBinary, true, []byte("x"))
	badOp[0] = badOp[0]&0xf0 | 0x3
	bigPing := maskedFrame(ws.OpPing, true, make([]byte, 126))
	fragPing := maskedFrame(ws.OpPing, false, nil)
	cont := maskedFrame(ws.OpContinuation, true, []byte("x"))
	huge := []byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}
	for name, frame := range map[string][]byte{
		"unmasked": unmasked, "reserved bits": rsv, "reserved opcode": badOp,
		"control too long": bigPing, "fragmented control": fragPing, "unexpected continuation": cont,
		"64-bit length": huge,
	} {
		_, _, err := ParseFrameHeader(frame, ws.StateServerSide)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		want := ws.StatusProtocolError
		if name == "64-bit length" {
			want = ws.StatusMessageTooBig
		}
		if got := CloseCodeFor(err); got != want {
			t.Errorf("%s: close code %d, want %d", name, got, want)
		}
	}
	// A new data frame while a fragmented message is open is an error too.
	if _, _, err := ParseFrameHeader(maskedFrame(ws.OpBinary, true, nil), ws.StateServerSide|ws.StateFragmented); err == nil {
		t.Error("data frame inside a fragmented message accepted")
	}
}

func TestServerFramesRoundTripThroughGobwas(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		payload := bytes.Repeat([]byte{7}, n)
		frame := AppendFrame(nil, ws.OpBinary, payload)
		if len(frame) != FrameHeaderLen(n)+n {
			t.Fatalf("len %d: frame is %d bytes", n, len(frame))
		}
		got, err := ws.ReadFrame(bytes.NewReader(frame))
		if err != nil || got.Header.Masked || !got.Header.Fin || !bytes.Equal(got.Payload, payload) {
			t.Fatalf("len %d: %+v %v", n, got.Header, err)
		}
	}
	closeFrame := AppendCloseFrame(nil, ws.StatusPolicyViolation, string(bytes.Repeat([]byte("r"), 300)))
	got, err := ws.ReadFrame(bytes.NewReader(closeFrame))
	if err != nil {
		t.Fatal(err)
	}
	code, _ := ws.ParseCloseFrameData(got.Payload)
	if code != ws.StatusPolicyViolation || len(got.Payload) > ws.MaxControlFramePayloadSize {
		t.Fatalf("close frame: code %d, %d bytes", code, len(got.Payload))
	}
}

func FuzzParseFrameHeader(f *testing.F) {
	f.Add(maskedFrame(ws.OpBinary, true, []byte("hello")), false)
	f.Add(maskedFrame(ws.OpContinuation, false, make([]byte, 300)), true)
	f.Add(maskedFrame(ws.OpClose, true, []byte{3, 232}), false)
	f.Add([]byte{0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0}, false)
	f.Fuzz(func(t *testing.T, b []byte, fragmented bool) {
		state := ws.StateServerSide
		if fragmented {
			state = state.Set(ws.StateFragmented)
		}
		h, hn, err := ParseFrameHeader(b, state)
		if err != nil || hn == 0 {
			return
		}
		if hn > len(b) || hn > MaxFrameHeaderLen || h.Length < 0 || !h.Masked {
			t.Fatalf("accepted header %+v with hn %d from % x", h, hn, b)
		}
		// The header re-encodes to exactly the bytes it was parsed from,
		// unless the sender used a longer length encoding than needed.
		var out bytes.Buffer
		if err := ws.WriteHeader(&out, h); err != nil {
			t.Fatal(err)
		}
		if out.Len() == hn && !bytes.Equal(out.Bytes(), b[:hn]) {
			t.Fatalf("re-encoded % x, parsed from % x", out.Bytes(), b[:hn])
		}
	})
}
