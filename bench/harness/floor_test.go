package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/placeos-gnet/dispatch/codec"
)

var floorBuild struct {
	sync.Once
	dir, bin string
	err      error
}

// buildFloor builds bench/cmd/fanoutfloor once per test binary.
func buildFloor(t *testing.T) string {
	t.Helper()
	floorBuild.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			floorBuild.err = err
			return
		}
		if floorBuild.dir, err = os.MkdirTemp("", "fanoutfloor-test"); err != nil {
			floorBuild.err = err
			return
		}
		floorBuild.bin = filepath.Join(floorBuild.dir, "fanoutfloor")
		out, err := exec.Command(goBin, "build", "-o", floorBuild.bin, "github.com/placeos-gnet/dispatch/bench/cmd/fanoutfloor").CombinedOutput()
		if err != nil {
			floorBuild.err = fmt.Errorf("go build fanoutfloor: %v\n%s", err, out)
		}
	})
	if floorBuild.err != nil {
		t.Fatal(floorBuild.err)
	}
	return floorBuild.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if floorBuild.dir != "" {
		os.RemoveAll(floorBuild.dir)
	}
	os.Exit(code)
}

func serverBin(t *testing.T) string {
	t.Helper()
	bin, err := filepath.Abs("../../bin/dispatch")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no server binary at %s (build it with go build -o bin/dispatch ./cmd/dispatch)", bin)
	}
	return bin
}

// TestFloorSpeaksLikeServer: for one device that connects, writes and
// closes, the floor sends a driver byte for byte what bin/dispatch sends.
func TestFloorSpeaksLikeServer(t *testing.T) {
	bins := map[string]string{"server": serverBin(t), "floor": buildFloor(t)}
	ip := []byte("127.0.0.1")
	data := []byte("hello, driver")
	var want []byte
	want = codec.AppendFrame(want, ws.OpBinary, codec.AppendMessage(nil, codec.Opened, ip, 0, nil))
	opened := len(want)
	want = codec.AppendFrame(want, ws.OpBinary, codec.AppendMessage(nil, codec.Received, ip, 0, data))
	received := len(want)
	want = codec.AppendFrame(want, ws.OpBinary, codec.AppendMessage(nil, codec.Closed, ip, 0, nil))
	for _, name := range []string{"server", "floor"} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			srv, err := StartServer(ctx, ServerOpts{Bin: bins[name], CPU: -1, Secret: "s3cret", LogLevel: "info"})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Stop()
			port, err := devicePort()
			if err != nil {
				t.Fatal(err)
			}
			d := ws.Dialer{Header: ws.HandshakeHeaderHTTP(http.Header{"Authorization": []string{"Bearer s3cret"}})}
			drv, _, _, err := d.Dial(ctx, fmt.Sprintf("ws://%s/api/dispatch/v1/tcp_dispatch?port=%d&accept=127.0.0.1", srv.Addr, port))
			if err != nil {
				t.Fatal(err)
			}
			defer drv.Close()
			drv.SetReadDeadline(time.Now().Add(20 * time.Second))
			dev, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(want))
			if _, err := io.ReadFull(drv, got[:opened]); err != nil {
				t.Fatalf("OPENED: %v", err)
			}
			if _, err := dev.Write(data); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(drv, got[opened:received]); err != nil {
				t.Fatalf("RECEIVED: %v", err)
			}
			dev.Close()
			if _, err := io.ReadFull(drv, got[received:]); err != nil {
				t.Fatalf("CLOSED: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("driver got\n% x\nwant\n% x", got, want)
			}
		})
	}
}
