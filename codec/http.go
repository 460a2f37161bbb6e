package codec

import (
	"bytes"
	"errors"
)

// Errors from RequestHeadLength.
var (
	ErrHeadTooLarge  = errors.New("http: request head too large")
	ErrMalformedHead = errors.New("http: malformed request line")
)

var headEnd = []byte("\r\n\r\n")

// RequestHeadLength reports how many bytes of b form a complete HTTP request
// head, terminator included. It returns 0 while the head is incomplete, and
// fails early when the request line is complete but cannot be HTTP, or when
// no complete head fits in max bytes, so a hostile peer cannot make us buffer
// more than max.
func RequestHeadLength(b []byte, max int) (int, error) {
	if i := bytes.IndexByte(b, '\n'); i >= 0 && !plausibleRequestLine(b[:i]) {
		return 0, ErrMalformedHead
	}
	window := b
	if len(window) > max {
		window = window[:max]
	}
	if i := bytes.Index(window, headEnd); i >= 0 {
		return i + len(headEnd), nil
	}
	if len(b) >= max {
		return 0, ErrHeadTooLarge
	}
	return 0, nil
}

// plausibleRequestLine accepts "METHOD SP target SP HTTP/x.y" with an
// optional CR; the full parse happens later with net/http.
func plausibleRequestLine(line []byte) bool {
	line = bytes.TrimSuffix(line, []byte{'\r'})
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return false
	}
	for _, c := range line[:sp1] {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	sp2 := bytes.LastIndexByte(line, ' ')
	if sp2 <= sp1 {
		return false
	}
	return bytes.HasPrefix(line[sp2+1:], []byte("HTTP/1."))
}
