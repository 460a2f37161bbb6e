package rooms

import (
	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/codec"
	"github.com/placeos-gnet/dispatch/loop"
)

// linkFormat is how a Monolith link receives: each event as one masked
// text frame (the balancer is the link's client side). A member's payload
// becomes client_msg, the client's JSON placed verbatim inside the
// envelope; a member leaving becomes leave. A member's arrival is not
// framed: join carries the client's token, which the kind sends itself
// just before the client joins the room's channel. An event without a
// member is a message of the balancer's own (init, join, unload), sent
// whole. The member's Label is its client id as a JSON string.
var linkFormat = loop.NewSealedFormat("rooms-monolith", frameLink, codec.MaskFrame)

const (
	clientMsgHead = `{"type":"client_msg","payload":{"client_id":`
	clientMsgMid  = `,"payload":`
	leaveHead     = `{"type":"leave","payload":{"client":`
	envelopeTail  = "}}"
)

var tail = []byte(envelopeTail)

func frameLink(dst []byte, ev *loop.Event) ([]byte, []byte, bool) {
	m := ev.Member
	switch {
	case m == nil && ev.Type == loop.MemberData:
		return codec.AppendMaskedFrameHeader(dst, ws.OpText, len(ev.Data), loop.NewMask()), nil, true
	case m == nil:
		return dst, nil, false
	case ev.Type == loop.MemberData:
		n := len(clientMsgHead) + len(m.Label) + len(clientMsgMid) + len(ev.Data) + len(envelopeTail)
		dst = codec.AppendMaskedFrameHeader(dst, ws.OpText, n, loop.NewMask())
		dst = append(dst, clientMsgHead...)
		dst = append(dst, m.Label...)
		return append(dst, clientMsgMid...), tail, true
	case ev.Type == loop.MemberClosed:
		n := len(leaveHead) + len(m.Label) + len(envelopeTail)
		dst = codec.AppendMaskedFrameHeader(dst, ws.OpText, n, loop.NewMask())
		dst = append(dst, leaveHead...)
		dst = append(dst, m.Label...)
		return append(dst, envelopeTail...), nil, true
	}
	return dst, nil, false
}
