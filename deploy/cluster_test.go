package deploy

import (
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// clusterManifest is kubernetes-cluster.yaml by role.
type clusterManifest struct {
	set, routes, api, devices obj
	pod, container            obj
}

func loadCluster(t *testing.T) clusterManifest {
	t.Helper()
	f, err := os.Open("kubernetes-cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var m clusterManifest
	dec := yaml.NewDecoder(f)
	for {
		var d obj
		if err := dec.Decode(&d); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if d == nil {
			continue
		}
		switch str(t, d, "kind") {
		case "Secret":
		case "StatefulSet":
			m.set = d
		case "Service":
			switch {
			case str(t, d, "spec", "type") == "LoadBalancer":
				m.devices = d
			case d["spec"].(obj)["clusterIP"] == "None":
				m.routes = d
			default:
				m.api = d
			}
		default:
			t.Fatalf("unexpected kind %q", str(t, d, "kind"))
		}
	}
	if m.set == nil || m.routes == nil || m.api == nil || m.devices == nil {
		t.Fatal("want a StatefulSet, a headless routes Service, an API Service and a LoadBalancer Service")
	}
	m.pod = get(t, m.set, "spec", "template", "spec").(obj)
	m.container = list(t, m.pod, "containers")[0].(obj)
	return m
}

func (m clusterManifest) env(t *testing.T) map[string]string {
	env := map[string]string{}
	for _, e := range list(t, m.container, "env") {
		v, _ := lookup(e, "value")
		s, _ := v.(string)
		env[str(t, e, "name")] = s
	}
	return env
}

// The replicas find each other: every peer name is a pod of the set under
// its headless Service, on the route port the pods listen on.
func TestClusterRoutes(t *testing.T) {
	m := loadCluster(t)
	spec := get(t, m.set, "spec")
	replicas := num(t, spec, "replicas")
	if replicas < 2 {
		t.Fatalf("replicas = %d: a cluster wants at least 2", replicas)
	}
	name := str(t, m.set, "metadata", "name")
	headless := str(t, m.routes, "metadata", "name")
	if got := str(t, spec, "serviceName"); got != headless {
		t.Errorf("serviceName %q, want the headless routes Service %q", got, headless)
	}
	if v, _ := lookup(m.routes, "spec", "publishNotReadyAddresses"); v != true {
		t.Error("the routes Service must publish pods before they are ready: replicas route to each other while starting")
	}
	env := m.env(t)
	if env["DISPATCH_CLUSTER_EMBEDDED"] != "true" || env["DISPATCH_CLUSTER"] != "" {
		t.Errorf("want the embedded NATS and no external one, got %v", env)
	}
	_, routePortText, err := net.SplitHostPort(env["DISPATCH_CLUSTER_ROUTE"])
	if err != nil {
		t.Fatalf("DISPATCH_CLUSTER_ROUTE: %v", err)
	}
	routePort, _ := strconv.Atoi(routePortText)
	if host, _, _ := net.SplitHostPort(env["DISPATCH_CLUSTER_ROUTE"]); host != "0.0.0.0" {
		t.Errorf("route host %q: peers connect to the pod IP", host)
	}
	found := false
	for _, p := range list(t, m.container, "ports") {
		if num(t, p, "containerPort") == routePort && str(t, p, "protocol") == "TCP" {
			found = true
			if str(t, p, "name") != str(t, m.routes, "spec", "ports", 0, "targetPort") {
				t.Error("the routes Service does not target the route port")
			}
		}
	}
	if !found {
		t.Errorf("no container port %d for the routes", routePort)
	}
	peers := strings.Split(env["DISPATCH_CLUSTER_PEERS"], ",")
	for i := range replicas {
		want := name + "-" + strconv.Itoa(i) + "." + headless + ":" + strconv.Itoa(routePort)
		if !slices.Contains(peers, want) {
			t.Errorf("DISPATCH_CLUSTER_PEERS lacks %s (%v)", want, peers)
		}
	}
	if len(peers) != replicas {
		t.Errorf("%d peers for %d replicas", len(peers), replicas)
	}
}

func TestClusterPodsAndServices(t *testing.T) {
	m := loadCluster(t)
	known := documentedEnv(t)
	for name := range m.env(t) {
		if !known[name] {
			t.Errorf("env %s is not a variable the server reads (docs/interface.md)", name)
		}
	}
	if v, _ := lookup(m.pod, "enableServiceLinks"); v != false {
		t.Error("enableServiceLinks must be false: service links inject DISPATCH_* variables")
	}
	if v, _ := lookup(m.devices, "spec", "externalTrafficPolicy"); v != "Local" {
		t.Error("the device Service must keep source IPs (externalTrafficPolicy: Local)")
	}
	labels := get(t, m.set, "spec", "template", "metadata", "labels").(obj)
	for _, svc := range []obj{m.routes, m.api, m.devices} {
		for k, v := range get(t, svc, "spec", "selector").(obj) {
			if labels[k] != v {
				t.Errorf("Service %s selects %s=%v, not the pods", str(t, svc, "metadata", "name"), k, v)
			}
		}
	}
	sc := get(t, m.container, "securityContext")
	if v, _ := lookup(sc, "readOnlyRootFilesystem"); v != true {
		t.Error("readOnlyRootFilesystem must stay true: the embedded NATS keeps nothing on disk")
	}
	if v, _ := lookup(sc, "runAsNonRoot"); v != true {
		t.Error("runAsNonRoot must be true")
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if p := str(t, m.container, probe, "httpGet", "path"); p != healthzPath {
			t.Errorf("%s path %q, want %s", probe, p, healthzPath)
		}
	}
}
