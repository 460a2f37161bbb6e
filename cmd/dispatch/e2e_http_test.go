package main

// Spec §2: HTTP endpoints, authentication and parameters.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestHealthzAnswersWithoutAuth(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	for _, base := range []string{testkit.BasePath, testkit.LegacyBasePath} {
		testkit.ExpectResponse(t, base+"/healthz", testkit.Get(t, s, base+"/healthz"), http.StatusOK, "", "")
	}
}

func TestVersionKeysInOrder(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	for _, base := range []string{testkit.BasePath, testkit.LegacyBasePath} {
		r := testkit.Get(t, s, base+"/version")
		if r.Status != http.StatusOK {
			t.Fatalf("%s/version: status %d", base, r.Status)
		}
		dec := json.NewDecoder(strings.NewReader(r.Body))
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
			t.Fatalf("%s/version: body %q is not a JSON object", base, r.Body)
		}
		var keys []string
		values := map[string]any{}
		for dec.More() {
			key, err := dec.Token()
			if err != nil {
				t.Fatalf("%s/version: %v in %q", base, err, r.Body)
			}
			var value any
			if err := dec.Decode(&value); err != nil {
				t.Fatalf("%s/version: %v in %q", base, err, r.Body)
			}
			keys = append(keys, key.(string))
			values[key.(string)] = value
		}
		want := "service,commit,version,build_time,platform_version"
		if got := strings.Join(keys, ","); got != want {
			t.Errorf("%s/version: keys %s, want %s (body %s)", base, got, want, r.Body)
		}
		if values["service"] != "dispatch" {
			t.Errorf(`%s/version: service %v, want "dispatch"`, base, values["service"])
		}
	}
}

func TestAuthRejectsWrongOrMissingToken(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	port := testkit.FreeTCPPort(t)
	cases := []struct {
		name    string
		query   string
		headers []string
	}{
		{"no token", "", nil},
		{"wrong query token", "bearer_token=wrong-token", nil},
		{"wrong header token", "", []string{"Authorization: Bearer wrong-token"}},
		{"wrong header wins over right query", "bearer_token=" + s.Secret(), []string{"Authorization: Bearer wrong-token"}},
		{"empty header ignores query", "bearer_token=" + s.Secret(), []string{"Authorization:"}},
		{"lower-case bearer prefix", "", []string{"Authorization: bearer " + s.Secret()}},
		{"leading space left after prefix", "", []string{"Authorization: Bearer  " + s.Secret()}},
		{"secret prefix only", "bearer_token=" + s.Secret()[:len(s.Secret())-1], nil},
	}
	for _, c := range cases {
		stats := testkit.BasePath + "?" + c.query
		testkit.ExpectResponse(t, c.name+": stats", testkit.Get(t, s, stats, c.headers...),
			http.StatusUnauthorized, "application/json", testkit.InvalidTokenBody)
		for _, kind := range []string{"tcp", "udp"} {
			target := testkit.DispatchTarget(testkit.BasePath, kind, port, testkit.Localhost) + "&" + c.query
			testkit.ExpectResponse(t, c.name+": "+kind+"_dispatch", testkit.GetUpgrade(t, s, target, c.headers...),
				http.StatusUnauthorized, "application/json", testkit.InvalidTokenBody)
		}
	}
	if got := testkit.StatsBody(t, s, testkit.BasePath); got != testkit.EmptyStats {
		t.Errorf("a rejected upgrade opened a port: stats %s", got)
	}
}

