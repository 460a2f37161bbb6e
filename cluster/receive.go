package cluster

import (
	"bytes"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/placeos-gnet/dispatch/loop"
)

// receive handles one NATS message on the loop.
func (b *Bus) receive(msg *nats.Msg) {
	b.c.MessagesIn++
	b.c.BytesIn += uint64(len(msg.Data))
	r, err := NewReader(msg.Data)
	if err != nil {
		b.malformed(msg.Subject)
		return
	}
	if int(r.Node) == b.node {
		if r.Instance != b.instance {
			b.c.NodeConflicts++
			if b.dropLog.Due(b.hub.Now()) {
				b.hub.Log().Error("cluster: another replica has this replica's node number; member ids may collide", "node", b.node)
			}
		}
		return
	}
	p, fresh := b.peer(r.Header)
	// A replica heard from for the first time other than by its hello (we
	// took it as gone, or missed its hello) may lack what we hold of it and
	// we of it: hello makes both sides send everything again.
	defer func() {
		if fresh {
			b.hello()
		}
	}()
	var key loop.Key
	var sp *span
	f := &b.frame
	for {
		ok, err := r.Next(f)
		if err != nil {
			b.malformed(msg.Subject)
			return
		}
		if !ok {
			return
		}
		switch f.Type {
		case FrameChannel:
			key = loop.Key{Kind: string(f.Kind), Name: string(f.Name)}
			sp = b.spans[key]
		case FrameHeartbeat:
		case FrameHello:
			fresh = false
			b.announceAll()
			b.hub.ReplicaHello(int(p.node))
		case FrameBye:
			fresh = false
			b.hub.Log().Info("cluster: replica left", "node", p.node)
			b.peerGone(p.node)
			return
		case FrameResetBegin:
			fresh = false // it is sending everything already
			p.resetting = make(map[loop.Key]bool)
		case FrameResetEnd:
			if p.resetting != nil {
				for k, byNode := range b.interest {
					if byNode[p.node] != nil && !p.resetting[k] {
						b.setInterest(p.node, k, 0, "")
					}
				}
				p.resetting = nil
			}
		case FrameInterest:
			if key.Kind == "" {
				b.malformed(msg.Subject)
				return
			}
			b.interestFrame(p, key, f.Flags, string(f.Data))
		case FrameQuery:
			b.answer(p.node, f.ID, string(f.Data))
		case FrameAnswer:
			if g := b.queries[f.ID]; g != nil {
				g.add(p.node, f.Data)
			}
		case FrameAsk:
			b.answerAsk(p.node, f.ID, string(f.Topic), f.Data)
		case FrameTell:
			b.hub.Told(int(p.node), string(f.Topic), f.Data)
		default:
			if sp != nil && sp.subscribed || sp != nil && isOwnerFrame(f.Type) {
				sp.frame(p.node, f)
			}
		}
	}
}

// isOwnerFrame: frames for a member held here, which arrive whether or not
// this replica wants the channel's events.
func isOwnerFrame(t FrameType) bool { return t == FrameWrite || t == FrameClose }

func (b *Bus) malformed(subject string) {
	b.c.Malformed++
	if b.dropLog.Due(b.hub.Now()) {
		b.hub.Log().Warn("cluster: malformed bus message dropped", "subject", subject)
	}
}

// peer finds or makes the record of the sender; fresh when it is new. A
// known node with a new instance restarted: the old one is gone, with all
// it held.
func (b *Bus) peer(h Header) (p *peer, fresh bool) {
	p = b.peers[h.Node]
	if p != nil && p.instance != h.Instance {
		b.hub.Log().Info("cluster: replica restarted", "node", h.Node)
		b.peerGone(h.Node)
		p = nil
	}
	if p == nil {
		p = &peer{node: h.Node, instance: h.Instance}
		b.peers[h.Node] = p
		fresh = true
		b.hub.Log().Info("cluster: replica joined", "node", h.Node)
	}
	p.lastSeen = time.Now() // the loop's clock is as old as its last tick
	return p, fresh
}

// interestFrame records what a replica wants of a channel, and answers new
// interest with a snapshot of the members held here.
func (b *Bus) interestFrame(p *peer, key loop.Key, flags uint8, filter string) {
	fresh := p.resetting != nil
	if fresh {
		p.resetting[key] = true
	}
	before := b.interest[key][p.node]
	b.hub.Log().Debug("cluster: interest", "node", p.node, "channel", key.String(),
		"upstreams", flags&InterestUpstreams != 0, "members", flags&InterestMembers != 0, "filter", filter)
	b.setInterest(p.node, key, flags, filter)
	if flags != 0 && (before == nil || fresh) {
		b.sendSnapshot(p.node, key)
	}
}

