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

// store keeps the deny list on disk (bbolt, one file in the data
// directory), so that a booking cancelled before a restart stays cancelled.
// It is used only off the loop: at registration and by the access API's
// handlers.
type store struct {
	db *bolt.DB
}

var denyBucket = []byte("deny")

// storeFile is the database's name in the data directory.
const storeFile = "relay.db"

// openStore opens (creating) the database in dir and returns the deny list
// it holds, without the entries that expired before now (which it drops).
func openStore(dir string, now time.Time) (*store, map[string]time.Time, error) {
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
	denied := map[string]time.Time{}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(denyBucket)
		if err != nil {
			return err
		}
		var stale [][]byte
		err = b.ForEach(func(k, v []byte) error {
			if len(v) != 8 {
				stale = append(stale, k)
				return nil
			}
			exp := time.Unix(int64(binary.BigEndian.Uint64(v)), 0)
			if !exp.After(now) {
				stale = append(stale, k)
				return nil
			}
			denied[string(k)] = exp
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range stale {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, denied, nil
}

// deny records a booking as denied until exp, and drops entries that have
// expired by now.
func (s *store) deny(bid string, exp, now time.Time) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(denyBucket)
		if err := pruneBucket(b, now); err != nil {
			return err
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(exp.Unix()))
		return b.Put([]byte(bid), v[:])
	})
}

// allow removes a booking from the deny list.
func (s *store) allow(bid string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(denyBucket).Delete([]byte(bid))
	})
}

func pruneBucket(b *bolt.Bucket, now time.Time) error {
	var stale [][]byte
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(v) != 8 || !time.Unix(int64(binary.BigEndian.Uint64(v)), 0).After(now) {
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
