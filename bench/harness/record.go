package harness

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// RecordSize is the size of one load record.
//
// Layout (little-endian):
//
//	[0:8]   send time, monotonic ns since harness start
//	[8:16]  per-device sequence number, from 0
//	[16:20] device index (TCP/UDP ingest) or destination client id (write path)
//	[20]    step number (latency attribution)
//	[21:64] filler: 43 copies of byte(seq ^ device)
const RecordSize = 64

const fillerOff = 21

var fillers [256][RecordSize - fillerOff]byte

func init() {
	for i := range fillers {
		for j := range fillers[i] {
			fillers[i][j] = byte(i)
		}
	}
}

func fillRecord(b []byte, sendNs int64, seq uint64, dev uint32, step uint8) {
	_ = b[RecordSize-1]
	binary.LittleEndian.PutUint64(b[0:], uint64(sendNs))
	binary.LittleEndian.PutUint64(b[8:], seq)
	binary.LittleEndian.PutUint32(b[16:], dev)
	b[20] = step
	copy(b[fillerOff:RecordSize], fillers[byte(seq)^byte(dev)][:])
}

type record struct {
	sendNs int64
	seq    uint64
	dev    uint32
	step   uint8
}

func parseRecord(b []byte) (record, bool) {
	r := record{
		sendNs: int64(binary.LittleEndian.Uint64(b[0:])),
		seq:    binary.LittleEndian.Uint64(b[8:]),
		dev:    binary.LittleEndian.Uint32(b[16:]),
		step:   b[20],
	}
	return r, bytes.Equal(b[fillerOff:RecordSize], fillers[byte(r.seq)^byte(r.dev)][:])
}

// stream reassembles one device's byte stream as seen by one receiver and
// checks that it is the exact sequence of records the device wrote.
type stream struct {
	partial [RecordSize]byte
	plen    int
	dev     int64 // -1 until the first record
	next    uint64
	closed  bool
}

func newStream() *stream { return &stream{dev: -1} }

// feed consumes data (any split). onRec is called per complete, verified record.
// The error explains the first corruption, loss or reordering.
func (s *stream) feed(data []byte, who string, onRec func(r *record)) error {
	if s.plen > 0 {
		n := copy(s.partial[s.plen:], data)
		s.plen += n
		data = data[n:]
		if s.plen < RecordSize {
			return nil
		}
		if err := s.check(s.partial[:], who, onRec); err != nil {
			return err
		}
		s.plen = 0
	}
	for len(data) >= RecordSize {
		if err := s.check(data[:RecordSize], who, onRec); err != nil {
			return err
		}
		data = data[RecordSize:]
	}
	if len(data) > 0 {
		s.plen = copy(s.partial[:], data)
	}
	return nil
}

func (s *stream) check(b []byte, who string, onRec func(r *record)) error {
	r, fillOK := parseRecord(b)
	if s.dev < 0 {
		s.dev = int64(r.dev)
	}
	if !fillOK || int64(r.dev) != s.dev || r.seq != s.next {
		return fmt.Errorf("%s: byte stream broken after %d good records (%d bytes): expected record seq %d of device %d, got seq %d device %d filler-ok=%v — bytes lost, duplicated, corrupted or reordered",
			who, s.next, s.next*RecordSize, s.next, s.dev, r.seq, r.dev, fillOK)
	}
	s.next++
	onRec(&r)
	return nil
}
