// Package deploy holds deployment examples. Its tests check kubernetes.yaml
// and the Dockerfile for the properties the deployment depends on, since no
// cluster or Docker engine is at hand where the tests run.
package deploy

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const (
	healthzPath = "/api/dispatch/v1/healthz"
	apiPort     = 3000
	nonRootUID  = 65532
)

type obj = map[string]any

// get walks nested maps; a number in keys indexes a list.
func get(t *testing.T, v any, keys ...any) any {
	t.Helper()
	for i, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(obj)
			if !ok || m[k] == nil {
				t.Fatalf("missing %v", keys[:i+1])
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("missing %v", keys[:i+1])
			}
			v = l[k]
		}
	}
	return v
}

// lookup is get for optional fields.
func lookup(v any, keys ...string) (any, bool) {
	for _, k := range keys {
		m, ok := v.(obj)
		if !ok || m[k] == nil {
			return nil, false
		}
		v = m[k]
	}
	return v, true
}

func str(t *testing.T, v any, keys ...any) string {
	t.Helper()
	s, ok := get(t, v, keys...).(string)
	if !ok {
		t.Fatalf("%v is not a string", keys)
	}
	return s
}

func num(t *testing.T, v any, keys ...any) int {
	t.Helper()
	n, ok := get(t, v, keys...).(int)
	if !ok {
		t.Fatalf("%v is not an integer", keys)
	}
	return n
}

func list(t *testing.T, v any, keys ...any) []any {
	t.Helper()
	l, ok := get(t, v, keys...).([]any)
	if !ok {
		t.Fatalf("%v is not a list", keys)
	}
	return l
}

