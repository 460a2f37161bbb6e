package main

// Spec §2: HTTP endpoints, authentication and parameters.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestHealthzAnswersWithoutAuth(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, base := range []string{basePath, legacyBasePath} {
		expectResponse(t, base+"/healthz", s.get(t, base+"/healthz"), http.StatusOK, "", "")
	}
}

func TestVersionKeysInOrder(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, base := range []string{basePath, legacyBasePath} {
		r := s.get(t, base+"/version")
		if r.status != http.StatusOK {
			t.Fatalf("%s/version: status %d", base, r.status)
		}
		dec := json.NewDecoder(strings.NewReader(r.body))
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			t.Fatalf("%s/version: body %q is not a JSON object", base, r.body)
		}
		var keys []string
		values := map[string]any{}
		for dec.More() {
			key, err := dec.Token()
			if err != nil {
				t.Fatalf("%s/version: %v in %q", base, err, r.body)
			}
			var value any
			if err := dec.Decode(&value); err != nil {
				t.Fatalf("%s/version: %v in %q", base, err, r.body)
			}
			keys = append(keys, key.(string))
			values[key.(string)] = value
		}
		want := "service,commit,version,build_time,platform_version"
		if got := strings.Join(keys, ","); got != want {
			t.Errorf("%s/version: keys %s, want %s (body %s)", base, got, want, r.body)
		}
		if values["service"] != "dispatch" {
			t.Errorf(`%s/version: service %v, want "dispatch"`, base, values["service"])
		}
	}
}

func TestAuthRejectsWrongOrMissingToken(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	port := freeTCPPort(t)
	cases := []struct {
		name    string
		query   string
		headers []string
	}{
		{"no token", "", nil},
		{"wrong query token", "bearer_token=wrong-token", nil},
		{"wrong header token", "", []string{"Authorization: Bearer wrong-token"}},
		{"wrong header wins over right query", "bearer_token=" + s.secret, []string{"Authorization: Bearer wrong-token"}},
		{"empty header ignores query", "bearer_token=" + s.secret, []string{"Authorization:"}},
		{"lower-case bearer prefix", "", []string{"Authorization: bearer " + s.secret}},
		{"leading space left after prefix", "", []string{"Authorization: Bearer  " + s.secret}},
		{"secret prefix only", "bearer_token=" + s.secret[:len(s.secret)-1], nil},
	}
	for _, c := range cases {
		stats := basePath + "?" + c.query
		expectResponse(t, c.name+": stats", s.get(t, stats, c.headers...),
			http.StatusUnauthorized, "application/json", invalidTokenBody)
		for _, kind := range []string{"tcp", "udp"} {
			target := dispatchTarget(basePath, kind, port, localhost) + "&" + c.query
			expectResponse(t, c.name+": "+kind+"_dispatch", s.getUpgrade(t, target, c.headers...),
				http.StatusUnauthorized, "application/json", invalidTokenBody)
		}
	}
	if got := s.statsBody(t); got != emptyStats {
		t.Errorf("a rejected upgrade opened a port: stats %s", got)
	}
}

func TestAuthAcceptsHeaderAndQueryTokens(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	cases := []struct {
		name    string
		query   string
		headers []string
	}{
		{"Bearer header", "", []string{"Authorization: Bearer " + s.secret}},
		{"bare header", "", []string{"Authorization: " + s.secret}},
		{"header with trailing spaces", "", []string{"Authorization: Bearer " + s.secret + "   "}},
		{"header wins over wrong query", "bearer_token=wrong-token", []string{"Authorization: Bearer " + s.secret}},
		{"query", "bearer_token=" + s.secret, nil},
		{"query with spaces around", "bearer_token=%20" + s.secret + "%20", nil},
	}
	for _, c := range cases {
		expectResponse(t, c.name, s.get(t, basePath+"?"+c.query, c.headers...),
			http.StatusOK, "application/json", emptyStats)
	}

	// A driver authenticating with the query token alone works end to end.
	var d *driver
	port := onFreePort(t, freeTCPPort, func(port int) (err error) {
		d, err = s.dialDriver(t, dispatchTarget(basePath, "tcp", port, localhost)+"&bearer_token="+s.secret, http.Header{})
		return err
	})
	dialDevice(t, localhost, port)
	d.expectOpened(localhost, 0)
}

func TestPlainGetToDispatchRouteIs426(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	port := freeTCPPort(t)
	for _, kind := range []string{"tcp", "udp"} {
		r := s.get(t, dispatchTarget(basePath, kind, port, localhost), s.bearerHeader())
		if r.status != http.StatusUpgradeRequired {
			t.Errorf("%s_dispatch without upgrade: status %d, want 426 (body %q)", kind, r.status, r.body)
		} else if !strings.HasPrefix(r.contentType, "text/plain") {
			t.Errorf("%s_dispatch without upgrade: Content-Type %q, want text/plain", kind, r.contentType)
		}
	}
	if got := s.statsBody(t); got != emptyStats {
		t.Errorf("a plain GET opened a port: stats %s", got)
	}
}

