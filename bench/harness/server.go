package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/placeos-gnet/dispatch/internal/freeport"
)

// ServerOpts says how to start bin/dispatch.
type ServerOpts struct {
	Bin      string
	CPU      int // -1: not pinned
	Secret   string
	LogLevel string
	Args     []string // extra flags (bounds)
	Env      []string // extra environment (KEY=VALUE)
	Metrics  bool     // start the --metrics (pprof) listener on a free port
}

// Server is a running bin/dispatch child process.
type Server struct {
	Pid         int
	Addr        string // HTTP/WebSocket host:port
	MetricsAddr string
	Cmdline     string

	cmd      *exec.Cmd
	done     chan struct{}
	waitErr  error
	mu       sync.Mutex
	maxConns int      // device cap the server logged after lowering it to its fd limit (0: none)
	tail     []string // last stderr lines
	lines    int
	warnings int
	warnTail []string

	// listeners are the kinds' own HTTP listeners, by name, from their
	// msg="http listening" lines (logged before the ready line).
	listeners map[string]string
}

var (
	listenTextRe = regexp.MustCompile(`\bmsg=listening\b.*?\baddr=("?)([^\s"]+)`) // the ready line, not "metrics listening" or "http listening"
	listenJSONRe = regexp.MustCompile(`"msg":"listening"`)
	addrJSONRe   = regexp.MustCompile(`"addr":"([^"]+)"`)
	maxConnsRe   = regexp.MustCompile(`"?max_conns"?[=:]"?(\d+)`)
	listenerRe   = regexp.MustCompile(`msg="http listening" name=(\S+) addr=(\S+)`)
)

// devicePort picks a port for a device listener, free for both TCP and
// UDP on the wildcard address (the server binds device ports on all
// interfaces), below the ephemeral range where the harness's own client
// sockets could take it first (freeport).
func devicePort() (int, error) {
	for range 100 {
		p, err := freeport.Pick("tcp")
		if err != nil {
			return 0, err
		}
		if pc, err := net.ListenPacket("udp", ":"+strconv.Itoa(p)); err == nil {
			pc.Close()
			return p, nil
		}
	}
	return 0, fmt.Errorf("no port free for both TCP and UDP")
}

func freePort() (int, error) { return freeport.Pick("tcp") }

// StartServer starts the server (under taskset when pinned) with -p 0 and
// waits for its "listening" line.
func StartServer(ctx context.Context, o ServerOpts) (*Server, error) {
	args := []string{"-p", "0", "-b", "127.0.0.1"}
	s := &Server{done: make(chan struct{})}
	if o.Metrics {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		s.MetricsAddr = "127.0.0.1:" + strconv.Itoa(p)
		args = append(args, "--metrics", s.MetricsAddr)
	}
	args = append(args, o.Args...)
	name := o.Bin
	if o.CPU >= 0 {
		ts, err := exec.LookPath("taskset")
		if err != nil {
			return nil, fmt.Errorf("taskset not found (needed to pin the server to cpu %d): %w", o.CPU, err)
		}
		args = append([]string{"-c", strconv.Itoa(o.CPU), o.Bin}, args...)
		name = ts
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(),
		"PLACE_SERVER_SECRET="+o.Secret,
		"SG_ENV=production",
		"LOG_LEVEL="+o.LogLevel,
		"PLACE_LOG_FORMAT=text",
	)
	cmd.Env = append(cmd.Env, o.Env...)
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	s.Cmdline = strings.Join(cmd.Args, " ")
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Cmdline, err)
	}
	s.cmd = cmd
	s.Pid = cmd.Process.Pid // taskset execs the server: same pid
	addrCh := make(chan string, 1)
	var tee io.Writer
	if p := os.Getenv("DISPATCHBENCH_SERVER_STDERR"); p != "" {
		if f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			tee = f
		}
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Text()
			if tee != nil {
				fmt.Fprintln(tee, line)
			}
			s.mu.Lock()
			if strings.Contains(line, "cap") {
				if m := maxConnsRe.FindStringSubmatch(line); m != nil {
					s.maxConns, _ = strconv.Atoi(m[1])
				}
			}
			if m := listenerRe.FindStringSubmatch(line); m != nil {
				if s.listeners == nil {
					s.listeners = map[string]string{}
				}
				s.listeners[m[1]] = m[2]
			}
			s.lines++
			s.tail = append(s.tail, line)
			if len(s.tail) > 40 {
				s.tail = s.tail[len(s.tail)-40:]
			}
			ll := strings.ToLower(line)
			if strings.Contains(ll, "level=warn") || strings.Contains(ll, "level=error") || strings.Contains(ll, `"level":"warn`) || strings.Contains(ll, `"level":"error`) {
				s.warnings++
				if len(s.warnTail) < 20 {
					s.warnTail = append(s.warnTail, line)
				}
			}
			s.mu.Unlock()
			if !found {
				if m := listenTextRe.FindStringSubmatch(line); m != nil {
					found = true
					addrCh <- m[2]
				} else if listenJSONRe.MatchString(line) {
					if m := addrJSONRe.FindStringSubmatch(line); m != nil {
						found = true
						addrCh <- m[1]
					}
				}
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	select {
	case a := <-addrCh:
		s.Addr = a
	case <-s.done:
		return nil, fmt.Errorf("server exited before listening (%v); stderr:\n%s", s.waitErr, s.Tail())
	case <-t.C:
		s.Kill()
		return nil, fmt.Errorf("server printed no msg=listening line in 15s; stderr:\n%s", s.Tail())
	case <-ctx.Done():
		s.Kill()
		return nil, ctx.Err()
	}
	if s.MetricsAddr != "" {
		// give the metrics listener a moment; failure is tolerated (reported later).
		for i := 0; i < 20; i++ {
			if c, err := net.DialTimeout("tcp", s.MetricsAddr, 100*time.Millisecond); err == nil {
				c.Close()
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return s, nil
}

// Tail returns the last stderr lines.
func (s *Server) Tail() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.tail, "\n")
}

// LogStats: stderr lines and warn/error lines seen so far.
func (s *Server) LogStats() (lines, warnings int, warnTail []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lines, s.warnings, append([]string(nil), s.warnTail...)
}

// Listener is the address of a kind's own HTTP listener ("rooms"), or "".
func (s *Server) Listener(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.listeners[name]
}

// MaxConns is the device-connection cap the server logged when it lowered
// it to fit its open-file limit (0 if it did not).
func (s *Server) MaxConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxConns
}

