// Package readpause stops and restarts reading a gnet v2.10 TCP connection,
// so that a fast device's own TCP window closes while the endpoints it feeds
// are behind (issue 10).
//
// gnet v2.10 has no pause/resume API, and leaving bytes unconsumed in
// OnTraffic is not backpressure: gnet keeps reading and copies the rest into
// an inbound buffer without bound. What does work on unmodified gnet is to
// change the connection's interest mask on gnet's own epoll instance: gnet
// registers every connection level-triggered with the fd itself as the
// event data (pkg/netpoll/poller_epoll_default.go:198-206), so a MOD that
// keeps data == fd and drops EPOLLIN is invisible to gnet except that the
// loop stops getting readable events for that fd. Open finds that epoll
// instance through /proc (no unsafe, no reflection into gnet) and checks
// that it really is gnet's; Pause and Resume are one epoll_ctl each.
//
// # Rules the caller must keep
//
// Pausing is a mask that gnet itself also writes, so it holds only as long as
// the caller keeps these rules. Each one exists because of a specific line of
// gnet v2.10.0.
//
//  1. Loop goroutine only. Open, Pause and Resume must run on the event loop
//     that owns the connections (inside OnOpen/OnTraffic/OnClose/OnTick, or a
//     task posted with EventLoop.Execute): gnet changes the same mask from
//     that goroutine, and OutboundBuffered is not safe anywhere else.
//
//  2. NEVER call Pause or Resume on a closed connection. gnet closes the fd
//     right after OnClose returns (eventloop_unix.go:369-387) and the kernel
//     reuses fd numbers at once, so a MOD on a stale fd would silently pause
//     or resume some other, unrelated connection. Clear the connection's
//     pause state in OnClose and drop every reference to it there (calling
//     Pause or Resume inside OnClose itself is harmless: the fd is still
//     open). As a last line of defence a connection that gnet has released
//     (its RemoteAddr is nil, connection_unix.go:110-111) is refused with
//     ErrGone without any syscall, and EBADF/ENOENT from the kernel also
//     become ErrGone; neither makes a stale call safe in general.
//
//  3. Re-apply Pause after every write to a paused connection, and at the end
//     of its OnTraffic. gnet's write path turns EPOLLIN back on when a write
//     is only partly sent (ModReadWrite, connection_unix.go:168/181/218/244),
//     and so does the drain of its outbound buffer (ModRead,
//     eventloop_unix.go:348-349), which happens on a writable event with no
//     callback to the caller. "Every write" means Write, Writev, Flush, output
//     returned from OnOpen, and the completion callback of AsyncWrite/
//     AsyncWritev. The drain case is caught by the next OnTraffic: the
//     overshoot is at most one read (gnet's ReadBufferCap, the server's
//     --read-size) each time gnet turns reading back on. The cheap form
//     of this rule, from the same lines: in level-triggered mode gnet
//     touches the mask only when
//     OutboundBuffered() crosses zero. A write that finds output already
//     buffered just appends (connection_unix.go:149-152), and one that is
//     sent whole changes nothing, so a re-Pause is needed only after a write
//     that took OutboundBuffered() from 0 to more than 0; the drain back to 0
//     is the OnTraffic case. Each Pause or Resume is one epoll_ctl (about
//     1.5 us on the development VM, no allocation).
//
//  4. There is no drain callback: while anything is paused, check the blocked
//     endpoints every 10-20 ms (OnTick, or a timer that posts with Execute)
//     and Resume producers whose endpoints have drained.
//
//  5. Level-triggered gnet only, pinned. Never use WithEdgeTriggeredIO or
//     WithEdgeTriggeredIOChunk (Open refuses: its self-check sees EPOLLET),
//     and never build with -tags poll_opt: there gnet stores a pointer in the
//     event data and a MOD writing the fd into it would crash the loop. Under
//     poll_opt this package compiles to a stub whose Open always fails.
//     TestPauseStallsPeer fails if a gnet upgrade silently breaks pausing.
//
//  6. Bound kernel memory: a paused socket's receive buffer keeps autotuning
//     up to net.ipv4.tcp_rmem[2] (32 MiB on the development machine). Give
//     pausable device sockets a fixed SO_RCVBUF, best on the listening socket
//     (net.ListenConfig.Control) so accepted sockets inherit it before the
//     handshake chooses the window scale; (*net.TCPConn).SetReadBuffer before
//     Enroll, or gnet.Conn.SetReadBuffer after, also work. A fixed value
//     turns autotuning off and the kernel doubles it for bookkeeping.
//
//  7. What a paused device can still do: a reset (EPOLLERR|EPOLLHUP, which
//     epoll reports whatever the mask) closes the connection at once and
//     gnet drops its unsent output (connection_linux.go:32-35). A FIN is
//     seen only after Resume: gnet registers level-triggered connections
//     without EPOLLRDHUP (eventloop_unix.go:216, poller_epoll_default.go:199),
//     so end of stream is only a read() of 0. Closing a paused connection that
//     still has unread bytes in the kernel makes the kernel send an RST, not a
//     FIN.
//
//  8. If Open fails (no /proc, not Linux, a changed gnet, edge-triggered or
//     poll_opt), log the error once and fall back to the cut-only policy.
//
//  9. One Poller per event loop; it belongs to the loop of the connection
//     given to Open and refuses connections of any other loop. It owns
//     nothing (the epoll fd is gnet's): there is nothing to close, and it must
//     not be used after the engine stops.
//
// The package counts nothing and remembers no per-connection state: the
// caller knows which connections are paused and why.
package readpause
