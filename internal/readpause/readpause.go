package readpause

import "errors"

// ErrGone reports that the connection is no longer in gnet's epoll set: gnet
// has released it, or the kernel answered EBADF/ENOENT. The caller should
// forget the connection's pause state; its OnClose has run or is about to.
var ErrGone = errors.New("readpause: connection is gone")

// errOtherLoop reports a connection that belongs to another event loop than
// the Poller's, whose epoll set cannot hold it (the kernel would answer
// ENOENT, which must not be mistaken for ErrGone).
var errOtherLoop = errors.New("readpause: connection belongs to another event loop")
