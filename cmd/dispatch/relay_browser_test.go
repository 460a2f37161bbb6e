package main

// The relay's browser page in a real headless Chromium (Debian's package;
// .ci/run installs it), driven over the Chrome DevTools Protocol: it asks
// the access API for a code, opens the WebSocket, shows what arrives and
// sends what is typed.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/internal/testkit"
	"github.com/placeos-gnet/dispatch/loop/relay"
)

func TestRelayBrowserPage(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium is not installed, and CI must run this test: .ci/run installs it")
		}
		t.Skip("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
	}
	r := testkit.StartRelay(t)
	peer := r.Join(t, "browser", relay.ScopeRead, relay.ScopeWrite)
	cdp := startChromium(t, bin)
	page := cdp.open(t, r.AccessURL+"/")
	page.waitFor(t, "the page to load", `document.readyState === "complete" && !!document.getElementById("access")`)

	// The page proposes its own access API.
	if got := page.eval(t, `document.getElementById("access").value`); got != r.AccessURL+"/session/" {
		t.Errorf("the access URL field starts as %q, want %q", got, r.AccessURL+"/session/")
	}

	// A bad token is refused and said so.
	page.eval(t, fmt.Sprintf(`document.getElementById("access").value = %q; document.getElementById("token").value = "nope";
		document.getElementById("open").click(); true`, r.AccessURL+"/session/browser"))
	page.waitFor(t, "the refusal", `document.getElementById("state").dataset.state === "error"`)

	token := r.Token(t, testkit.TokenSpec{Topic: "browser", Scopes: []string{relay.ScopeRead, relay.ScopeWrite}})
	page.eval(t, fmt.Sprintf(`document.getElementById("token").value = %q; document.getElementById("open").click(); true`, token))
	page.waitFor(t, "the WebSocket to open", `document.getElementById("state").dataset.state === "open"`)
	r.WaitRelayConns(t, "browser", 2)

	peer.SendText("hello browser")
	peer.Send([]byte{1, 2, 255})
	page.waitFor(t, "both messages shown", `document.getElementById("log").innerText.includes("← hello browser") &&
		document.getElementById("log").innerText.includes("← [binary 3 B] 01 02 ff")`)

	page.eval(t, `document.getElementById("message").value = "hi from chromium"; document.getElementById("send").click(); true`)
	peer.ExpectMessage(ws.OpText, []byte("hi from chromium"))

	page.eval(t, `document.getElementById("close").click(); true`)
	page.waitFor(t, "the close", `document.getElementById("state").dataset.state === "closed"`)
	r.WaitRelayConns(t, "browser", 1)
}

// chromium is a headless Chromium and a DevTools connection to it.
type chromium struct {
	conn    *bufio.ReadWriter
	close   func()
	mu      sync.Mutex
	nextID  int
	waiting map[int]chan cdpAnswer
	wmu     sync.Mutex
}

type cdpAnswer struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

