package stats

import "testing"

func TestDispatchJSONKeyOrderAndPortSort(t *testing.T) {
	d := Dispatch{
		UDPListeners: []PortCount{{162, 8}},
		TCPListeners: []PortCount{{6001, 1}, {80, 2}},
		TCPClients:   []PortCount{{6001, 0}, {80, 3}},
	}
	got := string(d.AppendJSON(nil))
	want := `{"udp_listeners":{"162":8},"tcp_listeners":{"80":2,"6001":1},"tcp_clients":{"80":3,"6001":0}}`
	if got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	empty := string((&Dispatch{}).AppendJSON(nil))
	if empty != `{"udp_listeners":{},"tcp_listeners":{},"tcp_clients":{}}` {
		t.Fatalf("empty stats: %s", empty)
	}
}
