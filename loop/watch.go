package loop

// Watchers. A watcher is an upstream that looks on at a channel another
// kind owns (a browser watching a device port, say): it hears the members
// the channel has admitted for itself, in the upstream format it chose, but
// it changes nothing about the channel. It admits no member on its own
// (Channel.Admits ignores it, so a device no driver lists is still refused,
// and a datagram no driver admits is still dropped), it is not counted by
// Upstreams (a port closes with its last driver, watchers or not), its
// leaving is not reported to the owner, and it is ended with
// EndChannelClosed when the channel closes, since it has nothing left to
// watch. What a watcher may send back is its kind's business (Owner).

// appendInterested appends the upstreams that hear m: those whose filter
// admits it, then the watchers whose filter admits it, when m belongs to
// the channel (it joined) or some other upstream admits it.
func (ch *Channel) appendInterested(dst []*Upstream, m *Member) []*Upstream {
	start := len(dst)
	for _, u := range ch.upstreams {
		if !u.Watcher && u.admits(m) {
			dst = append(dst, u)
		}
	}
	if ch.watchers > 0 && (!m.Transient || len(dst) > start) {
		for _, u := range ch.upstreams {
			if u.Watcher && u.admits(m) {
				dst = append(dst, u)
			}
		}
	}
	return dst
}

// endWatchers ends the watchers of a channel that closed.
func endWatchers(ups []*Upstream) {
	for _, u := range ups {
		if u.Watcher {
			u.Out.End(EndChannelClosed, "channel closed")
		}
	}
}

// Owner is the kind's side of the channel, for a kind that attaches
// watchers and asks what the owner can do (a driver target, say).
func (ch *Channel) Owner() Owner { return ch.owner }
