// Package testkit drives the dispatch server from the outside, as its
// peers do, for end-to-end tests: it builds and starts the real binary
// (Start, Launch), talks to it as a PlaceOS driver over WebSockets (Driver),
// as devices and socket-group members over TCP and UDP, reads its HTTP
// answers, stats documents and Prometheus metrics, and waits for events with
// one polling primitive (Poll, Eventually).
//
// Tests get the server through the Server interface: the binary as a
// Process, or the server inside the test process (internal/inproc), and
// every helper works against either. A test package that launches the
// binary must run its tests through Main.
package testkit

import "time"

const (
	// BasePath is the API base; LegacyBasePath serves the same routes.
	BasePath       = "/api/dispatch/v1"
	LegacyBasePath = "/api/server"

	Localhost = "127.0.0.1"

	// GroupPrefix is the default start of a socket-group join message.
	GroupPrefix = "SOCKETFORWARDER-NEW:"

	// EventTimeout bounds the wait for anything the server should do promptly.
	EventTimeout = 10 * time.Second
	// StartTimeout bounds the wait for the ready line.
	StartTimeout = 10 * time.Second
	// ShutdownTimeout is how long a SIGTERM may take (docs/interface.md).
	ShutdownTimeout = 5 * time.Second

	// FailureLogBytes is how much of a server's log tail a failed test prints.
	FailureLogBytes = 16 << 10
)