func loadManifest(t *testing.T) []obj {
	t.Helper()
	f, err := os.Open("kubernetes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var docs []obj
	dec := yaml.NewDecoder(f)
	for {
		var d obj
		err := dec.Decode(&d)
		if err == io.EOF {
			return docs
		}
		if err != nil {
			t.Fatalf("kubernetes.yaml document %d: %v", len(docs)+1, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
}

// manifest is kubernetes.yaml with its documents picked out by role.
type manifest struct {
	secret, deployment, api, devices obj
	pod, container                   obj
}

func load(t *testing.T) manifest {
	t.Helper()
	var m manifest
	for _, d := range loadManifest(t) {
		kind := str(t, d, "kind")
		str(t, d, "apiVersion")
		str(t, d, "metadata", "name")
		var slot *obj
		switch kind {
		case "Secret":
			slot = &m.secret
		case "Deployment":
			slot = &m.deployment
		case "Service":
			switch typ := str(t, d, "spec", "type"); typ {
			case "ClusterIP":
				slot = &m.api
			case "LoadBalancer":
				slot = &m.devices
			default:
				t.Fatalf("Service of unexpected type %q", typ)
			}
		default:
			t.Fatalf("unexpected kind %q", kind)
		}
		if *slot != nil {
			t.Fatalf("more than one %s", kind)
		}
		*slot = d
	}
	if m.secret == nil || m.deployment == nil || m.api == nil || m.devices == nil {
		t.Fatal("want a Secret, a Deployment, a ClusterIP Service and a LoadBalancer Service")
	}
	m.pod = get(t, m.deployment, "spec", "template", "spec").(obj)
	containers := list(t, m.pod, "containers")
	if len(containers) != 1 {
		t.Fatalf("%d containers, want 1", len(containers))
	}
	m.container = containers[0].(obj)
	return m
}

// containerPorts maps "PROTO/port" and the port names to container ports.
func (m manifest) containerPorts(t *testing.T) (byProtoPort map[string]obj, byName map[string]int) {
	t.Helper()
	byProtoPort, byName = map[string]obj{}, map[string]int{}
	for _, p := range list(t, m.container, "ports") {
		port := num(t, p, "containerPort")
		key := str(t, p, "protocol") + "/" + strconv.Itoa(port)
		if byProtoPort[key] != nil {
			t.Errorf("container port %s listed twice", key)
		}
		byProtoPort[key] = p.(obj)
		byName[str(t, p, "name")] = port
	}
	return byProtoPort, byName
}

// resolvePort turns a probe or targetPort (number or name) into a number.
func (m manifest) resolvePort(t *testing.T, v any) int {
	t.Helper()
	switch v := v.(type) {
	case int:
		return v
	case string:
		_, byName := m.containerPorts(t)
		n, ok := byName[v]
		if !ok {
			t.Fatalf("port name %q is not a container port", v)
		}
		return n
	}
	t.Fatalf("port %v is neither a number nor a name", v)
	return 0
}

func (m manifest) env(t *testing.T) map[string]obj {
	t.Helper()
	env := map[string]obj{}
	for _, e := range list(t, m.container, "env") {
		name := str(t, e, "name")
		if env[name] != nil {
			t.Errorf("env %s set twice", name)
		}
		env[name] = e.(obj)
	}
	return env
}

func TestDeployment(t *testing.T) {
	m := load(t)
	spec := get(t, m.deployment, "spec")
	if n := num(t, spec, "replicas"); n != 1 {
		t.Errorf("replicas = %d: state is per process, run exactly one", n)
	}
	if s := str(t, spec, "strategy", "type"); s != "Recreate" {
		t.Errorf("strategy %q: a rolling update runs two pods at once", s)
	}
	labels := get(t, spec, "template", "metadata", "labels").(obj)
	for _, sel := range []any{get(t, spec, "selector", "matchLabels"), get(t, m.api, "spec", "selector"), get(t, m.devices, "spec", "selector")} {
		for k, v := range sel.(obj) {
			if labels[k] != v {
				t.Errorf("selector %s=%v does not match the pod labels %v", k, v, labels)
			}
		}
	}
	if v, _ := lookup(m.pod, "enableServiceLinks"); v != false {
		t.Error("enableServiceLinks must be false: service links inject DISPATCH_* variables")
	}
	if img := str(t, m.container, "image"); !strings.ContainsAny(img, ":@") {
		t.Errorf("image %q has no tag or digest", img)
	}
}

func TestNonRoot(t *testing.T) {
	m := load(t)
	podSC := get(t, m.pod, "securityContext")
	sc := get(t, m.container, "securityContext")
	for _, c := range []struct {
		where any
		key   string
		want  any
	}{
		{podSC, "runAsNonRoot", true},
		{podSC, "runAsUser", nonRootUID},
		{sc, "runAsNonRoot", true},
		{sc, "runAsUser", nonRootUID},
		{sc, "allowPrivilegeEscalation", false},
		{sc, "readOnlyRootFilesystem", true},
	} {
		if got, _ := lookup(c.where, c.key); got != c.want {
			t.Errorf("securityContext.%s = %v, want %v", c.key, got, c.want)
		}
	}
	if drop := list(t, sc, "capabilities", "drop"); !slices.Contains(drop, any("ALL")) {
		t.Errorf("capabilities.drop = %v, want ALL", drop)
	}
	if add := list(t, sc, "capabilities", "add"); !slices.Equal(add, []any{"NET_BIND_SERVICE"}) {
		t.Errorf("capabilities.add = %v, want only NET_BIND_SERVICE", add)
	}
	// Added capabilities do not reach a non-root process; the sysctl is
	// what lets UID 65532 bind UDP 162.
	found := false
	for _, s := range list(t, podSC, "sysctls") {
		if str(t, s, "name") == "net.ipv4.ip_unprivileged_port_start" {
			found = true
			if v, _ := strconv.Atoi(str(t, s, "value")); v > 162 {
				t.Errorf("ip_unprivileged_port_start = %d: UDP 162 cannot be bound", v)
			}
		}
	}
	if !found {
		t.Error("no net.ipv4.ip_unprivileged_port_start sysctl: a non-root pod cannot bind ports below 1024")
	}
}

func TestProbesAndResources(t *testing.T) {
	m := load(t)
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if p := str(t, m.container, probe, "httpGet", "path"); p != healthzPath {
			t.Errorf("%s path %q, want %s", probe, p, healthzPath)
		}
		if p := m.resolvePort(t, get(t, m.container, probe, "httpGet", "port")); p != apiPort {
			t.Errorf("%s port %d, want %d", probe, p, apiPort)
		}
	}
	for _, r := range [][]any{{"requests", "cpu"}, {"requests", "memory"}, {"limits", "memory"}} {
		str(t, m.container, append([]any{"resources"}, r...)...)
	}
}

// documentedEnv returns the environment variables docs/interface.md lists.
func documentedEnv(t *testing.T) map[string]bool {
	t.Helper()
	doc, err := os.ReadFile("../docs/interface.md")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile("`([A-Z][A-Z0-9_]+)[`=]").FindAllSubmatch(doc, -1) {
		names[string(m[1])] = true
	}
	if !names["SG_SERVER_PORT"] || !names["PLACE_SERVER_SECRET"] {
		t.Fatalf("docs/interface.md no longer lists the variables as expected: %v", names)
	}
	return names
}

func TestEnv(t *testing.T) {
	m := load(t)
	env := m.env(t)
	known := documentedEnv(t)
	for name := range env {
		if !known[name] {
			t.Errorf("env %s is not a variable the server reads (docs/interface.md)", name)
		}
	}
	want := map[string]string{
		"SG_SERVER_HOST": "0.0.0.0", // probes and Services reach the pod IP
		"SG_SERVER_PORT": strconv.Itoa(apiPort),
		"SG_ENV":         "production",
	}
	for name, v := range want {
		if got, _ := lookup(env[name], "value"); got != v {
			t.Errorf("env %s = %v, want %q", name, got, v)
		}
	}
	// The secret comes from the Secret, never from a literal value.
	e := env["PLACE_SERVER_SECRET"]
	if e == nil {
		t.Fatal("PLACE_SERVER_SECRET is not set: the server would use \"testing\"")
	}
	if _, literal := lookup(e, "value"); literal {
		t.Error("PLACE_SERVER_SECRET has a literal value; use secretKeyRef")
	}
	if ref := str(t, e, "valueFrom", "secretKeyRef", "name"); ref != str(t, m.secret, "metadata", "name") {
		t.Errorf("secretKeyRef names %q, not the manifest's Secret", ref)
	}
	key := str(t, e, "valueFrom", "secretKeyRef", "key")
	if _, ok := lookup(m.secret, "stringData", key); !ok {
		t.Errorf("the Secret has no key %q", key)
	}
}

func TestServices(t *testing.T) {
	m := load(t)
	byProtoPort, _ := m.containerPorts(t)

	apiPorts := list(t, m.api, "spec", "ports")
	if len(apiPorts) != 1 || num(t, apiPorts[0], "port") != apiPort || m.resolvePort(t, get(t, apiPorts[0], "targetPort")) != apiPort {
		t.Errorf("API Service ports %v, want %d to container port %d", apiPorts, apiPort, apiPort)
	}

	if p, _ := lookup(m.devices, "spec", "externalTrafficPolicy"); p != "Local" {
		t.Errorf("device LoadBalancer externalTrafficPolicy = %v: without Local the source IPs are lost and accept lists fail", p)
	}
	got := map[string]bool{}
	for _, p := range list(t, m.devices, "spec", "ports") {
		port, proto := num(t, p, "port"), str(t, p, "protocol")
		key := proto + "/" + strconv.Itoa(port)
		got[key] = true
		if port == apiPort {
			t.Error("the device LoadBalancer exposes the API port; keep it on the ClusterIP Service")
		}
		if tp := m.resolvePort(t, get(t, p, "targetPort")); tp != port {
			t.Errorf("%s: targetPort %d differs from port", key, tp)
		}
		if byProtoPort[key] == nil {
			t.Errorf("%s is published but not a container port", key)
		}
	}
	for _, key := range []string{"TCP/6001", "UDP/162", "UDP/3671", "UDP/47808"} {
		if !got[key] {
			t.Errorf("device LoadBalancer does not publish %s", key)
		}
	}
}

// TestPortNames checks the Kubernetes rule for port names (IANA_SVC_NAME).
func TestPortNames(t *testing.T) {
	m := load(t)
	valid := regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	for _, ports := range [][]any{list(t, m.container, "ports"), list(t, m.api, "spec", "ports"), list(t, m.devices, "spec", "ports")} {
		seen := map[string]bool{}
		for _, p := range ports {
			name := str(t, p, "name")
			if len(name) > 15 || !valid.MatchString(name) || strings.Contains(name, "--") || !strings.ContainsAny(name, "abcdefghijklmnopqrstuvwxyz") {
				t.Errorf("port name %q is not a valid IANA_SVC_NAME", name)
			}
			if seen[name] {
				t.Errorf("port name %q used twice", name)
			}
			seen[name] = true
		}
	}
}

type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// parseDockerfile splits the Dockerfile into stages of instructions, with
// continuation lines joined and comments dropped.
func parseDockerfile(t *testing.T) [][]instruction {
	t.Helper()
	text, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var stages [][]instruction
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s before the first FROM", in.cmd)
			}
			return
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	for _, line := range strings.Split(string(text), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue
		}
		if body, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages
}

func find(stage []instruction, cmd string) []string {
	var out []string
	for _, in := range stage {
		if in.cmd == cmd {
			out = append(out, in.args)
		}
	}
	return out
}

func execForm(t *testing.T, args string) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(args), &argv); err != nil {
		t.Fatalf("%q is not in exec (JSON) form: %v", args, err)
	}
	return argv
}

func dockerEnv(stage []instruction) map[string]string {
	env := map[string]string{}
	for _, args := range find(stage, "ENV") {
		for _, kv := range strings.Fields(args) {
			k, v, _ := strings.Cut(kv, "=")
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			env[k] = v
		}
	}
	return env
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a build stage and a final stage", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	from := strings.Fields(build[0].args)
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if len(from) != 3 || !strings.EqualFold(from[1], "AS") || goLine == nil || from[0] != "golang:"+string(goLine[1]) {
		t.Errorf("build stage FROM %q, want golang:<go.mod's go version> AS <name>", build[0].args)
	}
	stageName := from[len(from)-1]

	run := strings.Join(find(build, "RUN"), "\n")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/dispatch"} {
		if !strings.Contains(run, want) {
			t.Errorf("the build does not use %s", want)
		}
	}
	args := strings.Join(find(build, "ARG"), " ")
	for _, v := range []struct {
		goVar string
		arg   string
	}{
		{"main.version", "VERSION"},
		{"main.commit", "COMMIT"},
		{"main.buildTime", "BUILD_TIME"},
	} {
		x := regexp.MustCompile(`-X '?` + regexp.QuoteMeta(v.goVar) + `=\$\{?` + v.arg + `\b`)
		if !x.MatchString(run) {
			t.Errorf("-ldflags does not set %s from $%s", v.goVar, v.arg)
		}
		if !regexp.MustCompile(`\b` + v.arg + `\b`).MatchString(args) {
			t.Errorf("build ARG %s is not declared", v.arg)
		}
	}

	base := strings.Fields(final[0].args)[0]
	if base != "scratch" && !strings.HasPrefix(base, "gcr.io/distroless/static") {
		t.Errorf("final stage FROM %s: want distroless/static or scratch for a static binary", base)
	}
	copied := false
	for _, c := range find(final, "COPY") {
		f := strings.Fields(c)
		if len(f) == 3 && f[0] == "--from="+stageName && f[2] == "/dispatch" && strings.Contains(run, "-o "+f[1]) {
			copied = true
		}
	}
	if !copied {
		t.Errorf("the final stage does not COPY the built binary to /dispatch from stage %q", stageName)
	}

	users := find(final, "USER")
	if len(users) == 0 {
		t.Fatal("no USER: the container would run as root")
	}
	uid, _, _ := strings.Cut(users[len(users)-1], ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("USER %q: want a numeric non-root uid (runAsNonRoot cannot check names)", users[len(users)-1])
	} else if n != nonRootUID {
		t.Errorf("USER %d, but kubernetes.yaml runs as %d", n, nonRootUID)
	}

	env := dockerEnv(final)
	for k, v := range map[string]string{"SG_SERVER_HOST": "0.0.0.0", "SG_SERVER_PORT": strconv.Itoa(apiPort), "SG_ENV": "production"} {
		if env[k] != v {
			t.Errorf("ENV %s=%q, want %q", k, env[k], v)
		}
	}
	if e := find(final, "EXPOSE"); !slices.Contains(strings.Fields(strings.Join(e, " ")), strconv.Itoa(apiPort)) {
		t.Errorf("EXPOSE %v, want %d", e, apiPort)
	}

	hc := find(final, "HEALTHCHECK")
	if len(hc) != 1 {
		t.Fatalf("%d HEALTHCHECK instructions, want 1", len(hc))
	}
	_, cmd, ok := strings.Cut(hc[0], "CMD ")
	if !ok {
		t.Fatalf("HEALTHCHECK %q has no CMD", hc[0])
	}
	argv := execForm(t, cmd)
	if len(argv) != 3 || argv[0] != "/dispatch" || argv[1] != "-c" {
		t.Fatalf("HEALTHCHECK runs %q, want /dispatch -c URL (there is no shell or curl in the image)", argv)
	}
	u, err := url.Parse(argv[2])
	if err != nil || u.Hostname() != "127.0.0.1" || u.Port() != env["SG_SERVER_PORT"] || u.Path != healthzPath {
		t.Errorf("health check URL %q, want http://127.0.0.1:%s%s", argv[2], env["SG_SERVER_PORT"], healthzPath)
	}

	ep := find(final, "ENTRYPOINT")
	if len(ep) != 1 || !slices.Equal(execForm(t, ep[0]), []string{"/dispatch"}) {
		t.Errorf("ENTRYPOINT %v, want [\"/dispatch\"]", ep)
	}
}