// Alive reports whether the process is still running.
func (s *Server) Alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// ExitError describes an unexpected exit, or "" while it runs.
func (s *Server) ExitError() string {
	if s.Alive() {
		return ""
	}
	return fmt.Sprintf("server exited unexpectedly (%v); last stderr:\n%s", s.waitErr, s.Tail())
}

// CPU is the server's utime+stime so far.
func (s *Server) CPU() time.Duration {
	d, _ := procCPU(s.Pid)
	return d
}

// RSS is the server's VmRSS in bytes.
func (s *Server) RSS() int64 {
	n, _ := procRSS(s.Pid)
	return n
}

// Affinity is the server's Cpus_allowed_list.
func (s *Server) Affinity() string {
	return statusField("/proc/"+strconv.Itoa(s.Pid)+"/status", "Cpus_allowed_list:")
}

// Threads is the server's thread count.
func (s *Server) Threads() string {
	return statusField("/proc/"+strconv.Itoa(s.Pid)+"/status", "Threads:")
}

// Stop sends SIGTERM and waits up to 5 s (then SIGKILL). It returns how long
// the shutdown took and whether it was clean (exit 0 within 5 s).
func (s *Server) Stop() (time.Duration, bool) {
	if !s.Alive() {
		return 0, false
	}
	t0 := time.Now()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return time.Since(t0), s.waitErr == nil
	case <-time.After(5 * time.Second):
		s.Kill()
		return time.Since(t0), false
	}
}

// Kill kills the process and waits for it.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		<-s.done
	}
}

// Stats fetches GET /api/dispatch/v1.
type Stats struct {
	UDPListeners map[string]int `json:"udp_listeners"`
	TCPListeners map[string]int `json:"tcp_listeners"`
	TCPClients   map[string]int `json:"tcp_clients"`
}

func (s *Server) Stats(secret string) (*Stats, error) {
	req, _ := http.NewRequest("GET", "http://"+s.Addr+"/api/dispatch/v1", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("stats: HTTP %d", resp.StatusCode)
	}
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, err
	}
	return &st, nil
}

// CPUProfile fetches a CPU profile of d from the --metrics pprof listener.
func (s *Server) CPUProfile(d time.Duration, path string) error {
	return s.fetchPprof(fmt.Sprintf("profile?seconds=%d", int(d.Seconds()+0.5)), d+10*time.Second, path)
}

// AllocsProfile fetches the heap profile with allocation counts since start.
func (s *Server) AllocsProfile(path string) error {
	return s.fetchPprof("allocs", 10*time.Second, path)
}

func (s *Server) fetchPprof(what string, timeout time.Duration, path string) error {
	if s.MetricsAddr == "" {
		return fmt.Errorf("no --metrics listener")
	}
	c := http.Client{Timeout: timeout}
	url := fmt.Sprintf("http://%s/debug/pprof/%s", s.MetricsAddr, what)
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return fmt.Errorf("GET %s: HTTP %d %s", url, resp.StatusCode, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
