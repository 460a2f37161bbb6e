package main

// The command line as an operator meets it: the real binary, its streams
// and its exit codes. Every listener is checked before the ready line.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cliDeadline bounds every wait on the binary: a start, an exit, a line.
const cliDeadline = 30 * time.Second

// readyLine is the line loop.Server.Start logs once the server is up.
var readyLine = regexp.MustCompile(`(^|\s)msg=listening(\s|$)`)

func TestCommandLineThroughTheBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "dispatch")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("building the binary: %v\n%s", err, out)
	}

	t.Run("help goes to stdout and exits 0", func(t *testing.T) {
		t.Parallel()
		for _, flag := range []string{"-h", "--help"} {
			r := runToExit(t, bin, flag)
			if r.code != 0 || r.stderr != "" {
				t.Errorf("dispatch %s: exit %d, stderr %q; want 0 and nothing", flag, r.code, r.stderr)
			}
			for _, want := range []string{"Usage: dispatch", "--udp-queue-bytes", "DISPATCH_MAX_CONNS", "PLACE_SERVER_SECRET"} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("dispatch %s: stdout lacks %q:\n%s", flag, want, r.stdout)
				}
			}
		}
	})

	t.Run("a bad flag goes to stderr and exits 2", func(t *testing.T) {
		t.Parallel()
		r := runToExit(t, bin, "--no-such-flag")
		if r.code != 2 || r.stdout != "" {
			t.Errorf("exit %d, stdout %q; want 2 and nothing", r.code, r.stdout)
		}
		if !strings.Contains(r.stderr, "no-such-flag") || !strings.Contains(r.stderr, "dispatch -h") {
			t.Errorf("stderr does not name the flag or point to -h:\n%s", r.stderr)
		}
	})

	t.Run("a value out of range names its flag and exits 2", func(t *testing.T) {
		t.Parallel()
		r := runToExit(t, bin, "-p", "0", "--max-conns", "-1")
		const want = "dispatch: --max-conns (DISPATCH_MAX_CONNS): must be at least 1, got -1\n"
		if r.code != 2 || !strings.HasPrefix(r.stderr, want) {
			t.Errorf("exit %d, stderr:\n%s\nwant 2 and %q", r.code, r.stderr, want)
		}
		expectNeverReady(t, r)
	})

	t.Run("a metrics address without a port is refused before the ready line", func(t *testing.T) {
		t.Parallel()
		r := runToExit(t, bin, "-p", "0", "--metrics", "abc")
		if r.code == 0 || !strings.Contains(r.stderr, "--metrics (DISPATCH_METRICS_ADDR)") {
			t.Errorf("exit %d, stderr:\n%s\nwant non-zero naming --metrics (DISPATCH_METRICS_ADDR)", r.code, r.stderr)
		}
		expectNeverReady(t, r)
	})

	t.Run("a busy metrics address fails the start before the ready line", func(t *testing.T) {
		t.Parallel()
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		r := runToExit(t, bin, "-p", "0", "--metrics", busy.Addr().String())
		if r.code == 0 || !strings.Contains(r.stderr, "--metrics (DISPATCH_METRICS_ADDR)") {
			t.Errorf("exit %d, stderr:\n%s\nwant non-zero naming --metrics (DISPATCH_METRICS_ADDR)", r.code, r.stderr)
		}
		expectNeverReady(t, r)
	})

	t.Run("a busy cluster route address fails the start, saying why", func(t *testing.T) {
		t.Parallel()
		busy, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		r := runToExit(t, bin, "-p", "0", "--cluster-embedded", "--cluster-route", busy.Addr().String())
		if r.code != 1 || !strings.Contains(r.stderr, "cannot join the cluster") || !strings.Contains(r.stderr, "address already in use") {
			t.Errorf("exit %d, stderr:\n%s\nwant 1, naming the route port in use", r.code, r.stderr)
		}
		expectNeverReady(t, r)
	})

	t.Run("metrics are bound before the ready line and served after it", func(t *testing.T) {
		t.Parallel()
		p := startBinary(t, bin, "-p", "0", "--metrics", "127.0.0.1:0")
		var metricsAt string
		for {
			line := p.nextLine(t)
			if strings.Contains(line, `msg="metrics listening"`) {
				metricsAt = addrIn(t, line)
			}
			if readyLine.MatchString(line) {
				break
			}
		}
		if metricsAt == "" {
			t.Fatal("the ready line came before the metrics listener was bound")
		}
		resp, err := (&http.Client{Timeout: cliDeadline}).Get("http://" + metricsAt + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("dispatch_drivers")) {
			t.Errorf("GET /metrics: %s\n%.300s", resp.Status, body)
		}
		if code := p.stop(t); code != 0 {
			t.Errorf("exit %d after SIGTERM, want 0", code)
		}
	})
}

// cliEnv keeps the binary away from the machine's secrets and variables.
func cliEnv(t *testing.T) []string {
	return []string{"SECRETS_PATH=" + t.TempDir(), "PLACE_SERVER_SECRET=cli-test"}
}

type exited struct {
	code           int
	stdout, stderr string
}

// runToExit runs the binary to completion; the deadline kills a process
// that would otherwise keep serving.
func runToExit(t *testing.T, bin string, args ...string) exited {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliDeadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = cliEnv(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("dispatch %v still running after %v:\n%s", args, cliDeadline, stderr.String())
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Fatalf("dispatch %v: %v", args, err)
	}
	return exited{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
}

func expectNeverReady(t *testing.T, r exited) {
	t.Helper()
	for _, line := range strings.Split(r.stderr, "\n") {
		if readyLine.MatchString(line) {
			t.Errorf("announced readiness and then failed:\n%s", r.stderr)
		}
	}
}

// running is a started binary whose stderr is read line by line.
type running struct {
	cmd   *exec.Cmd
	lines chan string // closed at EOF
	done  chan struct{}
}

func startBinary(t *testing.T, bin string, args ...string) *running {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = cliEnv(t)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &running{cmd: cmd, lines: make(chan string, 256), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		_ = cmd.Wait() // after the last read: Wait closes the pipe
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range p.lines { // unblock the reader so that it reaches Wait
		}
		<-p.done
	})
	return p
}

func (p *running) nextLine(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok {
			t.Fatal("the process exited before the expected line")
		}
		return line
	case <-time.After(cliDeadline):
		t.Fatalf("no output line within %v", cliDeadline)
	}
	return ""
}

// stop sends SIGTERM and returns the exit code, draining the output so
// the process never blocks on a full pipe.
func (p *running) stop(t *testing.T) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(cliDeadline)
	lines := p.lines
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				lines = nil
			}
		case <-p.done:
			return p.cmd.ProcessState.ExitCode()
		case <-timeout:
			t.Fatalf("still running %v after SIGTERM", cliDeadline)
		}
	}
}

var addrAttr = regexp.MustCompile(`(?:^|\s)addr=(\S+)`)

func addrIn(t *testing.T, line string) string {
	t.Helper()
	m := addrAttr.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no addr in %q", line)
	}
	return m[1]
}