// setInterest updates the table and the open channel; a kind that opens
// channels for remote interest (dispatch ports) opens it now.
func (b *Bus) setInterest(node uint16, key loop.Key, flags uint8, filter string) {
	byNode := b.interest[key]
	var in *interest
	if flags != 0 {
		in = &interest{flags: flags, filter: filter, parsed: b.parseFilter(filter)}
		if old := byNode[node]; old != nil && old.flags == flags && old.filter == filter {
			return
		}
		if byNode == nil {
			byNode = make(map[uint16]*interest)
			b.interest[key] = byNode
		}
		byNode[node] = in
	} else {
		if byNode[node] == nil {
			return
		}
		delete(byNode, node)
		if len(byNode) == 0 {
			delete(b.interest, key)
		}
	}
	if sp := b.spans[key]; sp != nil {
		sp.setInterest(node, in)
		return
	}
	if in == nil || in.flags&InterestUpstreams == 0 {
		return
	}
	if open, ok := b.hub.Spanning(key.Kind); ok && open != nil {
		if ch := open(key.Name); ch == nil {
			b.hub.Log().Warn("cluster: cannot open a channel another replica listens on", "channel", key.String(), "node", node)
		}
	}
}

func (b *Bus) parseFilter(text string) loop.Filter {
	if text == "*" || b.cfg.ParseFilter == nil {
		return nil
	}
	f, err := b.cfg.ParseFilter(text)
	if err != nil {
		return nil
	}
	return f
}

// peerGone forgets a replica: its members leave (upstreams here hear them
// close), its interest detaches (a port nobody wants any more closes).
func (b *Bus) peerGone(node uint16) {
	delete(b.peers, node)
	for _, sp := range b.spans {
		sp.dropRecords(func(r *record) bool { return r.node == node })
		delete(sp.snapGen, node)
		for k, n := range sp.heard {
			if n == node {
				delete(sp.heard, k)
			}
		}
	}
	for key, byNode := range b.interest {
		if byNode[node] != nil {
			b.setInterest(node, key, 0, "")
		}
	}
	for _, g := range b.queries {
		g.gone(node)
	}
}

// frame handles a frame about a spanning channel open here.
func (sp *span) frame(node uint16, f *Frame) {
	b := sp.b
	ch := sp.ch
	switch f.Type {
	case FrameEvent:
		b.c.EventsIn++
		if f.Flags&FlagTransient != 0 {
			m := &sp.transient
			m.ID, m.IP = f.ID, sp.addr(f.IP)
			sp.hear(mkey{m.ID, m.IP}, node)
			m.IPText = append(m.IPText[:0], f.IP...)
			m.Label = append(m.Label[:0], f.Label...)
			ch.Publish(loop.EventType(f.Event), m, f.Flags&FlagText != 0, f.Data)
			return
		}
		k := mkey{f.ID, sp.addr(f.IP)}
		r := sp.records[k]
		switch loop.EventType(f.Event) {
		case loop.MemberOpened:
			if r == nil {
				sp.addRecord(node, k, f, true)
			}
		case loop.MemberData:
			if r == nil {
				r = sp.addRecord(node, k, f, ch.Policy.Announce)
			}
			if rp, ok := ch.Owner().(loop.Replayer); ok {
				rp.Replay(ch, &r.Member, f.Flags&FlagText != 0, f.Data)
			} else {
				ch.Publish(loop.MemberData, &r.Member, f.Flags&FlagText != 0, f.Data)
			}
		case loop.MemberClosed:
			if r != nil {
				delete(sp.records, k)
				ch.Leave(&r.Member)
			}
		}
	case FrameWrite:
		if f.Flags&FlagTransient != 0 {
			if o, ok := ch.Owner().(loop.TransientOwner); ok {
				o.SendTransient(ch, f.ID, f.IP, f.Data)
			}
			return
		}
		if m := sp.local[mkey{f.ID, sp.addr(f.IP)}]; m != nil {
			b.hub.Send(m, f.Flags&FlagText != 0, f.Data)
		}
	case FrameClose:
		if m := sp.local[mkey{f.ID, parseIP(f.IP)}]; m != nil && m.Conn != nil {
			m.Conn.End(loop.EndClosedByUpstream, "closed by an upstream on another replica")
		}
	case FrameBroadcast:
		sp.replaying = true
		ch.Broadcast(f.Flags&FlagText != 0, f.Data)
		sp.replaying = false
	case FrameSnapBegin:
		sp.snapGen[node]++
	case FrameSnapMember:
		k := mkey{f.ID, parseIP(f.IP)}
		r := sp.records[k]
		if r == nil {
			r = sp.addRecord(node, k, f, ch.Policy.Announce)
		}
		r.gen = sp.snapGen[node]
	case FrameSnapEnd:
		gen := sp.snapGen[node]
		sp.dropRecords(func(r *record) bool { return r.node == node && r.gen != gen })
	}
}

// addr parses an IP as members carry it; a run of events from one address
// parses it once.
func (sp *span) addr(text []byte) netip.Addr {
	if !bytes.Equal(text, sp.lastIPText) {
		sp.lastIPText = append(sp.lastIPText[:0], text...)
		sp.lastIP = parseIP(text)
	}
	return sp.lastIP
}

// addRecord makes the record of a member another replica holds.
func (sp *span) addRecord(node uint16, k mkey, f *Frame, announce bool) *record {
	r := &record{node: node, gen: sp.snapGen[node]}
	r.ID, r.IP = k.id, k.ip
	r.IPText = append([]byte(nil), f.IP...)
	if len(f.Label) > 0 {
		r.Label = append([]byte(nil), f.Label...)
	}
	sp.records[k] = r
	sp.ch.JoinRemote(&r.Member, announce)
	return r
}
