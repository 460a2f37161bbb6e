package testkit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// Bounds of what a LogBuffer keeps: the first lines (the configuration and
// the listening lines) and the most recent ones. A server that logs without
// end cannot exhaust the test's memory; the tests' servers log far less.
const (
	logHeadBytes = 256 << 10
	logTailBytes = 16 << 20
	// logLineMax is the longest line parsed for events; longer ones are
	// kept but not parsed.
	logLineMax = 64 << 10
)

// LogBuffer collects a server's log output, bounded, so that a failing test
// can print it. For a Process it also picks out the lines that announce
// listeners: the ready line (msg=listening addr=…), the socket-group
// listeners and the metrics listener, in the text or the JSON log format.
type LogBuffer struct {
	mu      sync.Mutex
	headMax int // logHeadBytes, but for tests of the bound itself
	tailMax int // logTailBytes, likewise
	head    []byte
	tail    []byte
	dropped int64  // bytes dropped between head and tail
	partial []byte // the unfinished last line, for parsing
	ready   chan string
	readyOK bool
	groups  map[string]string // proto → address
	metrics string
}

func NewLogBuffer() *LogBuffer {
	return &LogBuffer{headMax: logHeadBytes, tailMax: logTailBytes, ready: make(chan string, 1), groups: map[string]string{}}
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.store(p)
	l.partial = append(l.partial, p...)
	for {
		eol := bytes.IndexByte(l.partial, '\n')
		if eol < 0 {
			if len(l.partial) > logLineMax {
				l.partial = l.partial[:0] // a runaway line: not an event
			}
			break
		}
		l.parse(l.partial[:eol])
		l.partial = l.partial[eol+1:]
	}
	if len(l.partial) == 0 {
		l.partial = nil // let a drained buffer be collected
	}
	return len(p), nil
}

func (l *LogBuffer) store(p []byte) {
	if room := l.headMax - len(l.head); room > 0 {
		n := min(room, len(p))
		l.head = append(l.head, p[:n]...)
		p = p[n:]
	}
	l.tail = append(l.tail, p...)
	if len(l.tail) > l.tailMax {
		// Drop the oldest quarter, at a line boundary, so that appending
		// stays amortised.
		cut := len(l.tail) - l.tailMax*3/4
		if i := bytes.IndexByte(l.tail[cut:], '\n'); i >= 0 {
			cut += i + 1
		}
		l.dropped += int64(cut)
		l.tail = append(l.tail[:0:0], l.tail[cut:]...)
	}
}

func (l *LogBuffer) parse(line []byte) {
	if len(line) > logLineMax || !bytes.Contains(line, []byte("listening")) {
		return // only listener lines are events; most lines are not
	}
	switch logField(line, "msg") {
	case "listening":
		if addr := logField(line, "addr"); addr != "" && !l.readyOK {
			l.readyOK = true
			l.ready <- addr
		}
	case "group listening":
		l.groups[logField(line, "proto")] = logField(line, "addr")
	case "metrics listening":
		l.metrics = logField(line, "addr")
	}
}

var textKey = regexp.MustCompile(`(?:^|\s)([A-Za-z_.]+)=`)

// LogField returns the value of key in one log line (text or JSON), or "".
func LogField(line, key string) string { return logField([]byte(line), key) }

// logField returns the value of key in a text (key=value, key="quoted
// value") or JSON log line, or "".
func logField(line []byte, key string) string {
	if len(line) > 0 && line[0] == '{' {
		var fields map[string]any
		if json.Unmarshal(line, &fields) != nil {
			return ""
		}
		s, _ := fields[key].(string)
		return s
	}
	s := string(line)
	for _, m := range textKey.FindAllStringSubmatchIndex(s, -1) {
		if s[m[2]:m[3]] != key {
			continue
		}
		rest := s[m[1]:]
		if strings.HasPrefix(rest, `"`) {
			quoted, err := strconv.QuotedPrefix(rest)
			if err != nil {
				return ""
			}
			v, _ := strconv.Unquote(quoted)
			return v
		}
		if i := strings.IndexAny(rest, " \t"); i >= 0 {
			return rest[:i]
		}
		return rest
	}
	return ""
}

func (l *LogBuffer) groupAddr(proto string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.groups[proto]
}

func (l *LogBuffer) metricsAddr() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.metrics
}

// String is everything kept, with a marker where lines were dropped.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dropped == 0 {
		return string(l.head) + string(l.tail)
	}
	return fmt.Sprintf("%s\n… %d bytes of log dropped …\n%s", l.head, l.dropped, l.tail)
}

// Tail is the last n bytes kept, for failure messages.
func (l *LogBuffer) Tail(n int) string {
	s := l.String()
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// CountLines counts the lines of logs that contain substr.
func CountLines(logs, substr string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

// LinesContaining returns the lines of logs that contain substr.
func LinesContaining(logs, substr string) string {
	var out []string
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// WarnLine matches a warning-level log line, text or JSON.
var WarnLine = regexp.MustCompile(`(?i)level"?[=:]"?warn`)
