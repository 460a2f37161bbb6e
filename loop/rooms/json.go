package rooms

import (
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// A small JSON scanner: it validates a document (RFC 8259, UTF-8 assumed
// checked by the caller) and walks an object's members as raw spans of the
// input, so that payloads are forwarded exactly as they arrived, never
// decoded and encoded again. Nothing here allocates unless a key or string
// value holds an escape.

// maxDepth bounds nesting: a hostile document cannot exhaust the stack.
const maxDepth = 64

var (
	errSyntax   = errors.New("not valid JSON")
	errTooDeep  = errors.New("JSON nested too deeply")
	errNotObj   = errors.New("not a JSON object")
	errNotStr   = errors.New("not a JSON string")
	errNotUint  = errors.New("not an unsigned integer in range")
	errNotArray = errors.New("not a JSON array")
)

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}

// validJSON reports whether b is exactly one JSON value, with optional
// surrounding whitespace.
func validJSON(b []byte) bool {
	i, err := skipValue(b, skipSpace(b, 0), 0)
	return err == nil && skipSpace(b, i) == len(b)
}

// validObject reports whether b is exactly one JSON object.
func validObject(b []byte) bool {
	i := skipSpace(b, 0)
	return i < len(b) && b[i] == '{' && validJSON(b)
}

// skipValue returns the index just past the value that starts at b[i].
func skipValue(b []byte, i, depth int) (int, error) {
	if i >= len(b) {
		return i, errSyntax
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{':
		return skipObject(b, i, depth)
	case c == '[':
		return skipArray(b, i, depth)
	case c == '-' || c >= '0' && c <= '9':
		return skipNumber(b, i)
	case c == 't':
		return skipLiteral(b, i, "true")
	case c == 'f':
		return skipLiteral(b, i, "false")
	case c == 'n':
		return skipLiteral(b, i, "null")
	}
	return i, errSyntax
}

func skipLiteral(b []byte, i int, lit string) (int, error) {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return i, errSyntax
	}
	return i + len(lit), nil
}

// skipString returns the index past the closing quote of the string that
// starts at b[i]. Control characters must be escaped; escapes must be
// well formed.
func skipString(b []byte, i int) (int, error) {
	i++ // the opening quote
	for i < len(b) {
		switch c := b[i]; {
		case c == '"':
			return i + 1, nil
		case c < 0x20:
			return i, errSyntax
		case c == '\\':
			if i+1 >= len(b) {
				return i, errSyntax
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if len(b)-i < 6 {
					return i, errSyntax
				}
				for _, h := range b[i+2 : i+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return i, errSyntax
					}
				}
				i += 6
			default:
				return i, errSyntax
			}
		default:
			i++
		}
	}
	return i, errSyntax
}

func skipNumber(b []byte, i int) (int, error) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i, _ = skipDigits(b, i)
	default:
		return i, errSyntax
	}
	var ok bool
	if i < len(b) && b[i] == '.' {
		if i, ok = skipDigits(b, i+1); !ok {
			return i, errSyntax
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i, ok = skipDigits(b, i); !ok {
			return i, errSyntax
		}
	}
	return i, nil
}

// skipDigits skips a run of digits; false if there is none.
func skipDigits(b []byte, i int) (int, bool) {
	start := i
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i, i > start
}

func skipObject(b []byte, i, depth int) (int, error) { return skipList(b, i, depth+1, '}', skipMember) }

func skipArray(b []byte, i, depth int) (int, error) { return skipList(b, i, depth+1, ']', skipValue) }

// skipMember skips one "key": value of an object.
func skipMember(b []byte, i, depth int) (int, error) {
	if i >= len(b) || b[i] != '"' {
		return i, errSyntax
	}
	i, err := skipString(b, i)
	if err != nil {
		return i, err
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return i, errSyntax
	}
	return skipValue(b, skipSpace(b, i+1), depth)
}

