package cluster

import (
	"bytes"
	"errors"
	"testing"
)

// sample appends one of every frame.
func sample() []byte {
	msg := AppendHeader(nil, Header{Node: 7, Instance: 0xfeedface})
	msg = AppendChannel(msg, "dispatch", "tcp:6001")
	msg = AppendEvent(msg, 1, FlagText, 1<<54|3, []byte("10.0.0.1"), []byte("label"), []byte("payload"))
	msg = AppendWrite(msg, 0, 42, []byte("::1"), []byte("write"))
	msg = AppendClose(msg, 43, []byte("10.0.0.2"))
	msg = AppendBroadcast(msg, FlagText, []byte("to all"))
	msg = AppendSimple(msg, FrameSnapBegin)
	msg = AppendSnapMember(msg, FlagTransient, 44, []byte("10.0.0.3"), nil)
	msg = AppendSimple(msg, FrameSnapEnd)
	msg = AppendInterest(msg, InterestUpstreams|InterestMembers, []byte("10.0.0.0/8,::1"))
	msg = AppendQuery(msg, 9, "dispatch.stats")
	msg = AppendAnswer(msg, 9, []byte(`{"a":1}`))
	msg = AppendAsk(msg, 10, "relay.redeem", []byte("code"))
	msg = AppendTell(msg, "relay.bids", []byte("verdicts"))
	for _, t := range []FrameType{FrameResetBegin, FrameResetEnd, FrameHeartbeat, FrameHello, FrameBye} {
		msg = AppendSimple(msg, t)
	}
	return msg
}

func readAll(t testing.TB, msg []byte) (Header, []Frame) {
	r, err := NewReader(msg)
	if err != nil {
		t.Fatal(err)
	}
	var frames []Frame
	for {
		var f Frame
		ok, err := r.Next(&f)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return r.Header, frames
		}
		frames = append(frames, f)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	h, frames := readAll(t, sample())
	if h != (Header{Node: 7, Instance: 0xfeedface}) {
		t.Fatalf("header %+v", h)
	}
	want := []FrameType{FrameChannel, FrameEvent, FrameWrite, FrameClose, FrameBroadcast, FrameSnapBegin,
		FrameSnapMember, FrameSnapEnd, FrameInterest, FrameQuery, FrameAnswer, FrameAsk, FrameTell,
		FrameResetBegin, FrameResetEnd, FrameHeartbeat, FrameHello, FrameBye}
	if len(frames) != len(want) {
		t.Fatalf("%d frames, want %d", len(frames), len(want))
	}
	for i, f := range frames {
		if f.Type != want[i] {
			t.Fatalf("frame %d is %d, want %d", i, f.Type, want[i])
		}
	}
	check := func(what string, got, want []byte) {
		t.Helper()
		if !bytes.Equal(got, want) {
			t.Errorf("%s: %q, want %q", what, got, want)
		}
	}
	check("kind", frames[0].Kind, []byte("dispatch"))
	check("name", frames[0].Name, []byte("tcp:6001"))
	ev := frames[1]
	if ev.Event != 1 || ev.Flags != FlagText || ev.ID != 1<<54|3 {
		t.Errorf("event %+v", ev)
	}
	check("event ip", ev.IP, []byte("10.0.0.1"))
	check("event label", ev.Label, []byte("label"))
	check("event data", ev.Data, []byte("payload"))
	check("write data", frames[2].Data, []byte("write"))
	check("close ip", frames[3].IP, []byte("10.0.0.2"))
	check("broadcast", frames[4].Data, []byte("to all"))
	if frames[6].ID != 44 || frames[6].Flags != FlagTransient {
		t.Errorf("snap member %+v", frames[6])
	}
	check("interest", frames[8].Data, []byte("10.0.0.0/8,::1"))
	if frames[8].Flags != InterestUpstreams|InterestMembers {
		t.Errorf("interest flags %d", frames[8].Flags)
	}
	check("query", frames[9].Data, []byte("dispatch.stats"))
	check("answer", frames[10].Data, []byte(`{"a":1}`))
	if frames[11].ID != 10 {
		t.Errorf("ask id %d", frames[11].ID)
	}
	check("ask topic", frames[11].Topic, []byte("relay.redeem"))
	check("ask question", frames[11].Data, []byte("code"))
	check("tell topic", frames[12].Topic, []byte("relay.bids"))
	check("tell data", frames[12].Data, []byte("verdicts"))
}

