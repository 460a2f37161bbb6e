package testkit

import (
	"strings"
	"testing"
)

func TestLogBufferFindsListenersInTextAndJSONLines(t *testing.T) {
	for name, lines := range map[string][]string{
		"text": {
			`time=2026-01-01T00:00:00Z level=INFO msg="group listening" proto=tcp addr=127.0.0.1:4001`,
			`time=2026-01-01T00:00:00Z level=INFO msg="group listening" proto=udp addr=127.0.0.1:4002`,
			`time=2026-01-01T00:00:00Z level=INFO msg=listening addr=127.0.0.1:4000 version=dev`,
			`time=2026-01-01T00:00:00Z level=INFO msg="metrics listening" addr=127.0.0.1:4003`,
		},
		"json": {
			`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"group listening","proto":"tcp","addr":"127.0.0.1:4001"}`,
			`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"group listening","proto":"udp","addr":"127.0.0.1:4002"}`,
			`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"listening","addr":"127.0.0.1:4000"}`,
			`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"metrics listening","addr":"127.0.0.1:4003"}`,
		},
	} {
		t.Run(name, func(t *testing.T) {
			l := NewLogBuffer()
			// Written in pieces that cut lines anywhere.
			all := strings.Join(lines, "\n") + "\n"
			for len(all) > 0 {
				n := min(len(all), 7)
				_, _ = l.Write([]byte(all[:n]))
				all = all[n:]
			}
			select {
			case addr := <-l.ready:
				if addr != "127.0.0.1:4000" {
					t.Errorf("ready address %q", addr)
				}
			default:
				t.Fatal("no ready line found")
			}
			if got := l.groupAddr("tcp") + " " + l.groupAddr("udp") + " " + l.metricsAddr(); got != "127.0.0.1:4001 127.0.0.1:4002 127.0.0.1:4003" {
				t.Errorf("group and metrics addresses %q", got)
			}
		})
	}
}

func TestLogBufferIsBoundedAndKeepsHeadAndTail(t *testing.T) {
	l := NewLogBuffer()
	l.headMax, l.tailMax = 1<<10, 16<<10
	_, _ = l.Write([]byte("first line\n"))
	line := strings.Repeat("x", 99) + "\n"
	for range (l.headMax + 4*l.tailMax) / len(line) {
		_, _ = l.Write([]byte(line))
	}
	_, _ = l.Write([]byte("last line\n"))
	s := l.String()
	if len(s) > l.headMax+l.tailMax+100 {
		t.Errorf("kept %d bytes, bound %d", len(s), l.headMax+l.tailMax)
	}
	if !strings.HasPrefix(s, "first line\n") || !strings.HasSuffix(s, "last line\n") || !strings.Contains(s, "bytes of log dropped") {
		t.Errorf("head, tail or the dropped marker missing: %q … %q", s[:20], s[len(s)-20:])
	}
}
