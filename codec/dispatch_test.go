package codec

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

// The example from the wire contract: RECEIVED "testing" from 127.0.0.1, id 0.
const specReceived = "02" + "3132372e302e302e31" + "00" + "0000000000000000" + "00000007" + "74657374696e67"

func TestAppendMessageMatchesSpecExample(t *testing.T) {
	got := hex.EncodeToString(AppendMessage(nil, Received, []byte("127.0.0.1"), 0, []byte("testing")))
	if got != specReceived {
		t.Fatalf("got %s\nwant %s", got, specReceived)
	}
	opened := AppendMessage(nil, Opened, []byte("127.0.0.1"), 0, nil)
	if len(opened) != 23 || opened[0] != 0 {
		t.Fatalf("OPENED is %d bytes: % x", len(opened), opened)
	}
}

func TestParseMessage(t *testing.T) {
	raw, _ := hex.DecodeString(specReceived)
	m, err := ParseMessage(append(raw, "trailing bytes are ignored"...))
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != Received || string(m.IP) != "127.0.0.1" || m.ID != 0 || string(m.Data) != "testing" {
		t.Fatalf("unexpected %+v", m)
	}
	big := AppendMessage(nil, Write, []byte("::1"), 1<<60+5, []byte{0, 1, 2})
	m, err = ParseMessage(big)
	if err != nil || m.Type != Write || string(m.IP) != "::1" || m.ID != 1<<60+5 || !bytes.Equal(m.Data, []byte{0, 1, 2}) {
		t.Fatalf("unexpected %+v, %v", m, err)
	}
}

func TestParseMessageRejectsMalformed(t *testing.T) {
	valid := AppendMessage(nil, Write, []byte("10.0.0.1"), 7, []byte("abc"))
	cases := map[string]struct {
		in   []byte
		want error
	}{
		"empty":              {nil, ErrEmptyMessage},
		"unknown type":       {append([]byte{5}, valid[1:]...), ErrUnknownType},
		"no NUL":             {[]byte{3, '1', '2', '7'}, ErrNoIPTerminator},
		"ip text too long":   {append([]byte{3}, bytes.Repeat([]byte{'1'}, 200)...), ErrNoIPTerminator},
		"truncated id":       {valid[:len("10.0.0.1")+2+4], ErrTruncated},
		"data past the end":  {valid[:len(valid)-1], ErrTruncated},
		"size without bytes": {AppendHeader(nil, Write, []byte("1.1.1.1"), 0, 1), ErrTruncated},
	}
	for name, c := range cases {
		if _, err := ParseMessage(c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
}

func FuzzParseMessage(f *testing.F) {
	raw, _ := hex.DecodeString(specReceived)
	f.Add(raw)
	f.Add(AppendMessage(nil, Write, []byte("::ffff:10.1.2.3"), 42, []byte("hello")))
	f.Add(AppendMessage(nil, Close, []byte("127.0.0.1"), 3, nil))
	f.Add([]byte{})
	f.Add([]byte{4, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMessage(b)
		if err != nil {
			return
		}
		// Whatever parses re-encodes to a prefix of the input.
		again := AppendMessage(nil, m.Type, m.IP, m.ID, m.Data)
		if !bytes.HasPrefix(b, again) {
			t.Fatalf("re-encoding % x is not a prefix of % x", again, b)
		}
	})
}
