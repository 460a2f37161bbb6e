package stats

import "testing"

func TestSumDocuments(t *testing.T) {
	a := Dispatch{TCPListeners: []PortCount{{6001, 1}}, TCPClients: []PortCount{{6001, 2}}}
	b := Dispatch{TCPListeners: []PortCount{{6001, 2}, {6002, 1}}, TCPClients: []PortCount{{6001, 3}, {6002, 0}}, UDPListeners: []PortCount{{162, 1}}}
	got := string(Sum[Dispatch]([][]byte{a.AppendJSON(nil), b.AppendJSON(nil), []byte("not json")}))
	want := `{"udp_listeners":{"162":1},"tcp_listeners":{"6001":3,"6002":1},"tcp_clients":{"6001":5,"6002":0}}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	g1 := Groups{TCP: []Group{{ID: "k", Members: 1, Upstreams: 1, BytesForwarded: 10}}}
	g2 := Groups{TCP: []Group{{ID: "k", Members: 2, BytesForwarded: 5}, {ID: "j", Members: 1}}}
	got = string(Sum[Groups]([][]byte{g1.AppendJSON(nil), g2.AppendJSON(nil)}))
	want = `{"tcp":{"j":{"members":1,"upstreams":0,"bytes_forwarded":0},"k":{"members":3,"upstreams":1,"bytes_forwarded":15}},"udp":{}}`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if one := a.AppendJSON(nil); string(Sum[Dispatch]([][]byte{one})) != string(one) {
		t.Error("one document is not its own sum")
	}
}