func TestCodecRefusesEveryTruncation(t *testing.T) {
	msg := sample()
	for n := range len(msg) {
		r, err := NewReader(msg[:n])
		if n < headerLen {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("a %d-byte message has no header, yet: %v", n, err)
			}
			continue
		}
		// Every prefix either ends on a frame boundary or is malformed; no
		// frame reads past the end.
		var f Frame
		for {
			ok, err := r.Next(&f)
			if err != nil || !ok {
				break
			}
		}
	}
}

func TestCodecRefusesBadHeadersAndTypes(t *testing.T) {
	for _, msg := range [][]byte{
		nil,
		[]byte("X\x01\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01"),
		[]byte("D\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01"),
	} {
		if _, err := NewReader(msg); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q: %v, want ErrMalformed", msg, err)
		}
	}
	for _, frame := range [][]byte{{0}, {byte(frameTypes)}, {byte(FrameEvent), 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}} {
		r, _ := NewReader(append(AppendHeader(nil, Header{}), frame...))
		var f Frame
		if _, err := r.Next(&f); !errors.Is(err, ErrMalformed) {
			t.Errorf("frame % x: %v, want ErrMalformed", frame, err)
		}
	}
	// A 32-bit length past the end is refused, not allocated.
	r, _ := NewReader(append(AppendHeader(nil, Header{}), byte(FrameAnswer), 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff))
	var f Frame
	if _, err := r.Next(&f); !errors.Is(err, ErrMalformed) {
		t.Errorf("oversized length: %v", err)
	}
}

func TestSubjectToken(t *testing.T) {
	for name, want := range map[string]string{
		"tcp:6001":   "tcp:6001",
		"kitchen_1":  "kitchen_1",
		"a.b":        "~612e62",
		"":           "~",
		"with space": "~77697468207370616365",
		"*":          "~2a",
	} {
		if got := subjectToken(name); got != want {
			t.Errorf("subjectToken(%q) = %q, want %q", name, got, want)
		}
	}
}

func FuzzBusMessage(f *testing.F) {
	f.Add(sample())
	f.Add(AppendSimple(AppendHeader(nil, Header{Node: 1}), FrameHeartbeat))
	f.Add([]byte("D\x01"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		r, err := NewReader(msg)
		if err != nil {
			return
		}
		var f Frame
		// Re-encoding what was read reads back the same.
		out := AppendHeader(nil, r.Header)
		for {
			ok, err := r.Next(&f)
			if err != nil || !ok {
				break
			}
			for _, b := range [][]byte{f.Kind, f.Name, f.IP, f.Label, f.Topic, f.Data} {
				if len(b) > len(msg) {
					t.Fatalf("a field longer than the message")
				}
			}
			out = reencode(out, &f)
		}
		r2, err := NewReader(out)
		if err != nil {
			t.Fatal(err)
		}
		for {
			ok, err := r2.Next(&f)
			if err != nil {
				t.Fatalf("re-encoded message unreadable: %v", err)
			}
			if !ok {
				break
			}
		}
	})
}

func reencode(dst []byte, f *Frame) []byte {
	switch f.Type {
	case FrameChannel:
		return AppendChannel(dst, string(f.Kind), string(f.Name))
	case FrameEvent:
		return AppendEvent(dst, f.Event, f.Flags, f.ID, f.IP, f.Label, f.Data)
	case FrameWrite:
		return AppendWrite(dst, f.Flags, f.ID, f.IP, f.Data)
	case FrameClose:
		return AppendClose(dst, f.ID, f.IP)
	case FrameBroadcast:
		return AppendBroadcast(dst, f.Flags, f.Data)
	case FrameSnapMember:
		return AppendSnapMember(dst, f.Flags, f.ID, f.IP, f.Label)
	case FrameInterest:
		return AppendInterest(dst, f.Flags, f.Data)
	case FrameQuery:
		return AppendQuery(dst, f.ID, string(f.Data))
	case FrameAnswer:
		return AppendAnswer(dst, f.ID, f.Data)
	case FrameAsk:
		return AppendAsk(dst, f.ID, string(f.Topic), f.Data)
	case FrameTell:
		return AppendTell(dst, string(f.Topic), f.Data)
	}
	return AppendSimple(dst, f.Type)
}
