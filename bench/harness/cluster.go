package harness

// Scenario 8: fan-out across replicas. The same load as the fan-out
// scenario, run twice in one scenario: against one replica, then against
// three replicas joined by their embedded NATS, with every device on
// replica 1 and the drivers on replicas 2 and 3, so that every delivery
// crosses the bus. Server CPU is summed over the replicas; all are pinned
// to the server CPU, so they share the core one replica had.

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

func runCluster(ctx context.Context, s *scenario) error {
	nDrivers, nDevices := s.cfg.FanoutDrivers, s.cfg.FanoutDevices
	if err := runTCPIngestOn(ctx, s, nDrivers, nDevices, "one", nil); err != nil {
		return fmt.Errorf("one replica: %w", err)
	}
	s.stopServer()
	topo := &ingestTopology{start: startReplicas, ready: waitDevicePort}
	if err := runTCPIngestOn(ctx, s, nDrivers, nDevices, "cluster", topo); err != nil {
		return fmt.Errorf("three replicas: %w", err)
	}
	s.res.Params["replicas"] = 3
	s.note("cluster: 3 replicas with --cluster-embedded (routes on loopback), devices on replica 1 (node 0), drivers alternating on replicas 2 and 3; server CPU is the sum over the replicas, all pinned to the server CPU")
	return nil
}

// startReplicas starts three replicas routed to each other; drivers attach
// to replicas 2 and 3 in turn.
func startReplicas(ctx context.Context, s *scenario) (func(int) string, error) {
	var routes []string
	for range 3 {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		routes = append(routes, net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	}
	args := func(i int) []string {
		var peers []string
		for j, r := range routes {
			if j != i {
				peers = append(peers, r)
			}
		}
		return []string{
			"--device-host", "127.0.0." + strconv.Itoa(i+1),
			"--cluster-embedded", "--cluster-route", routes[i], "--cluster-peers", strings.Join(peers, ","),
			"--cluster-node", strconv.Itoa(i),
		}
	}
	if _, err := s.startServer(ctx, args(0)...); err != nil {
		return nil, err
	}
	for i := 1; i < 3; i++ {
		extra := append([]string{"--max-conns", "1000000", "--max-port-conns", "1000000", "--max-driver-pending", "1073741824"}, args(i)...)
		srv, err := StartServer(ctx, ServerOpts{
			Bin: s.cfg.ServerBin, CPU: s.cfg.ServerCPU, Secret: s.cfg.Secret,
			LogLevel: s.cfg.LogLevel, Args: append(extra, s.cfg.ServerArgs...), Env: s.cfg.ServerEnv,
		})
		if err != nil {
			return nil, fmt.Errorf("replica %d: %w", i+1, err)
		}
		s.others = append(s.others, srv)
	}
	return func(i int) string { return s.others[i%2].Addr }, nil
}

// waitDevicePort waits until replica 1 accepts devices on port: the drivers
// on the other replicas made it open it. The probe connects from an
// address no driver admits, so no driver hears of it.
func waitDevicePort(ctx context.Context, port int) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.99")}, Timeout: time.Second}
	ok := waitFor(ctx, 15*time.Second, func() bool {
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if !ok {
		return fmt.Errorf("replica 1 did not open device port %d for the drivers on the other replicas within 15s", port)
	}
	return nil
}
