package main

// Socket groups against the real binary: configuration from the
// environment, TCP and UDP groups, a driver attached to a group, and the
// groups document beside an unchanged dispatch stats document.

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

// groupListeners turns both group listeners on, on loopback ports of the
// server's choosing.
var groupListeners = []string{"DISPATCH_GROUP_TCP=127.0.0.1:0", "DISPATCH_GROUP_UDP=127.0.0.1:0"}

// startGroupServer starts the binary with both group listeners; env may
// override any setting.
func startGroupServer(t *testing.T, env ...string) *testkit.Process {
	t.Helper()
	return testkit.Start(t, append(groupListeners[:len(groupListeners):len(groupListeners)], env...)...)
}

func TestGroupsTCPMembersForwardToEachOtherOnly(t *testing.T) {
	t.Parallel()
	s := startGroupServer(t)
	udpPort := testkit.GroupUDPPort(t, s)
	m1, m2, m3 := testkit.Join(t, s, testkit.Localhost, "e2e"), testkit.Join(t, s, testkit.Localhost, "e2e"), testkit.Join(t, s, testkit.Localhost, "e2e")
	other := testkit.Join(t, s, testkit.Localhost, "other")
	refused := testkit.DialMember(t, s, testkit.Localhost)
	testkit.Send(t, refused, []byte("HELLO\n"))
	testkit.ExpectDisconnected(t, refused)
	testkit.WaitGroupMembers(t, s, "tcp", "e2e", 3)

	testkit.Send(t, m1, []byte("from one"))
	testkit.ExpectReceives(t, m2, []byte("from one"))
	testkit.ExpectReceives(t, m3, []byte("from one"))
	testkit.Send(t, m2, []byte("from two"))
	testkit.ExpectReceives(t, m1, []byte("from two")) // its own bytes never came back
	testkit.ExpectReceives(t, m3, []byte("from two"))
	partner := testkit.Join(t, s, testkit.Localhost, "other")
	testkit.WaitGroupMembers(t, s, "tcp", "other", 2)
	testkit.Send(t, partner, []byte("other group"))
	testkit.ExpectReceives(t, other, []byte("other group")) // nothing from "e2e" leaked

	want := fmt.Sprintf(`{"tcp":{"e2e":{"members":3,"upstreams":0,"bytes_forwarded":16},`+
		`"other":{"members":2,"upstreams":0,"bytes_forwarded":11}},"udp":{"%d":{"members":0,"upstreams":0,"bytes_forwarded":0}}}`, udpPort)
	if got := testkit.GroupsDocument(t, s); got != want {
		t.Fatalf("groups document\n  %s\nwant\n  %s", got, want)
	}
	testkit.ExpectResponse(t, "groups without a token", testkit.Get(t, s, testkit.BasePath+"/groups"), http.StatusUnauthorized, "application/json", testkit.InvalidTokenBody)
	testkit.ExpectResponse(t, "dispatch stats", testkit.Get(t, s, testkit.BasePath, testkit.BearerHeader(s)), http.StatusOK, "application/json", testkit.EmptyStats)
}

func TestGroupsTCPJoinConfiguration(t *testing.T) {
	t.Parallel()
	s := startGroupServer(t,
		"DISPATCH_GROUP_PREFIX=JOIN ",
		"DISPATCH_GROUP_JOIN_TIMEOUT=300ms",
		"DISPATCH_GROUP_TCP_PRECONFIG=pre:127.0.0.2")
	first := testkit.DialMember(t, s, testkit.Localhost)
	testkit.Send(t, first, []byte("JOIN pre\n"))
	testkit.WaitGroupMembers(t, s, "tcp", "pre", 1)
	preconfigured := testkit.DialMember(t, s, "127.0.0.2")
	testkit.WaitGroupMembers(t, s, "tcp", "pre", 2)
	legacy := testkit.DialMember(t, s, testkit.Localhost)
	testkit.Send(t, legacy, []byte("JOIN pre")) // no newline: joins at the deadline
	testkit.WaitGroupMembers(t, s, "tcp", "pre", 3)
	silent := testkit.DialMember(t, s, testkit.Localhost)

	testkit.Send(t, preconfigured, []byte("no prefix needed"))
	testkit.ExpectReceives(t, first, []byte("no prefix needed"))
	testkit.ExpectReceives(t, legacy, []byte("no prefix needed"))
	testkit.ExpectDisconnected(t, silent)
}