func TestUnknownPathIs404(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, path := range []string{"/", "/api", "/api/dispatch/v2", basePath + "/nope", basePath + "/tcp_dispatch/x", legacyBasePath + "/nope"} {
		if r := s.get(t, path, s.bearerHeader()); r.status != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404 (body %q)", path, r.status, r.body)
		}
	}
}

func TestMissingParameterIs422(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	port := freeTCPPort(t)
	for _, kind := range []string{"tcp", "udp"} {
		route := basePath + "/" + kind + "_dispatch"
		expectResponse(t, kind+" without port", s.getUpgrade(t, route+"?accept=127.0.0.1", s.bearerHeader()),
			http.StatusUnprocessableEntity, "application/json",
			`{"error":"missing required parameter 'port'","parameter":"port"}`)
		expectResponse(t, kind+" without accept", s.getUpgrade(t, fmt.Sprintf("%s?port=%d", route, port), s.bearerHeader()),
			http.StatusUnprocessableEntity, "application/json",
			`{"error":"missing required parameter 'accept'","parameter":"accept"}`)
	}
	if got := s.statsBody(t); got != emptyStats {
		t.Errorf("a refused upgrade opened a port: stats %s", got)
	}
}

func TestInvalidPortIs400(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	for _, kind := range []string{"tcp", "udp"} {
		for _, port := range []string{"0", "65536", "abc", "-1", "99999999999999999999"} {
			target := fmt.Sprintf("%s/%s_dispatch?port=%s&accept=127.0.0.1", basePath, kind, port)
			expectResponse(t, kind+" port="+port, s.getUpgrade(t, target, s.bearerHeader()),
				http.StatusBadRequest, "application/json",
				`{"error":"invalid parameter value for 'port'","parameter":"port"}`)
		}
	}
	if got := s.statsBody(t); got != emptyStats {
		t.Errorf("a refused upgrade opened a port: stats %s", got)
	}
}

func TestInvalidAcceptIs400(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	port := freeTCPPort(t)
	for _, kind := range []string{"tcp", "udp"} {
		for _, accept := range []string{"not-an-ip", "127.0.0.1,bogus", "300.1.1.1", "127.0.0.1/33", "127.0.0.1:80"} {
			expectResponse(t, kind+" accept="+accept, s.getUpgrade(t, dispatchTarget(basePath, kind, port, accept), s.bearerHeader()),
				http.StatusBadRequest, "application/json",
				`{"error":"invalid parameter value for 'accept'","parameter":"accept"}`)
		}
	}
	if got := s.statsBody(t); got != emptyStats {
		t.Errorf("a refused upgrade opened a port: stats %s", got)
	}
}

func TestDevicePortInUseIs409(t *testing.T) {
	t.Parallel()
	s := startServer(t)

	heldTCP, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer heldTCP.Close()
	heldUDP, err := net.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer heldUDP.Close()

	for kind, port := range map[string]int{
		"tcp": heldTCP.Addr().(*net.TCPAddr).Port,
		"udp": heldUDP.LocalAddr().(*net.UDPAddr).Port,
	} {
		r := s.getUpgrade(t, dispatchTarget(basePath, kind, port, localhost), s.bearerHeader())
		if r.status != http.StatusConflict {
			t.Errorf("%s port %d held elsewhere: status %d, want 409 (body %q)", kind, port, r.status, r.body)
			continue
		}
		if !strings.HasPrefix(r.contentType, "application/json") {
			t.Errorf("%s 409: Content-Type %q, want application/json", kind, r.contentType)
		}
		var body struct{ Error string }
		if err := json.Unmarshal([]byte(r.body), &body); err != nil || !strings.Contains(body.Error, "address already in use") {
			t.Errorf("%s 409: body %q, want the OS error in \"error\"", kind, r.body)
		}
	}
	if got := s.statsBody(t); got != emptyStats {
		t.Errorf("a refused upgrade left a registration: stats %s", got)
	}
}

