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
next:
	for _, s := range src {
		for i := range dst {
			if dst[i].Port == s.Port {
				dst[i].Count += s.Count
				continue next
			}
		}
		dst = append(dst, s)
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
next:
	for _, s := range src {
		for i := range dst {
			if dst[i].ID == s.ID {
				dst[i].Members += s.Members
				dst[i].Upstreams += s.Upstreams
				dst[i].BytesForwarded += s.BytesForwarded
				continue next
			}
		}
		dst = append(dst, s)
	}
	return dst
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
