package loop

import (
	"errors"
	"io"
	"net/http"
	"testing"
	"time"
)

func errorAs(err error, target any) bool { return err != nil && errors.As(err, target) }

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met before the deadline")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func statsOf(t *testing.T, s *Server) string {
	t.Helper()
	resp, err := http.Get("http://" + s.Addr().String() + "/api/dispatch/v1?bearer_token=s3cret")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
