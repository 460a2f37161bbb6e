package main

// Socket groups against the real binary: configuration from the
// environment, TCP and UDP groups, a driver attached to a group, and the
// groups document beside an unchanged dispatch stats document.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"
)

const groupPrefix = "SOCKETFORWARDER-NEW:"

// groupServer is a server process with its group listener addresses.
type groupServer struct {
	*server
	tcpAddr string
	udpPort int
}

var groupListening = regexp.MustCompile(`msg="group listening" proto=(tcp|udp) addr=(\S+)`)

// startGroupServer starts the binary with both group listeners on loopback
// ports of its choosing; env may override any setting.
func startGroupServer(t *testing.T, env ...string) *groupServer {
	t.Helper()
	secret := "e2e-secret-" + randomHex(t, 16)
	env = append([]string{"PLACE_SERVER_SECRET=" + secret, "LOG_LEVEL=debug",
		"DISPATCH_GROUP_TCP=127.0.0.1:0", "DISPATCH_GROUP_UDP=127.0.0.1:0"}, env...)
	g := &groupServer{server: launchServer(t, secret, env...)}
	// The group listeners log their addresses before the ready line.
	for _, m := range groupListening.FindAllStringSubmatch(g.logs.String(), -1) {
		if m[1] == "tcp" {
			g.tcpAddr = m[2]
			continue
		}
		_, port, _ := net.SplitHostPort(m[2])
		g.udpPort, _ = strconv.Atoi(port)
	}
	if g.tcpAddr == "" || g.udpPort == 0 {
		t.Fatalf("no group listening lines:\n%s", g.logs.String())
	}
	return g
}

func (g *groupServer) udpGroupID() string { return strconv.Itoa(g.udpPort) }

// member connects to the TCP group listener from fromIP and sends first, if any.
func (g *groupServer) member(t *testing.T, fromIP, first string) *net.TCPConn {
	t.Helper()
	dialer := net.Dialer{Timeout: eventTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(fromIP)}}
	conn, err := dialer.Dial("tcp", g.tcpAddr)
	if err != nil {
		t.Fatalf("member from %s: %v", fromIP, err)
	}
	t.Cleanup(func() { conn.Close() })
	if first != "" {
		deviceSend(t, conn, []byte(first))
	}
	return conn.(*net.TCPConn)
}

func (g *groupServer) join(t *testing.T, group string) *net.TCPConn {
	t.Helper()
	return g.member(t, localhost, groupPrefix+group+"\n")
}

// groupsDocument fetches GET .../groups with the token.
func (g *groupServer) groupsDocument(t *testing.T) string {
	t.Helper()
	r := g.get(t, basePath+"/groups", g.bearerHeader())
	if r.status != http.StatusOK || r.contentType != "application/json" {
		t.Fatalf("groups: %d %s %q", r.status, r.contentType, r.body)
	}
	return r.body
}

