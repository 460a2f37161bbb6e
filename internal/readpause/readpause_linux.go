//go:build linux && !poll_opt

package readpause

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/panjf2000/gnet/v2"
	"github.com/panjf2000/gnet/v2/pkg/netpoll"
	"golang.org/x/sys/unix"
)

// The masks, taken from gnet itself so they cannot drift from what its
// poller writes (pkg/netpoll/defs_poller_epoll.go).
const (
	readInterest  uint32 = netpoll.ReadEvents  // EPOLLIN|EPOLLPRI, gnet's AddRead/ModRead
	writeInterest uint32 = netpoll.WriteEvents // EPOLLOUT, added by gnet's ModReadWrite
	// alwaysReported is what the kernel adds to every mask on ADD and MOD
	// (and shows in fdinfo): a paused connection still hears resets.
	alwaysReported uint32 = unix.EPOLLERR | unix.EPOLLHUP
)

// Poller changes connections' interest masks on one gnet event loop's epoll
// instance. Use it only on that loop's goroutine (see the package rules).
type Poller struct {
	epfd int            // gnet's epoll fd; gnet owns it, we never close it
	loop gnet.EventLoop // the loop whose epoll set that is
}

// Open finds the epoll instance of the event loop that owns probe (an open,
// level-triggered gnet TCP connection, typically an internal control
// connection) and checks that changing a mask on it works, by re-applying
// probe's normal interest. It must run on that loop's goroutine. An error
// means pausing is unavailable here and says why; at most probe's mask was
// set to what gnet itself would have set.
func Open(probe gnet.Conn) (*Poller, error) {
	if probe == nil || probe.RemoteAddr() == nil {
		return nil, errors.New("readpause: probe is not an open gnet connection")
	}
	fd := probe.Fd()
	// The inode ties an fdinfo entry to probe's socket itself, not merely to
	// a descriptor number that some other epoll set may list from its past.
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("readpause: probe fd %d: %w", fd, err)
	}
	epfd, registered, err := findEpoll(fd, st.Ino)
	if err != nil {
		return nil, err
	}
	// gnet's default level-triggered registration is IN|PRI, plus OUT while
	// output is buffered. Anything else is a gnet we have not read: refuse
	// rather than guess. EPOLLET means edge-triggered mode, where our masks
	// would strip gnet's EPOLLET|EPOLLRDHUP and gnet re-queues reads by
	// itself whatever the mask (eventloop_unix.go:296-297).
	switch registered &^ alwaysReported {
	case readInterest, readInterest | writeInterest:
	default:
		if registered&unix.EPOLLET != 0 {
			return nil, fmt.Errorf("readpause: gnet registered fd %d edge-triggered (events %#x); pausing needs level-triggered mode", fd, registered)
		}
		return nil, fmt.Errorf("readpause: gnet registered fd %d with events %#x, not EPOLLIN|EPOLLPRI[|EPOLLOUT]: gnet changed, re-check before pausing", fd, registered)
	}

	p := &Poller{epfd: epfd, loop: probe.EventLoop()}
	// The self-check: a harmless MOD that restores exactly what gnet would
	// set now, then read the mask back to prove the MOD landed on the entry
	// we found (and so on gnet's instance).
	want := readInterest
	if probe.OutboundBuffered() > 0 {
		want |= writeInterest
	}
	if err := p.mod(probe, want); err != nil {
		return nil, fmt.Errorf("readpause: self-check on epoll fd %d: %w", epfd, err)
	}
	got, err := interest(epfd, fd, st.Ino)
	if err != nil {
		return nil, fmt.Errorf("readpause: self-check on epoll fd %d: %w", epfd, err)
	}
	if got&^alwaysReported != want {
		return nil, fmt.Errorf("readpause: self-check on epoll fd %d: set events %#x, kernel shows %#x", epfd, want, got)
	}
	return p, nil
}

// Pause stops gnet reading c: its interest becomes nothing, or write-only
// while gnet holds unsent output for it (so that output still drains). It
// holds until gnet's own writes turn reading back on: re-apply it after every
// write to c and at the end of c's OnTraffic (rule 3). ErrGone means c is no
// longer in the epoll set. Never call it on a closed connection (rule 2).
func (p *Poller) Pause(c gnet.Conn) error {
	if err := p.owns(c); err != nil {
		return err
	}
	var ev uint32
	if c.OutboundBuffered() > 0 {
		ev = writeInterest
	}
	return p.mod(c, ev)
}

// Resume restores gnet's normal interest for c: readable, plus writable while
// gnet holds unsent output, exactly what gnet's ModRead/ModReadWrite set.
// Level-triggering makes bytes that arrived while paused readable at once.
// ErrGone as for Pause. Never call it on a closed connection (rule 2).
func (p *Poller) Resume(c gnet.Conn) error {
	if err := p.owns(c); err != nil {
		return err
	}
	ev := readInterest
	if c.OutboundBuffered() > 0 {
		ev |= writeInterest
	}
	return p.mod(c, ev)
}