func TestGroupsUDPRegistrationPreconfigAndStrangers(t *testing.T) {
	t.Parallel()
	pre := testkit.UDPPeer(t, testkit.Localhost)
	s := startGroupServer(t, "DISPATCH_GROUP_UDP_PRECONFIG="+pre.LocalAddr().String())
	udpPort := testkit.GroupUDPPort(t, s)
	id := strconv.Itoa(udpPort)
	testkit.WaitGroupMembers(t, s, "udp", id, 1)
	member := testkit.UDPPeer(t, testkit.Localhost)
	testkit.RegisterUDPMember(t, s, member)
	testkit.WaitGroupMembers(t, s, "udp", id, 2)

	testkit.SendDatagram(t, member, udpPort, []byte("to pre"))
	if from := testkit.ExpectDatagram(t, pre, []byte("to pre")); from.Port != udpPort {
		t.Fatalf("forwarded from port %d, want the group port %d", from.Port, udpPort)
	}
	stranger := testkit.UDPPeer(t, "127.0.0.2")
	testkit.SendDatagram(t, stranger, udpPort, []byte("dropped"))
	testkit.SendDatagram(t, pre, udpPort, []byte("to member"))
	testkit.ExpectDatagram(t, member, []byte("to member")) // not "dropped", and "to pre" was not echoed
}

func TestGroupsDriverAttachedToAGroup(t *testing.T) {
	t.Parallel()
	s := startGroupServer(t)
	udpPort := testkit.GroupUDPPort(t, s)
	m1 := testkit.Join(t, s, testkit.Localhost, "mix")
	testkit.WaitGroupMembers(t, s, "tcp", "mix", 1)
	d := testkit.MustDialDriver(t, s, testkit.LegacyBasePath+"/group_dispatch?group=mix")
	d.ExpectOpened(testkit.Localhost, 0)
	m2 := testkit.Join(t, s, testkit.Localhost, "mix")
	d.ExpectOpened(testkit.Localhost, 1)

	testkit.Send(t, m1, []byte("hello"))
	testkit.ExpectReceives(t, m2, []byte("hello"))
	d.ExpectReceived(testkit.Localhost, 0, []byte("hello"))
	d.Write(testkit.Localhost, 1, []byte("driver to two"))
	testkit.ExpectReceives(t, m2, []byte("driver to two"))
	testkit.Send(t, m2, []byte("two"))
	testkit.ExpectReceives(t, m1, []byte("two")) // the driver's WRITE stayed with m2
	d.ExpectReceived(testkit.Localhost, 1, []byte("two"))
	d.CloseClient(testkit.Localhost, 0)
	d.ExpectClosed(testkit.Localhost, 0)
	testkit.ExpectDisconnected(t, m1)

	u := testkit.MustDialDriver(t, s, testkit.BasePath+"/group_dispatch?proto=udp&group="+strconv.Itoa(udpPort)+"&accept=127.0.0.1")
	peer := testkit.UDPPeer(t, testkit.Localhost)
	testkit.RegisterUDPMember(t, s, peer)
	u.ExpectOpened(testkit.Localhost, testkit.UDPPort(peer))
	testkit.SendDatagram(t, peer, udpPort, []byte("datagram"))
	u.ExpectReceived(testkit.Localhost, testkit.UDPPort(peer), []byte("datagram"))
	u.Write(testkit.Localhost, testkit.UDPPort(peer), []byte("answer"))
	testkit.ExpectDatagram(t, peer, []byte("answer"))

	d.Leave()
	testkit.WaitGroupMembers(t, s, "tcp", "mix", 1) // the group outlives its driver
	testkit.ExpectResponse(t, "dispatch stats", testkit.Get(t, s, testkit.BasePath, testkit.BearerHeader(s)), http.StatusOK, "application/json", testkit.EmptyStats)
}