func TestAuthAcceptsHeaderAndQueryTokens(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	cases := []struct {
		name    string
		query   string
		headers []string
	}{
		{"Bearer header", "", []string{"Authorization: Bearer " + s.Secret()}},
		{"bare header", "", []string{"Authorization: " + s.Secret()}},
		{"header with trailing spaces", "", []string{"Authorization: Bearer " + s.Secret() + "   "}},
		{"header wins over wrong query", "bearer_token=wrong-token", []string{"Authorization: Bearer " + s.Secret()}},
		{"query", "bearer_token=" + s.Secret(), nil},
		{"query with spaces around", "bearer_token=%20" + s.Secret() + "%20", nil},
	}
	for _, c := range cases {
		testkit.ExpectResponse(t, c.name, testkit.Get(t, s, testkit.BasePath+"?"+c.query, c.headers...),
			http.StatusOK, "application/json", testkit.EmptyStats)
	}

	// A driver authenticating with the query token alone works end to end.
	var d *testkit.Driver
	port := testkit.OnFreePort(t, testkit.FreeTCPPort, func(port int) (err error) {
		d, err = testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.BasePath, "tcp", port, testkit.Localhost)+"&bearer_token="+s.Secret(), http.Header{})
		return err
	})
	testkit.DialDevice(t, testkit.Localhost, port)
	d.ExpectOpened(testkit.Localhost, 0)
}

func TestPlainGetToDispatchRouteIs426(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	port := testkit.FreeTCPPort(t)
	for _, kind := range []string{"tcp", "udp"} {
		r := testkit.Get(t, s, testkit.DispatchTarget(testkit.BasePath, kind, port, testkit.Localhost), testkit.BearerHeader(s))
		if r.Status != http.StatusUpgradeRequired {
			t.Errorf("%s_dispatch without upgrade: status %d, want 426 (body %q)", kind, r.Status, r.Body)
		} else if !strings.HasPrefix(r.ContentType, "text/plain") {
			t.Errorf("%s_dispatch without upgrade: Content-Type %q, want text/plain", kind, r.ContentType)
		}
	}
	if got := testkit.StatsBody(t, s, testkit.BasePath); got != testkit.EmptyStats {
		t.Errorf("a plain GET opened a port: stats %s", got)
	}
}

func TestUnknownPathIs404(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	for _, path := range []string{"/", "/api", "/api/dispatch/v2", testkit.BasePath + "/nope", testkit.BasePath + "/tcp_dispatch/x", testkit.LegacyBasePath + "/nope"} {
		if r := testkit.Get(t, s, path, testkit.BearerHeader(s)); r.Status != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404 (body %q)", path, r.Status, r.Body)
		}
	}
}

func TestMissingParameterIs422(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	port := testkit.FreeTCPPort(t)
	for _, kind := range []string{"tcp", "udp"} {
		route := testkit.BasePath + "/" + kind + "_dispatch"
		testkit.ExpectResponse(t, kind+" without port", testkit.GetUpgrade(t, s, route+"?accept=127.0.0.1", testkit.BearerHeader(s)),
			http.StatusUnprocessableEntity, "application/json",
			`{"error":"missing required parameter 'port'","parameter":"port"}`)
		testkit.ExpectResponse(t, kind+" without accept", testkit.GetUpgrade(t, s, fmt.Sprintf("%s?port=%d", route, port), testkit.BearerHeader(s)),
			http.StatusUnprocessableEntity, "application/json",
			`{"error":"missing required parameter 'accept'","parameter":"accept"}`)
	}
	if got := testkit.StatsBody(t, s, testkit.BasePath); got != testkit.EmptyStats {
		t.Errorf("a refused upgrade opened a port: stats %s", got)
	}
}

func TestInvalidPortIs400(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	for _, kind := range []string{"tcp", "udp"} {
		for _, port := range []string{"0", "65536", "abc", "-1", "99999999999999999999"} {
			target := fmt.Sprintf("%s/%s_dispatch?port=%s&accept=127.0.0.1", testkit.BasePath, kind, port)
			testkit.ExpectResponse(t, kind+" port="+port, testkit.GetUpgrade(t, s, target, testkit.BearerHeader(s)),
				http.StatusBadRequest, "application/json",
				`{"error":"invalid parameter value for 'port'","parameter":"port"}`)
		}
	}
	if got := testkit.StatsBody(t, s, testkit.BasePath); got != testkit.EmptyStats {
		t.Errorf("a refused upgrade opened a port: stats %s", got)
	}
}

