package main

// The end-to-end suite runs the real binary, built once per test binary by
// the test kit (internal/testkit), and talks to it as drivers (WebSocket
// clients), devices and socket-group members (plain TCP and UDP peers) do.

import (
	"testing"

	"github.com/placeos-gnet/dispatch/internal/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }
