package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/vaultudp/vaultudp"
)

// benchResult is one run: a sender goroutine writes for a fixed time as
// fast as it can, a receiver goroutine counts what arrives.
type benchResult struct {
	sent, received int64
	elapsed        time.Duration // first send to last receive
}

func (r benchResult) perSecond() float64 { return float64(r.received) / r.elapsed.Seconds() }

func (r benchResult) loss() float64 {
	if r.sent == 0 {
		return 0
	}
	return 100 * float64(r.sent-r.received) / float64(r.sent)
}

// endpoint is the part of a PacketConn a benchmark uses.
type endpoint interface {
	WriteToUDPAddrPort([]byte, netip.AddrPort) (int, error)
	ReadFromUDPAddrPort([]byte) (int, netip.AddrPort, error)
	SetReadDeadline(time.Time) error
	LocalAddr() net.Addr
	Close() error
}

// measure sends size-byte datagrams from a to b for d and counts arrivals.
func measure(a, b endpoint, size int, d time.Duration) (benchResult, error) {
	to := b.LocalAddr().(*net.UDPAddr).AddrPort()
	var received atomic.Int64
	var last atomic.Int64
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			if _, _, err := b.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
			received.Add(1)
			last.Store(int64(time.Since(start)))
		}
	}()
	msg := make([]byte, size)
	var sent int64
	var err error
	for time.Since(start) < d {
		for range 64 {
			if _, err = a.WriteToUDPAddrPort(msg, to); err != nil {
				break
			}
			sent++
		}
		if err != nil {
			break
		}
	}
	// Let the receiver drain, then stop it.
	b.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	<-done
	b.SetReadDeadline(time.Time{})
	return benchResult{sent: sent, received: received.Load(), elapsed: time.Duration(last.Load())}, err
}

func rawPair() (endpoint, endpoint, error) {
	a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, err
	}
	b, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	// The buffers vaultudp.Listen asks for, so that the comparison is fair.
	for _, c := range []*net.UDPConn{a, b} {
		c.SetReadBuffer(vaultudp.SocketBuffer)
		c.SetWriteBuffer(vaultudp.SocketBuffer)
	}
	return a, b, nil
}

func vaultPair() (endpoint, endpoint, error) {
	a, err := vaultudp.Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		return nil, nil, err
	}
	b, err := vaultudp.Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Handshake(ctx, b.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		a.Close()
		b.Close()
		return nil, nil, err
	}
	return a, b, nil
}

func runBench(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench", "[-sizes 64,512,1200] [-time 2s]", stderr)
	sizesFlag := fs.String("sizes", "64,512,1200", "datagram sizes in bytes, comma-separated")
	d := fs.Duration("time", 2*time.Second, "how long each run sends")
	if err := parse(fs, args); err != nil {
		return err
	}
	var sizes []int
	for _, s := range strings.Split(*sizesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 {
			return fmt.Errorf("%w: size %q", errUsage, s)
		}
		sizes = append(sizes, n)
	}
	if fs.NArg() != 0 || *d <= 0 {
		return fmt.Errorf("%w: bench takes flags only, and -time > 0", errUsage)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "size\traw pkt/s\traw MB/s\tvaultudp pkt/s\tvaultudp MB/s\tratio\tvaultudp loss\t")
	for i, size := range sizes {
		var res [2]benchResult
		for j, mk := range []func() (endpoint, endpoint, error){rawPair, vaultPair} {
			name := [2]string{"raw UDP", "vaultudp"}[j]
			fmt.Fprintf(stderr, "\r[%d/%d] %5d B: %-8s for %v...   ", i+1, len(sizes), size, name, *d)
			a, b, err := mk()
			if err != nil {
				return fmt.Errorf("setting up %s on loopback: %w", name, err)
			}
			res[j], err = measure(a, b, size, *d)
			a.Close()
			b.Close()
			if err != nil {
				return fmt.Errorf("%s, %d-byte datagrams: %w", name, size, err)
			}
		}
		raw, v := res[0], res[1]
		fmt.Fprintf(tw, "%d B\t%.0f\t%.1f\t%.0f\t%.1f\t%.2f\t%.2f%%\t\n", size,
			raw.perSecond(), raw.perSecond()*float64(size)/1e6,
			v.perSecond(), v.perSecond()*float64(size)/1e6,
			v.perSecond()/raw.perSecond(), v.loss())
	}
	fmt.Fprintf(stderr, "\r%60s\r", "")
	return tw.Flush()
}
