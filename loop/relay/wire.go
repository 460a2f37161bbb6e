package relay

// What relay replicas tell each other over the cluster bus (loop.Hub.Ask
// and Tell), in a small binary codec: big-endian integers and byte strings
// with a 16-bit length. A decoder never reads past its input; whatever does
// not fit is errWire.
//
//	redemption answer:  outcome u8 [grant]
//	grant:              rights u8 | token exp i64 (unix ns) | topic | booking | n u16 | n × scope
//	verdicts:           flags u8 | { deny u8 | exp i64 (unix s) | at i64 (unix ns) | booking }*

import (
	"encoding/binary"
	"errors"
	"time"
)

var errWire = errors.New("relay: malformed message from another replica")

// Outcomes of a redemption asked of the replica that issued the code.
const (
	redeemOK      = 0
	redeemUnknown = 1 // unknown or already used
	redeemExpired = 2
)

const (
	rightRead  = 1 << 0
	rightWrite = 1 << 1
)

// appendRedeemed appends the issuer's answer to a redemption: the outcome
// and, when it is redeemOK, the grant.
func appendRedeemed(dst []byte, outcome uint8, g *grant) []byte {
	dst = append(dst, outcome)
	if outcome != redeemOK {
		return dst
	}
	var rights uint8
	if g.read {
		rights |= rightRead
	}
	if g.write {
		rights |= rightWrite
	}
	dst = append(dst, rights)
	dst = binary.BigEndian.AppendUint64(dst, uint64(g.exp.UnixNano()))
	dst = appendString16(dst, g.topic)
	dst = appendString16(dst, g.bid)
	n := min(len(g.scopes), 0xffff)
	dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	for _, s := range g.scopes[:n] {
		dst = appendString16(dst, s)
	}
	return dst
}

// parseRedeemed reads an answer to a redemption.
func parseRedeemed(b []byte) (outcome uint8, g *grant, err error) {
	d := wireDecoder{b: b}
	outcome = d.u8()
	if d.bad || outcome > redeemExpired {
		return 0, nil, errWire
	}
	if outcome != redeemOK {
		return outcome, nil, d.end()
	}
	g = &grant{}
	rights := d.u8()
	if rights&^(rightRead|rightWrite) != 0 {
		return 0, nil, errWire
	}
	g.read, g.write = rights&rightRead != 0, rights&rightWrite != 0
	g.exp = time.Unix(0, int64(d.u64()))
	g.topic = d.string16()
	g.bid = d.string16()
	n := int(d.u16())
	for i := 0; i < n && !d.bad; i++ {
		g.scopes = append(g.scopes, d.string16())
	}
	if err := d.end(); err != nil {
		return 0, nil, err
	}
	return outcome, g, nil
}

// verdictsAnswerBack asks the receiver of a list of verdicts to send its
// own back (the first message of a resynchronisation).
const verdictsAnswerBack = 1 << 0

// appendVerdicts starts a list of verdicts.
func appendVerdicts(dst []byte, flags uint8) []byte { return append(dst, flags) }

// appendVerdict appends one verdict to a list.
func appendVerdict(dst []byte, v *verdict) []byte {
	var deny uint8
	if v.deny {
		deny = 1
	}
	dst = append(dst, deny)
	dst = binary.BigEndian.AppendUint64(dst, uint64(v.exp.Unix()))
	dst = binary.BigEndian.AppendUint64(dst, uint64(v.at))
	return appendString16(dst, v.bid)
}

// parseVerdicts reads a list of verdicts, calling fn for each.
func parseVerdicts(b []byte, fn func(v verdict)) (flags uint8, err error) {
	d := wireDecoder{b: b}
	flags = d.u8()
	for !d.bad && len(d.b) > 0 {
		deny := d.u8()
		exp := int64(d.u64())
		at := int64(d.u64())
		bid := d.string16()
		if d.bad || deny > 1 || bid == "" || len(bid) > maxBookingID {
			return 0, errWire
		}
		fn(verdict{bid: bid, deny: deny == 1, exp: time.Unix(exp, 0), at: at})
	}
	return flags, d.end()
}

func appendString16(dst []byte, s string) []byte {
	if len(s) > 0xffff {
		s = s[:0xffff]
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

type wireDecoder struct {
	b   []byte
	bad bool
}

func (d *wireDecoder) take(n int) []byte {
	if d.bad || n > len(d.b) {
		d.bad = true
		return nil
	}
	x := d.b[:n]
	d.b = d.b[n:]
	return x
}

func (d *wireDecoder) u8() uint8 {
	if x := d.take(1); x != nil {
		return x[0]
	}
	return 0
}

func (d *wireDecoder) u16() uint16 {
	if x := d.take(2); x != nil {
		return binary.BigEndian.Uint16(x)
	}
	return 0
}

func (d *wireDecoder) u64() uint64 {
	if x := d.take(8); x != nil {
		return binary.BigEndian.Uint64(x)
	}
	return 0
}

func (d *wireDecoder) string16() string { return string(d.take(int(d.u16()))) }

// end reports whether everything was read, and read well.
func (d *wireDecoder) end() error {
	if d.bad || len(d.b) > 0 {
		return errWire
	}
	return nil
}