func TestDockerignore(t *testing.T) {
	text, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, line := range strings.Split(string(text), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, strings.TrimSuffix(line, "/"))
		}
	}
	if !slices.Contains(patterns, ".git") {
		t.Error(".dockerignore does not exclude .git")
	}
	// The build needs these in the context.
	for _, path := range []string{"go.mod", "go.sum", "cmd", "cmd/dispatch", "codec", "loop", "stats"} {
		for _, p := range patterns {
			if ok, _ := filepath.Match(p, path); ok {
				t.Errorf(".dockerignore pattern %q excludes %s, which the build needs", p, path)
			}
		}
	}
}

// TestServerSource checks the names the manifest and Dockerfile rely on
// against the server's source, once cmd/dispatch exists.
func TestServerSource(t *testing.T) {
	if _, err := os.Stat("../cmd/dispatch"); err != nil {
		t.Skip("cmd/dispatch does not exist yet")
	}
	// -X silently ignores a variable that does not exist: check that
	// package main declares the three as package-level string variables.
	files, err := filepath.Glob("../cmd/dispatch/*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	vars := map[string]bool{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.VAR {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				typ, _ := vs.Type.(*ast.Ident)
				for i, n := range vs.Names {
					var lit bool
					if i < len(vs.Values) {
						_, lit = vs.Values[i].(*ast.BasicLit)
					}
					if (typ != nil && typ.Name == "string") || lit {
						vars[n.Name] = true
					}
				}
			}
		}
	}
	for _, v := range []string{"version", "commit", "buildTime"} {
		if !vars[v] {
			t.Errorf("cmd/dispatch declares no package-level string var %s for -X main.%s", v, v)
		}
	}

	// Every variable the manifest sets appears as a string literal in the
	// server's (non-test) source.
	notServer := []string{
		filepath.Join("..", "deploy"),
		filepath.Join("..", "cmd", "example-driver"),
		filepath.Join("..", "bench"),
	}
	var src strings.Builder
	filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != ".." && (slices.Contains(notServer, path) || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			src.Write(b)
		}
		return nil
	})
	for name := range load(t).env(t) {
		if !strings.Contains(src.String(), strconv.Quote(name)) {
			t.Errorf("the server source never mentions %q", name)
		}
	}
}
