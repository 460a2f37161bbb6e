package relay

import (
	"strings"
	"testing"
)

func TestParseTopic(t *testing.T) {
	for _, c := range []struct {
		name          string
		kind, channel string
		err           error
	}{
		{name: "pend00-data"},
		{name: "spinner/video"},
		{name: "a:b:c", kind: "a", channel: "b:c"},
		{name: "dispatch:tcp:6001", kind: "dispatch", channel: "tcp:6001"},
		{name: "groups:tcp:kitchen", kind: "groups", channel: "tcp:kitchen"},
		{name: "Upper:case"},       // not a kind name: a topic of its own
		{name: ":x"}, {name: "x:"}, // likewise
		{name: "", err: ErrTopicEmpty},
		{name: strings.Repeat("a", MaxTopicLen+1), err: ErrTopicLong},
		{name: "a b", err: ErrTopicInvalid},
		{name: "a?b", err: ErrTopicInvalid},
		{name: "a#b", err: ErrTopicInvalid},
		{name: "caf\u00e9", err: ErrTopicInvalid},
		{name: "tab\t", err: ErrTopicInvalid},
	} {
		got, err := ParseTopic(c.name)
		if err != c.err {
			t.Errorf("ParseTopic(%q): error %v, want %v", c.name, err, c.err)
			continue
		}
		if err == nil && (got.Name != c.name || got.Kind != c.kind || got.Channel != c.channel || got.Watches() != (c.kind != "")) {
			t.Errorf("ParseTopic(%q) = %+v, want kind %q channel %q", c.name, got, c.kind, c.channel)
		}
	}
}

func FuzzParseTopic(f *testing.F) {
	for _, s := range []string{"pend00-data", "dispatch:tcp:6001", "", "a b", ":", "a:", "x:y:z", "\x00", "%2F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := ParseTopic(s)
		if err != nil {
			return
		}
		if tp.Name != s || len(s) > MaxTopicLen || strings.ContainsAny(s, " ?#") {
			t.Fatalf("ParseTopic(%q) accepted it as %+v", s, tp)
		}
		if tp.Watches() && tp.Kind+":"+tp.Channel != s {
			t.Fatalf("ParseTopic(%q) split it as %q + %q", s, tp.Kind, tp.Channel)
		}
	})
}

func TestBearerToken(t *testing.T) {
	for in, want := range map[string]string{
		"abc.def.ghi":          "abc.def.ghi",
		"Bearer abc.def.ghi":   "abc.def.ghi",
		"bearer  abc.def.ghi ": "abc.def.ghi",
		"  abc ":               "abc",
		"":                     "",
		"Bearer":               "Bearer",
	} {
		if got := BearerToken(in); got != want {
			t.Errorf("BearerToken(%q) = %q, want %q", in, got, want)
		}
	}
}
