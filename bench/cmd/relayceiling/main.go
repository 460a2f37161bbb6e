// Command relayceiling measures how much of a plain TCP loopback pipe's
// throughput any user-space relay gets on this machine: the ceiling for the
// bulk scenario. A writer and a reader on one CPU send 64 KiB writes either
// straight to each other (the pipe) or through a minimal relay process
// pinned to another CPU that reads 64 KiB and writes it on, with no framing
// and no verification.
//
//	go build -o /tmp/relayceiling ./bench/cmd/relayceiling
//	GOMAXPROCS=1 taskset -c 1 /tmp/relayceiling -runs 9 -relay-cpu 0
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"
)

func main() {
	relayTo := flag.String("relay-to", "", "internal: run as the relay, forwarding to this address")
	runs := flag.Int("runs", 9, "measurements of each kind")
	dur := flag.Duration("time", 3*time.Second, "length of one measurement")
	relayCPU := flag.Int("relay-cpu", 0, "CPU the relay process is pinned to")
	flag.Parse()
	if *relayTo != "" {
		relay(*relayTo)
		return
	}
	var ratios []float64
	for range *runs {
		pipe, err := throughput(*dur, func(sink string) (net.Conn, func(), error) {
			c, err := net.Dial("tcp", sink)
			return c, func() {}, err
		})
		if err != nil {
			fail(err)
		}
		relayed, err := throughput(*dur, func(sink string) (net.Conn, func(), error) {
			return startRelay(*relayCPU, sink)
		})
		if err != nil {
			fail(err)
		}
		ratios = append(ratios, relayed/pipe)
		fmt.Printf("pipe %6.0f MB/s   through a user-space relay %6.0f MB/s   ratio %.2f\n", pipe, relayed, relayed/pipe)
	}
	slices.Sort(ratios)
	fmt.Printf("median ratio %.2f over %d runs (min %.2f, max %.2f)\n", ratios[len(ratios)/2], len(ratios), ratios[0], ratios[len(ratios)-1])
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "relayceiling:", err)
	os.Exit(1)
}

// relay accepts one connection and copies it, 64 KiB per read, to target.
func relay(target string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	fmt.Println(ln.Addr().String())
	in, err := ln.Accept()
	if err != nil {
		fail(err)
	}
	out, err := net.Dial("tcp", target)
	if err != nil {
		fail(err)
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if _, werr := out.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			out.Close()
			return
		}
	}
}

// startRelay runs the relay as a pinned child process and connects to it.
func startRelay(cpu int, sink string) (net.Conn, func(), error) {
	cmd := exec.Command("taskset", "-c", strconv.Itoa(cpu), os.Args[0], "-relay-to", sink)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return nil, nil, fmt.Errorf("relay did not report its address: %w", err)
	}
	c, err := net.Dial("tcp", addr[:len(addr)-1])
	return c, func() { _ = cmd.Wait() }, err
}

// throughput writes 64 KiB chunks for dur into the connection dial returns
// and reports MB/s as counted by the reader at the far end.
func throughput(dur time.Duration, dial func(sink string) (net.Conn, func(), error)) (float64, error) {
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer sink.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := sink.Accept()
		if err != nil {
			received <- 0
			return
		}
		defer c.Close()
		var got int64
		buf := make([]byte, 1<<20)
		for {
			n, err := c.Read(buf)
			got += int64(n)
			if err != nil {
				received <- got
				return
			}
		}
	}()
	w, wait, err := dial(sink.Addr().String())
	if err != nil {
		return 0, err
	}
	chunk := make([]byte, 64<<10)
	start := time.Now()
	var sent int64
	for time.Since(start) < dur {
		n, err := w.Write(chunk)
		sent += int64(n)
		if err != nil {
			return 0, err
		}
	}
	elapsed := time.Since(start)
	w.Close()
	got := <-received
	wait()
	if got != sent {
		return 0, fmt.Errorf("sent %d bytes, %d arrived", sent, got)
	}
	return float64(sent) / elapsed.Seconds() / 1e6, nil
}