func TestInvalidAcceptIs400(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)
	port := testkit.FreeTCPPort(t)
	for _, kind := range []string{"tcp", "udp"} {
		for _, accept := range []string{"not-an-ip", "127.0.0.1,bogus", "300.1.1.1", "127.0.0.1/33", "127.0.0.1:80"} {
			testkit.ExpectResponse(t, kind+" accept="+accept, testkit.GetUpgrade(t, s, testkit.DispatchTarget(testkit.BasePath, kind, port, accept), testkit.BearerHeader(s)),
				http.StatusBadRequest, "application/json",
				`{"error":"invalid parameter value for 'accept'","parameter":"accept"}`)
		}
	}
	if got := testkit.StatsBody(t, s, testkit.BasePath); got != testkit.EmptyStats {
		t.Errorf("a refused upgrade opened a port: stats %s", got)
	}
}

func TestDevicePortInUseIs409(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)

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
		r := testkit.GetUpgrade(t, s, testkit.DispatchTarget(testkit.BasePath, kind, port, testkit.Localhost), testkit.BearerHeader(s))
		if r.Status != http.StatusConflict {
			t.Errorf("%s port %d held elsewhere: status %d, want 409 (body %q)", kind, port, r.Status, r.Body)
			continue
		}
		if !strings.HasPrefix(r.ContentType, "application/json") {
			t.Errorf("%s 409: Content-Type %q, want application/json", kind, r.ContentType)
		}
		var body struct{ Error string }
		if err := json.Unmarshal([]byte(r.Body), &body); err != nil || !strings.Contains(body.Error, "address already in use") {
			t.Errorf("%s 409: body %q, want the OS error in \"error\"", kind, r.Body)
		}
	}
	if got := testkit.StatsBody(t, s, testkit.BasePath); got != testkit.EmptyStats {
		t.Errorf("a refused upgrade left a registration: stats %s", got)
	}
}

func TestAcceptListParsing(t *testing.T) {
	t.Parallel()

	t.Run("entries trimmed and empty ones dropped", func(t *testing.T) {
		t.Parallel()
		s := testkit.Start(t)
		d, port := testkit.OpenPort(t, s, "tcp", ",%20127.0.0.2%20,,%20127.0.0.1,")
		testkit.DialDevice(t, testkit.Localhost, port)
		d.ExpectOpened(testkit.Localhost, 0)
		testkit.DialDevice(t, "127.0.0.2", port)
		d.ExpectOpened("127.0.0.2", 1)
	})

	t.Run("duplicates deliver once", func(t *testing.T) {
		t.Parallel()
		s := testkit.Start(t)
		d, port := testkit.OpenPort(t, s, "tcp", "127.0.0.1,127.0.0.1,127.0.0.0/8")
		dev := testkit.DialDevice(t, testkit.Localhost, port)
		d.ExpectOpened(testkit.Localhost, 0)
		testkit.Send(t, dev, []byte("once"))
		d.ExpectReceived(testkit.Localhost, 0, []byte("once"))
	})

	t.Run("IPv6", func(t *testing.T) {
		t.Parallel()
		if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
			t.Skip("no IPv6 loopback:", err)
		} else {
			ln.Close()
		}
		s := testkit.Start(t)
		d, port := testkit.OpenPort(t, s, "tcp", "::1")
		dev := testkit.DialDevice(t, "::1", port)
		d.ExpectOpened("::1", 0)
		testkit.Send(t, dev, []byte("v6"))
		d.ExpectReceived("::1", 0, []byte("v6"))
		// 127.0.0.1 is not listed.
		testkit.ExpectDisconnected(t, testkit.DialDevice(t, testkit.Localhost, port))
	})

	t.Run("CIDR range", func(t *testing.T) {
		t.Parallel()
		s := testkit.Start(t)
		d, port := testkit.OpenPort(t, s, "tcp", "127.0.0.0/30")
		testkit.DialDevice(t, testkit.Localhost, port)
		d.ExpectOpened(testkit.Localhost, 0)
		testkit.DialDevice(t, "127.0.0.3", port)
		d.ExpectOpened("127.0.0.3", 1)
		testkit.ExpectDisconnected(t, testkit.DialDevice(t, "127.0.0.4", port))
		testkit.DialDevice(t, "127.0.0.2", port)
		d.ExpectOpened("127.0.0.2", 2)
	})

	t.Run("IPv4-mapped IPv6 equals IPv4", func(t *testing.T) {
		t.Parallel()
		s := testkit.Start(t)
		d, port := testkit.OpenPort(t, s, "tcp", "::ffff:127.0.0.1")
		dev := testkit.DialDevice(t, testkit.Localhost, port)
		d.ExpectOpened(testkit.Localhost, 0)
		testkit.Send(t, dev, []byte("mapped"))
		d.ExpectReceived(testkit.Localhost, 0, []byte("mapped"))
	})

	t.Run("empty list accepts nobody", func(t *testing.T) {
		t.Parallel()
		s := testkit.Start(t)
		_, port := testkit.OpenPort(t, s, "tcp", "")
		testkit.WaitForStats(t, s, testkit.TCPStats(port, 1, 0))
		testkit.ExpectDisconnected(t, testkit.DialDevice(t, testkit.Localhost, port))
	})
}

