package testkit

import (
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"testing"
)

// JoinLine is the message that joins the TCP socket group id.
func JoinLine(id string) []byte { return []byte(GroupPrefix + id + "\n") }

// TryDialMember connects to the TCP group listener from fromIP ("" for
// any local address); nothing is sent.
func TryDialMember(s Server, fromIP string, opts ...DialOption) (*net.TCPConn, error) {
	return Dial(fromIP, s.GroupTCPAddr(), opts...)
}

// DialMember is TryDialMember that fails the test on error; the connection
// is closed when the test ends.
func DialMember(tb testing.TB, s Server, fromIP string, opts ...DialOption) *net.TCPConn {
	tb.Helper()
	if s.GroupTCPAddr() == "" {
		tb.Fatal("the server has no TCP group listener")
	}
	conn, err := TryDialMember(s, fromIP, opts...)
	if err != nil {
		tb.Fatalf("member from %s: %v", fromIP, err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// Join connects a member from fromIP and sends the join line for group id.
// It does not wait for the server to take the line: WaitGroupMembers, or a
// driver's OPENED, tells when it has.
func Join(tb testing.TB, s Server, fromIP, id string, opts ...DialOption) *net.TCPConn {
	tb.Helper()
	conn := DialMember(tb, s, fromIP, opts...)
	Send(tb, conn, JoinLine(id))
	return conn
}

// GroupUDPPort is the UDP group's port, which is also its id.
func GroupUDPPort(tb testing.TB, s Server) int {
	tb.Helper()
	_, port, err := net.SplitHostPort(s.GroupUDPAddr())
	n, _ := strconv.Atoi(port)
	if err != nil || n == 0 {
		tb.Fatalf("the server has no UDP group listener (address %q)", s.GroupUDPAddr())
	}
	return n
}

// RegisterUDPMember makes peer a member of the UDP group: the join datagram
// names the peer's own receiving port.
func RegisterUDPMember(tb testing.TB, s Server, peer *net.UDPConn) {
	tb.Helper()
	SendDatagram(tb, peer, GroupUDPPort(tb, s), []byte(GroupPrefix+strconv.FormatUint(UDPPort(peer), 10)))
}

// GroupsDocument fetches GET <BasePath>/groups with the token.
func GroupsDocument(tb testing.TB, s Server) string {
	tb.Helper()
	return GroupsDocumentAt(tb, s, BasePath)
}

// GroupsDocumentAt fetches GET <base>/groups with the token, base being
// BasePath or LegacyBasePath.
func GroupsDocumentAt(tb testing.TB, s Server, base string) string {
	tb.Helper()
	r := Get(tb, s, base+"/groups", BearerHeader(s))
	if r.Status != http.StatusOK || r.ContentType != "application/json" {
		tb.Fatalf("groups at %s: %d %s %q", base, r.Status, r.ContentType, r.Body)
	}
	return r.Body
}

// GroupCounts is one group's entry in the groups document.
type GroupCounts struct {
	Members   int `json:"members"`
	Upstreams int `json:"upstreams"`
}

// GroupsOf reads the groups of proto ("tcp" or "udp") from the groups
// document, by id.
func GroupsOf(tb testing.TB, s Server, proto string) map[string]GroupCounts {
	tb.Helper()
	body := GroupsDocument(tb, s)
	var doc map[string]map[string]GroupCounts
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		tb.Fatalf("groups document %q: %v", body, err)
	}
	return doc[proto]
}

// GroupCountsOf reads the counts of group id of proto ("tcp" or "udp"); a
// group the document does not list has none.
func GroupCountsOf(tb testing.TB, s Server, proto, id string) GroupCounts {
	tb.Helper()
	return GroupsOf(tb, s, proto)[id]
}

// WaitGroupMembers polls the groups document until the group has n members.
func WaitGroupMembers(tb testing.TB, s Server, proto, id string, n int) {
	tb.Helper()
	var got GroupCounts
	if !Poll(EventTimeout, func() bool { got = GroupCountsOf(tb, s, proto, id); return got.Members == n }) {
		tb.Fatalf("%s group %q never had %d members (last %+v): %s", proto, id, n, got, GroupsDocument(tb, s))
	}
}

// WaitGroupCounts polls the groups document until the group has exactly
// these counts.
func WaitGroupCounts(tb testing.TB, s Server, proto, id string, want GroupCounts) {
	tb.Helper()
	var got GroupCounts
	if !Poll(EventTimeout, func() bool { got = GroupCountsOf(tb, s, proto, id); return got == want }) {
		tb.Fatalf("%s group %q never had %+v (last %+v): %s", proto, id, want, got, GroupsDocument(tb, s))
	}
}