// startChromium launches the browser with a DevTools port and connects.
// It is stopped, and its profile removed, when the test ends.
func startChromium(t *testing.T, bin string) *chromium {
	t.Helper()
	profile, err := os.MkdirTemp("", "relay-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+profile, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	exited := make(chan struct{})
	endpoint := make(chan string, 1)
	var output strings.Builder
	var outMu sync.Mutex
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			outMu.Lock()
			output.WriteString(line + "\n")
			outMu.Unlock()
			if url, ok := strings.CutPrefix(line, "DevTools listening on "); ok {
				endpoint <- strings.TrimSpace(url)
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
		_ = os.RemoveAll(profile)
	}
	var wsURL string
	select {
	case wsURL = <-endpoint:
	case <-exited:
		stop()
		outMu.Lock()
		defer outMu.Unlock()
		t.Fatalf("chromium exited before listening:\n%s", output.String())
	case <-time.After(30 * time.Second):
		stop()
		t.Fatal("chromium did not start its DevTools listener within 30 s")
	}
	conn, br, _, err := ws.Dialer{Timeout: testkit.EventTimeout}.Dial(context.Background(), wsURL)
	if err != nil {
		stop()
		t.Fatalf("connecting to chromium's DevTools: %v", err)
	}
	if br == nil {
		br = bufio.NewReader(conn)
	}
	c := &chromium{conn: bufio.NewReadWriter(br, bufio.NewWriter(conn)), waiting: map[int]chan cdpAnswer{}}
	c.close = func() {
		conn.Close()
		stop()
	}
	t.Cleanup(c.close)
	go c.read()
	return c
}

// read hands each answer to its caller; events are ignored.
func (c *chromium) read() {
	for {
		msg, err := wsutil.ReadServerText(c.conn)
		if err != nil {
			c.mu.Lock()
			for id, ch := range c.waiting {
				close(ch)
				delete(c.waiting, id)
			}
			c.mu.Unlock()
			return
		}
		var answer struct {
			ID int `json:"id"`
			cdpAnswer
		}
		if json.Unmarshal(msg, &answer) != nil || answer.ID == 0 {
			continue
		}
		c.mu.Lock()
		ch := c.waiting[answer.ID]
		delete(c.waiting, answer.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- answer.cdpAnswer
		}
	}
}

// call sends one command (to a page's session when session is set) and
// waits for its answer.
func (c *chromium) call(t *testing.T, session, method string, params any) json.RawMessage {
	t.Helper()
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	ch := make(chan cdpAnswer, 1)
	c.waiting[id] = ch
	c.mu.Unlock()
	req := map[string]any{"id": id, "method": method, "params": params}
	if session != "" {
		req["sessionId"] = session
	}
	b, _ := json.Marshal(req)
	c.wmu.Lock()
	err := wsutil.WriteClientText(c.conn, b)
	if err == nil {
		err = c.conn.Flush()
	}
	c.wmu.Unlock()
	if err != nil {
		t.Fatalf("DevTools %s: %v", method, err)
	}
	select {
	case answer, ok := <-ch:
		switch {
		case !ok:
			t.Fatalf("DevTools %s: the connection ended", method)
		case answer.Error != nil:
			t.Fatalf("DevTools %s: %s", method, answer.Error.Message)
		}
		return answer.Result
	case <-time.After(testkit.EventTimeout):
		t.Fatalf("DevTools %s: no answer within %v", method, testkit.EventTimeout)
	}
	return nil
}

// page is one tab.
type page struct {
	c       *chromium
	session string
}

func (c *chromium) open(t *testing.T, url string) *page {
	t.Helper()
	var target struct {
		TargetID string `json:"targetId"`
	}
	_ = json.Unmarshal(c.call(t, "", "Target.createTarget", map[string]any{"url": url}), &target)
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	_ = json.Unmarshal(c.call(t, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}), &attached)
	if attached.SessionID == "" {
		t.Fatal("DevTools: no session for the page")
	}
	return &page{c: c, session: attached.SessionID}
}

// eval evaluates an expression in the page and returns its value as text.
func (p *page) eval(t *testing.T, expr string) string {
	t.Helper()
	var res struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		ExceptionDetails *struct {
			Text      string `json:"text"`
			Exception struct {
				Description string `json:"description"`
			} `json:"exception"`
		} `json:"exceptionDetails"`
	}
	raw := p.c.call(t, p.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true})
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatalf("evaluating %q: %v", expr, err)
	}
	if e := res.ExceptionDetails; e != nil {
		t.Fatalf("evaluating %q: %s %s", expr, e.Text, e.Exception.Description)
	}
	return fmt.Sprint(res.Result.Value)
}

// waitFor polls a condition in the page until it is true.
func (p *page) waitFor(t *testing.T, what, cond string) {
	t.Helper()
	if !testkit.Poll(testkit.EventTimeout, func() bool { return p.eval(t, "!!("+cond+")") == "true" }) {
		t.Fatalf("waiting for %s: not within %v; the page shows:\n%s", what, testkit.EventTimeout,
			p.eval(t, `document.getElementById("state").textContent + "\n" + document.getElementById("log").innerText`))
	}
}