// owns refuses connections this Poller must not touch: released ones (gnet
// clears a connection's addresses when it closes it, and its fd number may
// already belong to another connection) and those of another loop.
func (p *Poller) owns(c gnet.Conn) error {
	if c.RemoteAddr() == nil {
		return ErrGone
	}
	if c.EventLoop() != p.loop {
		return errOtherLoop
	}
	return nil
}

// mod sets c's interest. The event data must stay the fd, exactly as gnet
// writes it (unix.EpollEvent{Fd: fd}), because gnet's loop dispatches on it.
func (p *Poller) mod(c gnet.Conn, events uint32) error {
	fd := c.Fd()
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	switch err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev); err {
	case nil:
		return nil
	case unix.EBADF, unix.ENOENT:
		return ErrGone
	default:
		return fmt.Errorf("readpause: epoll_ctl MOD fd %d: %w", fd, err)
	}
}

// dataFor is the 64-bit epoll data gnet stores for fd, as the kernel prints
// it in fdinfo. x/sys's EpollEvent puts Fd in the first four bytes of the
// data union on every Linux port (Pad, zero, in the other four), so the
// number is fd on little-endian machines and fd<<32 on big-endian ones.
func dataFor(fd int) uint64 {
	var b [8]byte
	binary.NativeEndian.PutUint32(b[:4], uint32(fd))
	return binary.NativeEndian.Uint64(b[:])
}

// findEpoll scans this process's epoll instances for the one that lists fd
// (the socket with inode ino) with data equal to fd, and returns it with the
// events it is registered for. The Go runtime's own netpoller stores pointers
// in data, so it never matches; neither does gnet built with poll_opt.
func findEpoll(fd int, ino uint64) (epfd int, events uint32, err error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1, 0, fmt.Errorf("readpause: cannot list /proc/self/fd: %w", err)
	}
	want := dataFor(fd)
	var instances, otherData, matches int
	epfd = -1
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// Most descriptors are sockets; readlink tells epoll instances apart
		// without reading every fdinfo file.
		if link, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || link != "anon_inode:[eventpoll]" {
			continue
		}
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue // closed since the listing
		}
		instances++
		for _, t := range targets(info) {
			if t.fd != fd || (t.hasIno && t.ino != ino) {
				continue
			}
			if t.data != want {
				otherData++
				continue
			}
			matches++
			epfd, events = n, t.events
		}
	}
	switch {
	case matches == 1:
		return epfd, events, nil
	case matches > 1:
		return -1, 0, fmt.Errorf("readpause: %d epoll instances list fd %d with data == fd; cannot tell which is gnet's", matches, fd)
	case instances == 0:
		return -1, 0, errors.New("readpause: no epoll instance found in /proc/self/fd")
	case otherData > 0:
		return -1, 0, fmt.Errorf("readpause: fd %d is in %d epoll set(s), but never with data == fd: not a gnet connection, or gnet built with poll_opt or changed its poller", fd, otherData)
	default:
		return -1, 0, fmt.Errorf("readpause: none of %d epoll instances lists fd %d: not a connection enrolled in gnet", instances, fd)
	}
}

// interest returns the events epoll instance epfd holds for fd (inode ino).
func interest(epfd, fd int, ino uint64) (uint32, error) {
	info, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(epfd))
	if err != nil {
		return 0, err
	}
	for _, t := range targets(info) {
		if t.fd == fd && (!t.hasIno || t.ino == ino) {
			return t.events, nil
		}
	}
	return 0, fmt.Errorf("fd %d not listed in epoll fd %d", fd, epfd)
}

// target is one "tfd:" line of an eventpoll fdinfo file (fs/eventpoll.c):
//
//	tfd:        7 events:       19 data:                7  pos:0 ino:2a82 sdev:9
//
// tfd is decimal; events, data and ino are hexadecimal.
type target struct {
	fd     int
	events uint32
	data   uint64
	ino    uint64
	hasIno bool // ino: appeared in Linux 3.10; older kernels match on fd alone
}

func targets(info []byte) []target {
	var out []target
	sc := bufio.NewScanner(bytes.NewReader(info))
	for sc.Scan() {
		if t, ok := parseTarget(sc.Text()); ok {
			out = append(out, t)
		}
	}
	return out
}

func parseTarget(line string) (t target, ok bool) {
	if !strings.HasPrefix(line, "tfd:") {
		return t, false
	}
	var haveFd, haveEvents, haveData bool
	f := strings.Fields(line)
	for i := 0; i < len(f); i++ {
		key, val, _ := strings.Cut(f[i], ":")
		if val == "" && i+1 < len(f) && !strings.Contains(f[i+1], ":") {
			i++
			val = f[i]
		}
		var err error
		switch key {
		case "tfd":
			t.fd, err = strconv.Atoi(val)
			haveFd = err == nil
		case "events":
			var v uint64
			v, err = strconv.ParseUint(val, 16, 32)
			t.events, haveEvents = uint32(v), err == nil
		case "data":
			t.data, err = strconv.ParseUint(val, 16, 64)
			haveData = err == nil
		case "ino":
			t.ino, err = strconv.ParseUint(val, 16, 64)
			t.hasIno = err == nil
		}
	}
	return t, haveFd && haveEvents && haveData
}
