package stats

// Reading the JSON documents back and summing them: a cluster answers with
// the sum of every replica's document, in the same shape.

import (
	"encoding/json"
	"strconv"
)

// UnmarshalJSON reads a document AppendJSON wrote.
func (d *Dispatch) UnmarshalJSON(b []byte) error {
	var doc map[string]map[string]int
	if err := json.Unmarshal(b, &doc); err != nil {
		return err
	}
	read := func(m map[string]int) []PortCount {
		var out []PortCount
		for port, n := range m {
			if p, err := strconv.Atoi(port); err == nil {
				out = append(out, PortCount{Port: p, Count: n})
			}
		}
		return out
	}
	d.UDPListeners = read(doc["udp_listeners"])
	d.TCPListeners = read(doc["tcp_listeners"])
	d.TCPClients = read(doc["tcp_clients"])
	return nil
}

// Add sums o into d, port by port.
func (d *Dispatch) Add(o *Dispatch) {
	d.UDPListeners = addPorts(d.UDPListeners, o.UDPListeners)
	d.TCPListeners = addPorts(d.TCPListeners, o.TCPListeners)
	d.TCPClients = addPorts(d.TCPClients, o.TCPClients)
}

func addPorts(dst, src []PortCount) []PortCount {
	return addBy(dst, src, func(a, b *PortCount) bool { return a.Port == b.Port },
		func(d *PortCount, s *PortCount) { d.Count += s.Count })
}

// addBy adds every entry of src into the entry of dst it matches, or
// appends it.
func addBy[T any](dst, src []T, same func(a, b *T) bool, add func(d, s *T)) []T {
next:
	for i := range src {
		for j := range dst {
			if same(&dst[j], &src[i]) {
				add(&dst[j], &src[i])
				continue next
			}
		}
		dst = append(dst, src[i])
	}
	return dst
}

type groupJSON struct {
	Members        int    `json:"members"`
	Upstreams      int    `json:"upstreams"`
	BytesForwarded uint64 `json:"bytes_forwarded"`
}

// UnmarshalJSON reads a document AppendJSON wrote.
func (g *Groups) UnmarshalJSON(b []byte) error {
	var doc map[string]map[string]groupJSON
	if err := json.Unmarshal(b, &doc); err != nil {
		return err
	}
	read := func(m map[string]groupJSON) []Group {
		var out []Group
		for id, x := range m {
			out = append(out, Group{ID: id, Members: x.Members, Upstreams: x.Upstreams, BytesForwarded: x.BytesForwarded})
		}
		return out
	}
	g.TCP, g.UDP = read(doc["tcp"]), read(doc["udp"])
	return nil
}

// Add sums o into g, group by group.
func (g *Groups) Add(o *Groups) {
	g.TCP = addGroups(g.TCP, o.TCP)
	g.UDP = addGroups(g.UDP, o.UDP)
}

func addGroups(dst, src []Group) []Group {
	return addBy(dst, src, func(a, b *Group) bool { return a.ID == b.ID }, func(d, s *Group) {
		d.Members += s.Members
		d.Upstreams += s.Upstreams
		d.BytesForwarded += s.BytesForwarded
	})
}

// summable is a document that can be read back, summed and rendered.
type summable[T any] interface {
	*T
	UnmarshalJSON([]byte) error
	Add(*T)
	AppendJSON([]byte) []byte
}

// Sum merges the JSON documents of every replica into one of the same
// shape; a document that does not read is left out. Alone, the one
// document is the answer as it is.
func Sum[T any, P summable[T]](parts [][]byte) []byte {
	if len(parts) == 1 {
		return parts[0]
	}
	var sum T
	for _, part := range parts {
		var d T
		if P(&d).UnmarshalJSON(part) == nil {
			P(&sum).Add(&d)
		}
	}
	return P(&sum).AppendJSON(nil)
}
