package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// verdict is the latest decision about a booking: denied, or allowed
// again, until exp. at (unix nanoseconds) orders decisions wherever they
// were made: the later one wins (verdict.newer), so that replicas that hear
// the same decisions in any order, or twice, end up with the same list.
type verdict struct {
	bid  string
	deny bool
	exp  time.Time // unix seconds, as the admin API gives it
	at   int64
}

// newer reports whether v replaces old: it was decided later; at the same
// instant, a deny wins.
func (v *verdict) newer(old *verdict) bool {
	return v.at > old.at || v.at == old.at && v.deny && !old.deny
}

// store keeps the deny list on disk (bbolt, one file in the data
// directory), so that a booking cancelled before a restart stays cancelled;
// allows are kept too, until their expiry, so that a replica that missed an
// allow cannot bring the deny back. It is used only off the loop: at
// registration, by the access API's handlers and by the kind's writer
// (storeWriter).
type store struct {
	db *bolt.DB
}

var (
	denyBucket  = []byte("deny")
	allowBucket = []byte("allow")
)

// storeFile is the database's name in the data directory.
const storeFile = "relay.db"

// openStore opens (creating) the database in dir and returns the verdicts
// it holds, without those that expired before now (which it drops).
func openStore(dir string, now time.Time) (*store, []verdict, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	path := filepath.Join(dir, storeFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, nil, fmt.Errorf("%s is in use by another process", path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	s := &store{db: db}
	var verdicts []verdict
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{denyBucket, allowBucket} {
			b, err := tx.CreateBucketIfNotExists(name)
			if err != nil {
				return err
			}
			if err := pruneBucket(b, now); err != nil {
				return err
			}
			deny := string(name) == string(denyBucket)
			err = b.ForEach(func(k, v []byte) error {
				exp, at, _ := decodeEntry(v)
				verdicts = append(verdicts, verdict{bid: string(k), deny: deny, exp: exp, at: at})
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, verdicts, nil
}

// put records v unless the store holds a newer verdict for the booking,
// and drops entries that have expired by now. It reports whether v was
// written.
func (s *store) put(v *verdict, now time.Time) (written bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		deny, allow := tx.Bucket(denyBucket), tx.Bucket(allowBucket)
		for _, b := range []*bolt.Bucket{deny, allow} {
			if err := pruneBucket(b, now); err != nil {
				return err
			}
		}
		key := []byte(v.bid)
		for _, old := range []struct {
			b    *bolt.Bucket
			deny bool
		}{{deny, true}, {allow, false}} {
			if raw := old.b.Get(key); raw != nil {
				if _, at, ok := decodeEntry(raw); ok && !v.newer(&verdict{deny: old.deny, at: at}) {
					return nil
				}
			}
		}
		into, other := deny, allow
		if !v.deny {
			into, other = allow, deny
		}
		if err := other.Delete(key); err != nil {
			return err
		}
		var value [16]byte
		binary.BigEndian.PutUint64(value[:8], uint64(v.exp.Unix()))
		binary.BigEndian.PutUint64(value[8:], uint64(v.at))
		written = true
		return into.Put(key, value[:])
	})
	return written, err
}

// decodeEntry reads a stored value: the expiry in unix seconds, then the
// decision's time (absent in stores written before replicas: the oldest).
func decodeEntry(v []byte) (exp time.Time, at int64, ok bool) {
	switch len(v) {
	case 8:
		return time.Unix(int64(binary.BigEndian.Uint64(v)), 0), 0, true
	case 16:
		return time.Unix(int64(binary.BigEndian.Uint64(v)), 0), int64(binary.BigEndian.Uint64(v[8:])), true
	}
	return time.Time{}, 0, false
}

// pruneBucket drops the entries that expired by now, and those it cannot read.
func pruneBucket(b *bolt.Bucket, now time.Time) error {
	var stale [][]byte
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if exp, _, ok := decodeEntry(v); !ok || !exp.After(now) {
			stale = append(stale, k)
		}
	}
	for _, k := range stale {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func (s *store) close() error { return s.db.Close() }
