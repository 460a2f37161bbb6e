package codec

import (
	"bufio"
	"bytes"
	"errors"
	"net/http"
	"strings"
	"testing"
)

func TestRequestHeadLength(t *testing.T) {
	head := "GET /api/dispatch/v1 HTTP/1.1\r\nHost: x\r\n\r\n"
	cases := []struct {
		in      string
		max     int
		wantLen int
		wantErr error
	}{
		{head, 8192, len(head), nil},
		{head + "frames follow", 8192, len(head), nil},
		{head[:len(head)-1], 8192, 0, nil},
		{"GET", 8192, 0, nil},
		{"", 8192, 0, nil},
		{head, len(head) - 1, 0, ErrHeadTooLarge},
		{"GET / HTTP/1.1\r\n" + strings.Repeat("X: y\r\n", 100), 256, 0, ErrHeadTooLarge},
		{"\x16\x03\x01 tls hello\n", 8192, 0, ErrMalformedHead},
		{"get / HTTP/1.1\r\n\r\n", 8192, 0, ErrMalformedHead},
		{"GET /\r\n\r\n", 8192, 0, ErrMalformedHead},
		{"GET / SPDY/3\r\n\r\n", 8192, 0, ErrMalformedHead},
	}
	for _, c := range cases {
		n, err := RequestHeadLength([]byte(c.in), c.max)
		if n != c.wantLen || !errors.Is(err, c.wantErr) {
			t.Errorf("%q (max %d): got %d, %v; want %d, %v", c.in, c.max, n, err, c.wantLen, c.wantErr)
		}
	}
}

func FuzzRequestHeadLength(f *testing.F) {
	f.Add([]byte("GET /api/dispatch/v1/tcp_dispatch?port=6001&accept=127.0.0.1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"), 8192)
	f.Add([]byte("GET / HTTP/1.0\r\n\r\nextra"), 64)
	f.Add([]byte("\r\n\r\n"), 16)
	f.Fuzz(func(t *testing.T, b []byte, max int) {
		if max <= 0 || max > 1<<16 {
			return
		}
		n, err := RequestHeadLength(b, max)
		if err != nil {
			return
		}
		if n > max || n > len(b) {
			t.Fatalf("head length %d beyond max %d or input %d", n, max, len(b))
		}
		if n > 0 {
			if !bytes.HasSuffix(b[:n], headEnd) {
				t.Fatalf("head does not end with CRLFCRLF: %q", b[:n])
			}
			// net/http must be able to take it from here without panicking.
			_, _ = http.ReadRequest(bufio.NewReader(bytes.NewReader(b[:n])))
		}
	})
}
