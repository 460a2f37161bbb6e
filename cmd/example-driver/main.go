// Command example-driver is the smallest useful dispatch driver. It attaches
// to a dispatch server the way PlaceOS drivers do, prints one line for every
// event it hears, and with -echo sends every payload back to the device that
// sent it. Read it as documentation of the protocol.
//
// Try it against a local server, with nc playing the device:
//
//	go run ./cmd/example-driver -port 6001 -accept 127.0.0.1 -echo
//	nc 127.0.0.1 6001                       # type a line: it comes back
//
//	go run ./cmd/example-driver -proto udp -port 6002 -echo
//	nc -u 127.0.0.1 6002
//
// Keep nc's input open (no "printf x | nc -q1"): dispatch ends a TCP device
// connection at its half-close, before the echo can come back.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/placeos-gnet/dispatch/codec"
)

type config struct {
	server  string // dispatch base URL, http(s)://host:port
	secret  string
	proto   string // "tcp" or "udp"
	port    int    // device port the server opens for us
	accept  string // comma-separated IPs or CIDRs we want to hear from
	echo    bool
	minWait time.Duration // reconnect backoff, doubled after each failure
	maxWait time.Duration
}

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	run(ctx, cfg, os.Stdout, os.Stderr)
}

func parseConfig(args []string, getenv func(string) string) (config, error) {
	cfg := config{minWait: time.Second, maxWait: 10 * time.Second}
	fs := flag.NewFlagSet("example-driver", flag.ContinueOnError)
	fs.StringVar(&cfg.server, "server", "http://127.0.0.1:3000", "dispatch server base URL")
	// The default is resolved below, so that -h never prints a secret.
	fs.StringVar(&cfg.secret, "secret", "", "shared secret (default $PLACE_SERVER_SECRET, else $SERVER_SECRET, else \"testing\")")
	fs.StringVar(&cfg.proto, "proto", "tcp", "device protocol: tcp or udp")
	fs.IntVar(&cfg.port, "port", 6001, "device port to listen on")
	fs.StringVar(&cfg.accept, "accept", "127.0.0.1", "comma-separated device IPs or CIDRs to accept")
	fs.BoolVar(&cfg.echo, "echo", false, "WRITE every RECEIVED payload back to its sender")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if cfg.proto != "tcp" && cfg.proto != "udp" {
		return cfg, fmt.Errorf("-proto must be tcp or udp, not %q", cfg.proto)
	}
	for _, name := range []string{"PLACE_SERVER_SECRET", "SERVER_SECRET"} {
		if cfg.secret == "" {
			cfg.secret = getenv(name)
		}
	}
	if cfg.secret == "" {
		cfg.secret = "testing"
	}
	return cfg, nil
}

// dispatchURL turns http://host:3000 into
// ws://host:3000/api/dispatch/v1/tcp_dispatch?accept=127.0.0.1&port=6001.
func dispatchURL(cfg config) (string, error) {
	u, err := url.Parse(cfg.server)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "ws"
	case "https", "wss":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("-server must be an http:// or https:// URL, not %q", cfg.server)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/api/dispatch/v1/" + cfg.proto + "_dispatch"
	u.RawQuery = url.Values{"port": {strconv.Itoa(cfg.port)}, "accept": {cfg.accept}}.Encode()
	return u.String(), nil
}

// run keeps one session attached until ctx ends, reconnecting with a
// backoff of 1 s doubling up to 10 s, as PlaceOS drivers do.
func run(ctx context.Context, cfg config, out, log io.Writer) {
	wait := cfg.minWait
	for {
		connected, err := session(ctx, cfg, out, log)
		if ctx.Err() != nil {
			return
		}
		if connected {
			wait = cfg.minWait
		}
		fmt.Fprintf(log, "disconnected: %v; retrying in %v\n", err, wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, cfg.maxWait)
	}
}

// session dials once and handles messages until the connection ends. It
// reports whether the WebSocket handshake succeeded.
func session(ctx context.Context, cfg config, out, log io.Writer) (connected bool, err error) {
	addr, err := dispatchURL(cfg)
	if err != nil {
		return false, err
	}
	var refusal string
	dialer := ws.Dialer{
		Timeout: 10 * time.Second,
		// PlaceOS drivers authenticate with a header, not the query string.
		Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": {"Bearer " + cfg.secret}}),
		// dispatch explains a refusal in the body: bad secret (401), port in
		// use (409), bad parameter (400, 422).
		OnStatusError: func(status int, reason []byte, resp io.Reader) {
			r, err := http.ReadResponse(bufio.NewReader(resp), nil)
			if err == nil {
				body, _ := io.ReadAll(io.LimitReader(r.Body, 512))
				refusal = strings.TrimSpace(string(body))
			}
		},
	}
	conn, br, _, err := dialer.Dial(ctx, addr)
	if err != nil {
		if refusal != "" {
			err = fmt.Errorf("%w: %s", err, refusal)
		}
		return false, err
	}
	defer conn.Close()
	fmt.Fprintf(log, "connected to %s\n", addr)

	// Ctrl-C unblocks the read below; the loop then says goodbye.
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	defer stop()

	var r io.Reader = conn
	if br != nil { // frames that arrived together with the handshake
		r = br
		defer ws.PutReader(br)
	}
	rw := struct {
		io.Reader
		io.Writer
	}{r, conn}
	for {
		// One protocol message per binary WebSocket message. Pings and
		// close frames are answered inside; text messages are skipped.
		payload, err := wsutil.ReadServerBinary(rw)
		if err != nil {
			if ctx.Err() != nil {
				conn.SetWriteDeadline(time.Now().Add(time.Second))
				body := ws.NewCloseFrameBody(ws.StatusNormalClosure, "")
				wsutil.WriteClientMessage(conn, ws.OpClose, body)
				return true, nil
			}
			return true, err
		}
		reply, err := handle(out, cfg, payload)
		if err != nil {
			return true, err
		}
		if reply != nil {
			if err := wsutil.WriteClientBinary(conn, reply); err != nil {
				return true, err
			}
		}
	}
}

// handle prints one dispatch message and returns the WRITE to send back
// when echoing, else nil.
func handle(out io.Writer, cfg config, payload []byte) ([]byte, error) {
	m, err := codec.ParseMessage(payload)
	if err != nil {
		return nil, err
	}
	switch m.Type {
	case codec.Opened, codec.Closed: // TCP only: a device connected or left
		fmt.Fprintf(out, "%s %s id=%d\n", m.Type, m.IP, m.ID)
	case codec.Received:
		// The id is the TCP client id, or for UDP the sender's port.
		id := "id"
		if cfg.proto == "udp" {
			id = "port"
		}
		fmt.Fprintf(out, "%s %s %s=%d %d bytes %s\n", m.Type, m.IP, id, m.ID, len(m.Data), preview(m.Data))
		if cfg.echo {
			// Same ip and id: the same TCP client, or for UDP the same
			// ip:port, sent from the dispatch port.
			return codec.AppendMessage(nil, codec.Write, m.IP, m.ID, m.Data), nil
		}
	default: // WRITE and CLOSE only travel from drivers to the server
		return nil, fmt.Errorf("unexpected %s message from the server", m.Type)
	}
	return nil, nil
}

// preview quotes a payload, shortened to keep one event per line readable.
func preview(b []byte) string {
	const limit = 80
	if len(b) > limit {
		return strconv.Quote(string(b[:limit])) + "..."
	}
	return strconv.Quote(string(b))
}