func TestAcceptListParsing(t *testing.T) {
	t.Parallel()

	t.Run("entries trimmed and empty ones dropped", func(t *testing.T) {
		t.Parallel()
		s := startServer(t)
		d, port := s.openPort(t, "tcp", ",%20127.0.0.2%20,,%20127.0.0.1,")
		dialDevice(t, localhost, port)
		d.expectOpened(localhost, 0)
		dialDevice(t, "127.0.0.2", port)
		d.expectOpened("127.0.0.2", 1)
	})

	t.Run("duplicates deliver once", func(t *testing.T) {
		t.Parallel()
		s := startServer(t)
		d, port := s.openPort(t, "tcp", "127.0.0.1,127.0.0.1,127.0.0.0/8")
		dev := dialDevice(t, localhost, port)
		d.expectOpened(localhost, 0)
		deviceSend(t, dev, []byte("once"))
		d.expectReceived(localhost, 0, []byte("once"))
	})

	t.Run("IPv6", func(t *testing.T) {
		t.Parallel()
		if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
			t.Skip("no IPv6 loopback:", err)
		} else {
			ln.Close()
		}
		s := startServer(t)
		d, port := s.openPort(t, "tcp", "::1")
		dev := dialDevice(t, "::1", port)
		d.expectOpened("::1", 0)
		deviceSend(t, dev, []byte("v6"))
		d.expectReceived("::1", 0, []byte("v6"))
		// 127.0.0.1 is not listed.
		expectDeviceDisconnected(t, dialDevice(t, localhost, port))
	})

	t.Run("CIDR range", func(t *testing.T) {
		t.Parallel()
		s := startServer(t)
		d, port := s.openPort(t, "tcp", "127.0.0.0/30")
		dialDevice(t, localhost, port)
		d.expectOpened(localhost, 0)
		dialDevice(t, "127.0.0.3", port)
		d.expectOpened("127.0.0.3", 1)
		expectDeviceDisconnected(t, dialDevice(t, "127.0.0.4", port))
		dialDevice(t, "127.0.0.2", port)
		d.expectOpened("127.0.0.2", 2)
	})

	t.Run("IPv4-mapped IPv6 equals IPv4", func(t *testing.T) {
		t.Parallel()
		s := startServer(t)
		d, port := s.openPort(t, "tcp", "::ffff:127.0.0.1")
		dev := dialDevice(t, localhost, port)
		d.expectOpened(localhost, 0)
		deviceSend(t, dev, []byte("mapped"))
		d.expectReceived(localhost, 0, []byte("mapped"))
	})

	t.Run("empty list accepts nobody", func(t *testing.T) {
		t.Parallel()
		s := startServer(t)
		_, port := s.openPort(t, "tcp", "")
		s.waitForStats(t, tcpStats(port, 1, 0))
		expectDeviceDisconnected(t, dialDevice(t, localhost, port))
	})
}

func TestLegacyBasePath(t *testing.T) {
	t.Parallel()
	s := startServer(t)

	for _, path := range []string{legacyBasePath, legacyBasePath + "/"} {
		expectResponse(t, path, s.get(t, path, s.bearerHeader()), http.StatusOK, "application/json", emptyStats)
		expectResponse(t, path+" without token", s.get(t, path), http.StatusUnauthorized, "application/json", invalidTokenBody)
	}

	var tcp, udp *driver
	tcpPort := onFreePort(t, freeTCPPort, func(port int) (err error) {
		tcp, err = s.dialDriver(t, dispatchTarget(legacyBasePath, "tcp", port, localhost), s.driverHeader())
		return err
	})
	dev := dialDevice(t, localhost, tcpPort)
	tcp.expectOpened(localhost, 0)
	deviceSend(t, dev, []byte("legacy tcp"))
	tcp.expectReceived(localhost, 0, []byte("legacy tcp"))
	tcp.write(localhost, 0, []byte("answer"))
	expectDeviceReceives(t, dev, []byte("answer"))

	udpPortNumber := onFreePort(t, freeUDPPort, func(port int) (err error) {
		udp, err = s.dialDriver(t, dispatchTarget(legacyBasePath, "udp", port, localhost), s.driverHeader())
		return err
	})
	peer := udpPeer(t, localhost)
	sendDatagram(t, peer, udpPortNumber, []byte("legacy udp"))
	udp.expectReceived(localhost, udpPort(peer), []byte("legacy udp"))

	// Both registrations are visible at the legacy stats path too.
	want := fmt.Sprintf(`{"udp_listeners":{"%d":1},"tcp_listeners":{"%d":1},"tcp_clients":{"%d":1}}`, udpPortNumber, tcpPort, tcpPort)
	s.waitForStatsAt(t, legacyBasePath, want)

	// The legacy dispatch routes validate like the main ones.
	expectResponse(t, "legacy tcp_dispatch without port", s.getUpgrade(t, legacyBasePath+"/tcp_dispatch?accept=127.0.0.1", s.bearerHeader()),
		http.StatusUnprocessableEntity, "application/json", `{"error":"missing required parameter 'port'","parameter":"port"}`)
}