func TestLegacyBasePath(t *testing.T) {
	t.Parallel()
	s := testkit.Start(t)

	for _, path := range []string{testkit.LegacyBasePath, testkit.LegacyBasePath + "/"} {
		testkit.ExpectResponse(t, path, testkit.Get(t, s, path, testkit.BearerHeader(s)), http.StatusOK, "application/json", testkit.EmptyStats)
		testkit.ExpectResponse(t, path+" without token", testkit.Get(t, s, path), http.StatusUnauthorized, "application/json", testkit.InvalidTokenBody)
	}

	var tcp, udp *testkit.Driver
	tcpPort := testkit.OnFreePort(t, testkit.FreeTCPPort, func(port int) (err error) {
		tcp, err = testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.LegacyBasePath, "tcp", port, testkit.Localhost), testkit.DriverHeader(s))
		return err
	})
	dev := testkit.DialDevice(t, testkit.Localhost, tcpPort)
	tcp.ExpectOpened(testkit.Localhost, 0)
	testkit.Send(t, dev, []byte("legacy tcp"))
	tcp.ExpectReceived(testkit.Localhost, 0, []byte("legacy tcp"))
	tcp.Write(testkit.Localhost, 0, []byte("answer"))
	testkit.ExpectReceives(t, dev, []byte("answer"))

	udpPortNumber := testkit.OnFreePort(t, testkit.FreeUDPPort, func(port int) (err error) {
		udp, err = testkit.DialDriver(t, s, testkit.DispatchTarget(testkit.LegacyBasePath, "udp", port, testkit.Localhost), testkit.DriverHeader(s))
		return err
	})
	peer := testkit.UDPPeer(t, testkit.Localhost)
	testkit.SendDatagram(t, peer, udpPortNumber, []byte("legacy udp"))
	udp.ExpectReceived(testkit.Localhost, testkit.UDPPort(peer), []byte("legacy udp"))

	// Both registrations are visible at the legacy stats path too.
	want := fmt.Sprintf(`{"udp_listeners":{"%d":1},"tcp_listeners":{"%d":1},"tcp_clients":{"%d":1}}`, udpPortNumber, tcpPort, tcpPort)
	testkit.WaitForStatsAt(t, s, testkit.LegacyBasePath, want)

	// The legacy dispatch routes validate like the main ones.
	testkit.ExpectResponse(t, "legacy tcp_dispatch without port", testkit.GetUpgrade(t, s, testkit.LegacyBasePath+"/tcp_dispatch?accept=127.0.0.1", testkit.BearerHeader(s)),
		http.StatusUnprocessableEntity, "application/json", `{"error":"missing required parameter 'port'","parameter":"port"}`)
}
