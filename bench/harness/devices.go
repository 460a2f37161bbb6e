package harness

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// loopbackIP returns 127.0.0.k for k in 1..254 (Linux answers on all of 127/8).
func loopbackIP(k int) net.IP { return net.IPv4(127, 0, byte(k/254), byte(1+k%254)) }

// deviceDialer dials device connections, optionally from a chosen loopback
// source address (IP_BIND_ADDRESS_NO_PORT so the 4-tuple, not the local port
// alone, must be unique: >28k connections per source IP and TIME_WAIT reuse).
func deviceDialer(local net.IP, sndbuf int) *net.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if local != nil {
		d.LocalAddr = &net.TCPAddr{IP: local}
	}
	d.Control = func(network, address string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			if local != nil {
				unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			}
			if sndbuf > 0 {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf)
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, sndbuf)
			}
		})
	}
	return d
}

// dialDevices opens n TCP connections to 127.0.0.1:port with conc dialers.
// src(i) picks the source IP of connection i (nil: kernel's choice).
func dialDevices(ctx context.Context, port, n, conc int, src func(i int) net.IP) ([]*net.TCPConn, error) {
	conns := make([]*net.TCPConn, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	dialers := map[string]*net.Dialer{}
	getDialer := func(ip net.IP) *net.Dialer {
		mu.Lock()
		defer mu.Unlock()
		k := ip.String()
		if d := dialers[k]; d != nil {
			return d
		}
		d := deviceDialer(ip, 0)
		dialers[k] = d
		return d
	}
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				var ip net.IP
				if src != nil {
					ip = src(i)
				}
				c, err := getDialer(ip).DialContext(ctx, "tcp", addr)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("device %d: dial %s: %w", i, addr, err)
					}
					mu.Unlock()
					return
				}
				conns[i] = c.(*net.TCPConn)
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, firstErr
	}
	return conns, nil
}

func closeAll(conns []*net.TCPConn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// waitFor polls cond every 5 ms until it holds or timeout.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	t0 := time.Now()
	for !cond() {
		if time.Since(t0) > timeout || ctx.Err() != nil {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// dialDrivers registers n drivers concurrently.
func dialDrivers(ctx context.Context, n int, o func(i int) DriverDialOpts, h func(i int) msgHandler) ([]*Driver, error) {
	ds := make([]*Driver, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 16)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			d, err := dialDriver(ctx, i, o(i), h(i))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("driver %d: %w", i, err)
				}
				return
			}
			ds[i] = d
		}(i)
	}
	wg.Wait()
	if firstErr != nil {
		closeDrivers(ds)
		return nil, firstErr
	}
	return ds, nil
}

func closeDrivers(ds []*Driver) {
	for _, d := range ds {
		if d != nil {
			d.Close()
		}
	}
}

// driversErr returns the first driver failure.
func driversErr(ds []*Driver) error {
	for _, d := range ds {
		if d == nil {
			continue
		}
		if err := d.Err(); err != nil {
			return err
		}
	}
	return nil
}
