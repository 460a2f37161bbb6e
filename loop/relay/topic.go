package relay

import (
	"errors"
	"strings"
)

// Topic names. A topic is named in the path after "/session/", and the
// token's topic claim must equal that name. A name is 1 to MaxTopicLen
// bytes of printable ASCII without spaces, '?' or '#' (the path is
// compared decoded). A name of the form "<kind>:<channel>" whose kind part
// is lower-case letters, digits, '-' or '_' names a channel of another
// kind of this server (a dispatch port "dispatch:tcp:6001", a socket group
// "groups:tcp:kitchen"): a connection there watches that channel. Any other
// name is a relay topic of its own.

// MaxTopicLen is the longest topic name, in bytes.
const MaxTopicLen = 256

// Errors of ParseTopic.
var (
	ErrTopicEmpty   = errors.New("empty topic")
	ErrTopicLong    = errors.New("topic name too long")
	ErrTopicInvalid = errors.New("topic name holds a character other than printable ASCII without spaces, '?' or '#'")
)

// Topic is a parsed topic name.
type Topic struct {
	Name string
	// Kind and Channel are set when the name names another kind's channel.
	Kind, Channel string
}

// Watches reports whether the topic names another kind's channel.
func (t Topic) Watches() bool { return t.Kind != "" }

// ParseTopic checks a topic name and splits a channel's.
func ParseTopic(name string) (Topic, error) {
	switch {
	case name == "":
		return Topic{}, ErrTopicEmpty
	case len(name) > MaxTopicLen:
		return Topic{}, ErrTopicLong
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == '?' || c == '#' {
			return Topic{}, ErrTopicInvalid
		}
	}
	t := Topic{Name: name}
	if kind, channel, ok := strings.Cut(name, ":"); ok && kind != "" && channel != "" && isKindName(kind) {
		t.Kind, t.Channel = kind, channel
	}
	return t, nil
}

func isKindName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