// waitGroupMembers polls the groups document until the group has n members.
func (g *groupServer) waitGroupMembers(t *testing.T, proto, id string, n int) {
	t.Helper()
	deadline := time.Now().Add(eventTimeout)
	for {
		var doc map[string]map[string]struct{ Members int }
		body := g.groupsDocument(t)
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			t.Fatalf("groups document %q: %v", body, err)
		}
		if doc[proto][id].Members == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s group %q never had %d members: %s", proto, id, n, body)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

func (g *groupServer) register(t *testing.T, peer *net.UDPConn) {
	t.Helper()
	sendDatagram(t, peer, g.udpPort, []byte(groupPrefix+strconv.FormatUint(udpPort(peer), 10)))
}

func TestGroupsTCPMembersForwardToEachOtherOnly(t *testing.T) {
	t.Parallel()
	g := startGroupServer(t)
	m1, m2, m3 := g.join(t, "e2e"), g.join(t, "e2e"), g.join(t, "e2e")
	other := g.join(t, "other")
	refused := g.member(t, localhost, "HELLO\n")
	expectDeviceDisconnected(t, refused)
	g.waitGroupMembers(t, "tcp", "e2e", 3)

	deviceSend(t, m1, []byte("from one"))
	expectDeviceReceives(t, m2, []byte("from one"))
	expectDeviceReceives(t, m3, []byte("from one"))
	deviceSend(t, m2, []byte("from two"))
	expectDeviceReceives(t, m1, []byte("from two")) // its own bytes never came back
	expectDeviceReceives(t, m3, []byte("from two"))
	partner := g.join(t, "other")
	g.waitGroupMembers(t, "tcp", "other", 2)
	deviceSend(t, partner, []byte("other group"))
	expectDeviceReceives(t, other, []byte("other group")) // nothing from "e2e" leaked

	want := fmt.Sprintf(`{"tcp":{"e2e":{"members":3,"upstreams":0,"bytes_forwarded":16},`+
		`"other":{"members":2,"upstreams":0,"bytes_forwarded":11}},"udp":{"%d":{"members":0,"upstreams":0,"bytes_forwarded":0}}}`, g.udpPort)
	if got := g.groupsDocument(t); got != want {
		t.Fatalf("groups document\n  %s\nwant\n  %s", got, want)
	}
	expectResponse(t, "groups without a token", g.get(t, basePath+"/groups"), http.StatusUnauthorized, "application/json", invalidTokenBody)
	expectResponse(t, "dispatch stats", g.get(t, basePath, g.bearerHeader()), http.StatusOK, "application/json", emptyStats)
}

func TestGroupsTCPJoinConfiguration(t *testing.T) {
	t.Parallel()
	g := startGroupServer(t,
		"DISPATCH_GROUP_PREFIX=JOIN ",
		"DISPATCH_GROUP_JOIN_TIMEOUT=300ms",
		"DISPATCH_GROUP_TCP_PRECONFIG=pre:127.0.0.2")
	first := g.member(t, localhost, "JOIN pre\n")
	g.waitGroupMembers(t, "tcp", "pre", 1)
	preconfigured := g.member(t, "127.0.0.2", "")
	g.waitGroupMembers(t, "tcp", "pre", 2)
	legacy := g.member(t, localhost, "JOIN pre") // no newline: joins at the deadline
	g.waitGroupMembers(t, "tcp", "pre", 3)
	silent := g.member(t, localhost, "")

	deviceSend(t, preconfigured, []byte("no prefix needed"))
	expectDeviceReceives(t, first, []byte("no prefix needed"))
	expectDeviceReceives(t, legacy, []byte("no prefix needed"))
	expectDeviceDisconnected(t, silent)
}

func TestGroupsUDPRegistrationPreconfigAndStrangers(t *testing.T) {
	t.Parallel()
	pre := udpPeer(t, localhost)
	g := startGroupServer(t, "DISPATCH_GROUP_UDP_PRECONFIG="+pre.LocalAddr().String())
	id := g.udpGroupID()
	g.waitGroupMembers(t, "udp", id, 1)
	member := udpPeer(t, localhost)
	g.register(t, member)
	g.waitGroupMembers(t, "udp", id, 2)

	sendDatagram(t, member, g.udpPort, []byte("to pre"))
	if from := expectDatagram(t, pre, []byte("to pre")); from.Port != g.udpPort {
		t.Fatalf("forwarded from port %d, want the group port %d", from.Port, g.udpPort)
	}
	stranger := udpPeer(t, "127.0.0.2")
	sendDatagram(t, stranger, g.udpPort, []byte("dropped"))
	sendDatagram(t, pre, g.udpPort, []byte("to member"))
	expectDatagram(t, member, []byte("to member")) // not "dropped", and "to pre" was not echoed
}

func TestGroupsDriverAttachedToAGroup(t *testing.T) {
	t.Parallel()
	g := startGroupServer(t)
	m1 := g.join(t, "mix")
	g.waitGroupMembers(t, "tcp", "mix", 1)
	d := g.mustDialDriver(t, legacyBasePath+"/group_dispatch?group=mix")
	d.expectOpened(localhost, 0)
	m2 := g.join(t, "mix")
	d.expectOpened(localhost, 1)

	deviceSend(t, m1, []byte("hello"))
	expectDeviceReceives(t, m2, []byte("hello"))
	d.expectReceived(localhost, 0, []byte("hello"))
	d.write(localhost, 1, []byte("driver to two"))
	expectDeviceReceives(t, m2, []byte("driver to two"))
	deviceSend(t, m2, []byte("two"))
	expectDeviceReceives(t, m1, []byte("two")) // the driver's WRITE stayed with m2
	d.expectReceived(localhost, 1, []byte("two"))
	d.closeClient(localhost, 0)
	d.expectClientClosed(localhost, 0)
	expectDeviceDisconnected(t, m1)

	u := g.mustDialDriver(t, basePath+"/group_dispatch?proto=udp&group="+g.udpGroupID()+"&accept=127.0.0.1")
	peer := udpPeer(t, localhost)
	g.register(t, peer)
	u.expectOpened(localhost, udpPort(peer))
	sendDatagram(t, peer, g.udpPort, []byte("datagram"))
	u.expectReceived(localhost, udpPort(peer), []byte("datagram"))
	u.write(localhost, udpPort(peer), []byte("answer"))
	expectDatagram(t, peer, []byte("answer"))

	d.leave()
	g.waitGroupMembers(t, "tcp", "mix", 1) // the group outlives its driver
	expectResponse(t, "dispatch stats", g.get(t, basePath, g.bearerHeader()), http.StatusOK, "application/json", emptyStats)
}
