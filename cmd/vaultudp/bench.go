package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
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

func (r benchResult) perSecond() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.received) / r.elapsed.Seconds()
}

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

// isTerminal reports whether w is a terminal (a character device), where
// progress lines that overwrite themselves belong; into a file or a pipe
// they would only clutter the table.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func runBench(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench", "[-sizes 64,512,1200] [-time 1s] [-repeat 3]", stderr)
	sizesFlag := fs.String("sizes", "64,512,1200", "datagram sizes in bytes, comma-separated")
	d := fs.Duration("time", time.Second, "how long each run sends")
	repeat := fs.Int("repeat", 3, "runs of each measurement, raw and vaultudp taking turns; the table shows their medians")
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
	if fs.NArg() != 0 || *d <= 0 || *repeat < 1 {
		return fmt.Errorf("%w: bench takes flags only, -time > 0 and -repeat >= 1", errUsage)
	}
	progress := io.Discard
	if isTerminal(stderr) {
		progress = stderr
	}
	names := [2]string{"raw UDP", "vaultudp"}
	mks := [2]func() (endpoint, endpoint, error){rawPair, vaultPair}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "size\traw pkt/s\traw MB/s\traw loss\tvaultudp pkt/s\tvaultudp MB/s\tvaultudp loss\tratio\t\n")
	for i, size := range sizes {
		// rates[j], losses[j]: one per repetition; ratios: vaultudp ÷
		// raw of the same repetition.
		var rates, losses [2][]float64
		var ratios []float64
		for r := range *repeat {
			for j := range mks {
				fmt.Fprintf(progress, "\r[%d/%d] %5d B: %-8s run %d/%d for %v...   ", i+1, len(sizes), size, names[j], r+1, *repeat, *d)
				a, b, err := mks[j]()
				if err != nil {
					return fmt.Errorf("setting up %s on loopback: %w", names[j], err)
				}
				res, err := measure(a, b, size, *d)
				a.Close()
				b.Close()
				if err != nil {
					return fmt.Errorf("%s, %d-byte datagrams: %w", names[j], size, err)
				}
				rates[j] = append(rates[j], res.perSecond())
				losses[j] = append(losses[j], res.loss())
			}
			if raw := rates[0][r]; raw > 0 {
				ratios = append(ratios, rates[1][r]/raw)
			}
		}
		raw, v := median(rates[0]), median(rates[1])
		fmt.Fprintf(tw, "%d B\t%.0f\t%.1f\t%.2f%%\t%.0f\t%.1f\t%.2f%%\t%.2f\t\n", size,
			raw, raw*float64(size)/1e6, median(losses[0]),
			v, v*float64(size)/1e6, median(losses[1]),
			median(ratios))
	}
	fmt.Fprintf(progress, "\r%70s\r", "")
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(stdout, "medians of %d runs of %v each; ratio: median of vaultudp ÷ raw of the same run; loss: sent but never delivered\n", *repeat, *d)
	return err
}
