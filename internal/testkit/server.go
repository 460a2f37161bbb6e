package testkit

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Server is a running dispatch server as the tests see it: where to reach
// it, the token it wants, what it logged, and how to stop it. Process
// implements it with the real binary, internal/inproc with the server
// running inside the test process.
type Server interface {
	// HTTPAddr is the HTTP/WebSocket listener, host:port.
	HTTPAddr() string
	// GroupTCPAddr and GroupUDPAddr are the socket-group listeners, or ""
	// when they are off.
	GroupTCPAddr() string
	GroupUDPAddr() string
	// Secret is the token drivers must present.
	Secret() string
	// Logs is what the server has logged so far (bounded: see LogBuffer).
	Logs() string
	// Stop shuts the server down and waits for it; calling it again does nothing.
	Stop()
}

// packagePath is the binary every Process runs.
const packagePath = "github.com/placeos-gnet/dispatch/cmd/dispatch"

var build struct {
	inMain bool // Main is running the tests
	once   sync.Once
	dir    string
	path   string
	err    error
}

// Main runs a test package's tests (call it from TestMain). The server
// binary is built the first time a test starts one, once per test binary,
// into a temporary directory that Main removes at the end.
func Main(m *testing.M) {
	build.inMain = true
	code := m.Run()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// serverBinary returns the built server, building it on first use.
func serverBinary(tb testing.TB) string {
	tb.Helper()
	if !build.inMain {
		tb.Fatal("testkit: run the tests through testkit.Main (func TestMain(m *testing.M) { testkit.Main(m) })")
	}
	build.once.Do(func() {
		build.dir, build.err = os.MkdirTemp("", "dispatch-e2e-")
		if build.err != nil {
			return
		}
		build.path = filepath.Join(build.dir, "dispatch")
		out, err := exec.Command("go", "build", "-o", build.path, packagePath).CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("go build %s: %v\n%s", packagePath, err, out)
		}
	})
	if build.err != nil {
		tb.Fatalf("testkit: building the server: %v", build.err)
	}
	return build.path
}

// BinaryPath is the built server binary, for tests that run it themselves
// (flags such as -v or --curl that exit at once).
func BinaryPath(tb testing.TB) string {
	tb.Helper()
	return serverBinary(tb)
}

// Options says how to launch the binary.
type Options struct {
	// Secret is the token the helpers present; it should be the secret Env gives the server.
	Secret string
	// Env is the server's whole environment. SECRETS_PATH is added, naming
	// an empty directory, unless Env sets it: nothing leaks in from the machine.
	Env []string
	// Wrapper is a command the binary runs under, which must exec it so that
	// the process is the server's (prlimit … --); nil for none.
	Wrapper []string
}

// Process is the server binary running as a child process, started with
// -p 0: its addresses come from its log lines. It implements Server.
type Process struct {
	tb       testing.TB
	secret   string
	httpAddr string
	cmd      *exec.Cmd
	logs     *LogBuffer
	exited   chan struct{} // closed once the process has been waited for
	stopping atomic.Bool   // the test stopped or signalled it: an exit is expected
}

// Start launches the binary with a fresh random secret and debug logging;
// env adds variables (every flag has one) or overrides those (the last
// value of a variable wins).
func Start(tb testing.TB, env ...string) *Process {
	tb.Helper()
	secret := "e2e-secret-" + RandomHex(tb, 16)
	return Launch(tb, Options{
		Secret: secret,
		Env:    append([]string{"PLACE_SERVER_SECRET=" + secret, "LOG_LEVEL=debug"}, env...),
	})
}

// Launch starts the binary as opts say and waits for its ready line. The
// process is stopped when the test ends; its log tail is printed if the test
// failed, and an exit the test did not ask for fails the test.
func Launch(tb testing.TB, opts Options) *Process {
	tb.Helper()
	env := opts.Env
	if !hasEnv(env, "SECRETS_PATH") {
		env = append(env[:len(env):len(env)], "SECRETS_PATH="+tb.TempDir())
	}
	p := &Process{
		tb:     tb,
		secret: opts.Secret,
		logs:   NewLogBuffer(),
		exited: make(chan struct{}),
	}
	argv := append(append([]string{}, opts.Wrapper...), serverBinary(tb), "-p", "0")
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Env = env
	p.cmd.Stdout = p.logs
	p.cmd.Stderr = p.logs
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("starting the server: %v", err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(func() {
		unexpected := p.HasExited() && !p.stopping.Load()
		p.Stop()
		if unexpected {
			tb.Errorf("the server exited on its own during the test (exit code %d)", p.cmd.ProcessState.ExitCode())
		}
		if tb.Failed() {
			tb.Logf("server output:\n%s", p.LogTail(FailureLogBytes))
		}
	})
	select {
	case p.httpAddr = <-p.logs.ready:
	case <-p.exited:
		tb.Fatalf("server exited before listening (%v):\n%s", p.cmd.ProcessState, p.Logs())
	case <-time.After(StartTimeout):
		tb.Fatalf("no msg=listening line within %v:\n%s", StartTimeout, p.Logs())
	}
	return p
}

func (p *Process) HTTPAddr() string     { return p.httpAddr }
func (p *Process) GroupTCPAddr() string { return p.logs.groupAddr("tcp") }
func (p *Process) GroupUDPAddr() string { return p.logs.groupAddr("udp") }
func (p *Process) Secret() string       { return p.secret }
func (p *Process) Logs() string         { return p.logs.String() }

// LogTail is the last n bytes of the logs, for failure messages.
func (p *Process) LogTail(n int) string { return p.logs.Tail(n) }

// PID is the server's process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Signal sends sig to the server; the exit it may cause is expected.
func (p *Process) Signal(sig os.Signal) error {
	p.stopping.Store(true)
	return p.cmd.Process.Signal(sig)
}

// Exited is closed once the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

func (p *Process) HasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// ExitCode is the process's exit code; call it after Exited.
func (p *Process) ExitCode() int { return p.cmd.ProcessState.ExitCode() }

// Stop sends SIGTERM and waits; a server that does not exit in twice the
// shutdown bound is killed.
func (p *Process) Stop() {
	p.stopping.Store(true)
	if p.HasExited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(2 * ShutdownTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// MetricsAddr waits for the metrics listener's log line (the server was
// started with DISPATCH_METRICS_ADDR) and returns its address.
func (p *Process) MetricsAddr(tb testing.TB) string {
	tb.Helper()
	var addr string
	if !Poll(EventTimeout, func() bool { addr = p.logs.metricsAddr(); return addr != "" }) {
		tb.Fatalf("no \"metrics listening\" line within %v:\n%s", EventTimeout, p.LogTail(4096))
	}
	return addr
}

func hasEnv(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// RandomHex returns n random bytes in hex.
func RandomHex(tb testing.TB, n int) string {
	tb.Helper()
	return hex.EncodeToString(RandomBytes(tb, n))
}

// RandomBytes returns n random bytes.
func RandomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}