// skipList skips the items of an object or an array that starts at b[i]
// and ends with the byte end; item skips one of them.
func skipList(b []byte, i, depth int, end byte, item func(b []byte, i, depth int) (int, error)) (int, error) {
	if depth > maxDepth {
		return i, errTooDeep
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == end {
		return i + 1, nil
	}
	for {
		var err error
		if i, err = item(b, i, depth); err != nil {
			return i, err
		}
		i = skipSpace(b, i)
		switch {
		case i >= len(b):
			return i, errSyntax
		case b[i] == ',':
			i = skipSpace(b, i+1)
		case b[i] == end:
			return i + 1, nil
		default:
			return i, errSyntax
		}
	}
}

// eachMember calls fn with every member of the object b (exactly one
// object, whitespace around it allowed): the key as written between its
// quotes (keyOf compares it) and the raw value. fn may stop the walk with
// an error, which eachMember returns. The whole object is validated first.
func eachMember(b []byte, fn func(key, value []byte) error) error {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		if validJSON(b) {
			return errNotObj
		}
		return errSyntax
	}
	if !validJSON(b) {
		return errSyntax
	}
	i = skipSpace(b, i+1)
	for i < len(b) && b[i] == '"' {
		kEnd, _ := skipString(b, i)
		key := b[i+1 : kEnd-1]
		i = skipSpace(b, skipSpace(b, kEnd)+1) // past the colon
		vEnd, _ := skipValue(b, i, 0)
		if err := fn(key, b[i:vEnd]); err != nil {
			return err
		}
		i = skipSpace(b, vEnd)
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return nil
}

// eachElement calls fn with every element of the array b, validated first.
func eachElement(b []byte, fn func(value []byte) error) error {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '[' {
		return errNotArray
	}
	if !validJSON(b) {
		return errSyntax
	}
	i = skipSpace(b, i+1)
	for i < len(b) && b[i] != ']' {
		end, _ := skipValue(b, i, 0)
		if err := fn(b[i:end]); err != nil {
			return err
		}
		i = skipSpace(b, end)
		if b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return nil
}

// keyIs reports whether a raw key (as eachMember passes it) is name.
// Keys are compared after unescaping, as a JSON decoder would.
func keyIs(raw []byte, name string) bool {
	if string(raw) == name {
		return true
	}
	for _, c := range raw {
		if c == '\\' {
			var s string
			if json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &s) == nil {
				return s == name
			}
			return false
		}
	}
	return false
}

// stringOf decodes a raw JSON string value. raw must have been validated
// (it came from eachMember or eachElement).
func stringOf(raw []byte) (string, error) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", errNotStr
	}
	inner := raw[1 : len(raw)-1]
	for _, c := range inner {
		if c == '\\' {
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return "", errNotStr
			}
			if !utf8.ValidString(s) {
				return "", errNotStr
			}
			return s, nil
		}
	}
	return string(inner), nil
}

// bytesOf returns a raw JSON string's content without copying when it
// holds no escape (the common case), decoding it otherwise.
func bytesOf(raw []byte) ([]byte, error) {
	if len(raw) < 2 || raw[0] != '"' {
		return nil, errNotStr
	}
	inner := raw[1 : len(raw)-1]
	for _, c := range inner {
		if c == '\\' {
			s, err := stringOf(raw)
			return []byte(s), err
		}
	}
	return inner, nil
}

// uintOf decodes a raw JSON number that must be an integer in 0..max,
// written without fraction or exponent (as serde reads a u32 or u16).
func uintOf(raw []byte, max uint64) (uint64, error) {
	if len(raw) == 0 || len(raw) > 1 && raw[0] == '0' {
		return 0, errNotUint
	}
	var n uint64
	for _, c := range raw {
		if c < '0' || c > '9' {
			return 0, errNotUint
		}
		n = n*10 + uint64(c-'0')
		if n > max {
			return 0, errNotUint
		}
	}
	return n, nil
}

// isNull reports whether a raw value is null.
func isNull(raw []byte) bool { return string(raw) == "null" }
