package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// options are the command's flags.
type options struct {
	rounds    int
	dur       time.Duration // send time of each throughput window
	sizes     []int
	rtt       int // round trips per ping-pong measurement
	hs        int // first-datagram samples per contender per round
	only      map[string]bool
	noRaw     bool
	skip      map[string]bool // "tput", "rtt", "first"
	quicTrace bool
	dtlsSuite string // "chacha" or "aes"
	window    int    // datagrams in flight in throughput; 0: unpaced
}

// ---------------------------------------------------------------- /proc/net/snmp

type udpSnmp struct{ in, rcvbufErr int64 }

// readSnmp reads the kernel's system-wide UDP counters (zero where there
// are none, as off Linux).
func readSnmp() udpSnmp {
	f, err := os.Open("/proc/net/snmp")
	if err != nil {
		return udpSnmp{}
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 || fs[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = fs
			continue
		}
		var s udpSnmp
		for i := 1; i < len(fs) && i < len(names); i++ {
			v, _ := strconv.ParseInt(fs[i], 10, 64)
			switch names[i] {
			case "InDatagrams":
				s.in = v
			case "RcvbufErrors":
				s.rcvbufErr = v
			}
		}
		return s
	}
	return udpSnmp{}
}

// ---------------------------------------------------------------- measurements

type tputResult struct {
	size      int
	sent, got int64
	sendTime  time.Duration
	mallocs   uint64
	udpIn     int64 // kernel UDP InDatagrams delta (system-wide)
	kdrops    int64 // kernel RcvbufErrors delta (system-wide)
	sendErr   error
}

func (r tputResult) rate() float64 { return float64(r.got) / r.sendTime.Seconds() }
func (r tputResult) loss() float64 {
	if r.sent == 0 {
		return 0
	}
	return 100 * float64(r.sent-r.got) / float64(r.sent)
}

func withPair(c contender, f func(p *pair) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := c.newPair(ctx)
	if err != nil {
		return fmt.Errorf("%s setup: %w", c.key, err)
	}
	defer p.close()
	return f(p)
}

// randBytes is incompressible: vaultudp would otherwise compress it.
func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// throughput: a sender writes size-byte datagrams for dur as fast as it
// goes (in calls of batchSize for batch contenders), one receiver
// goroutine counts what arrives; then the receiver drains until
// everything arrived or nothing came for 200 ms. With a window, the
// sender is flow-controlled as a stream over UDP is: at most window
// datagrams in flight, a credit each, returned as they arrive (and topped
// up when nothing arrived for 10 ms, for credits lost with a datagram).
func throughput(c contender, size int, dur time.Duration, window int) (tputResult, error) {
	var res tputResult
	err := withPair(c, func(p *pair) error {
		res.size = min(size, p.maxPayload)
		msg := randBytes(res.size)
		buf := make([]byte, 65536)
		var got atomic.Int64
		done := make(chan struct{})
		cr := newCredits(window, &got)
		defer cr.stop()
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		s0 := readSnmp()
		go func() {
			defer close(done)
			for {
				n, err := p.b.RecvN(buf)
				if err != nil {
					return
				}
				got.Add(int64(n))
				cr.give(n)
			}
		}()
		// Watchdog: a sender stuck past dur+10s (a blocked SendDatagram,
		// say) is unblocked by closing the pair.
		watchdog := time.AfterFunc(dur+10*time.Second, p.close)
		defer watchdog.Stop()
		start := time.Now()
		var sent int64
		for time.Since(start) < dur {
			cr.take(batchSize)
			n, err := p.a.SendN(msg, batchSize)
			sent += int64(n)
			if err != nil {
				res.sendErr = err
				break
			}
		}
		res.sendTime = time.Since(start)
		res.sent = sent
		sendEnd := time.Now()
		last, lastChange := got.Load(), time.Now()
		for got.Load() < sent && time.Since(sendEnd) < 3*time.Second {
			time.Sleep(5 * time.Millisecond)
			if g := got.Load(); g != last {
				last, lastChange = g, time.Now()
			} else if time.Since(lastChange) > 200*time.Millisecond {
				break
			}
		}
		p.b.Unblock()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%s: receiver did not stop", c.key)
		}
		runtime.ReadMemStats(&m1)
		s1 := readSnmp()
		res.got = got.Load()
		res.mallocs = m1.Mallocs - m0.Mallocs
		res.udpIn = s1.in - s0.in
		res.kdrops = s1.rcvbufErr - s0.rcvbufErr
		if res.sendErr != nil && res.sent == 0 {
			return fmt.Errorf("%s send: %w", c.key, res.sendErr)
		}
		return nil
	})
	return res, err
}

// pingPong returns the mean of n 64-byte round trips (after 100 warm-up
// ones): a sends, b's echo goroutine sends it back.
// credits bounds the datagrams in flight (throughput's window); a nil
// *credits bounds nothing.
type credits struct {
	ch   chan struct{}
	quit chan struct{}
	done chan struct{}
}

func newCredits(window int, got *atomic.Int64) *credits {
	if window <= 0 {
		return nil
	}
	c := &credits{ch: make(chan struct{}, window), quit: make(chan struct{}), done: make(chan struct{})}
	for range window {
		c.ch <- struct{}{}
	}
	go func() { // tops up credits lost with lost datagrams
		defer close(c.done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		seen := int64(-1)
		for {
			select {
			case <-c.quit:
				return
			case <-t.C:
			}
			if g := got.Load(); g != seen {
				seen = g
				continue
			}
			c.give(cap(c.ch))
		}
	}()
	return c
}

// take waits for n credits (at most the window).
func (c *credits) take(n int) {
	if c == nil {
		return
	}
	for range min(n, cap(c.ch)) {
		<-c.ch
	}
}

// give returns n credits, as many as the window has room for.
func (c *credits) give(n int) {
	if c == nil {
		return
	}
	for range min(n, cap(c.ch)) {
		select {
		case c.ch <- struct{}{}:
		default:
			return
		}
	}
}

func (c *credits) stop() {
	if c == nil {
		return
	}
	close(c.quit)
	<-c.done
}

func pingPong(c contender, n int) (time.Duration, error) {
	var mean time.Duration
	err := withPair(c, func(p *pair) error {
		msg := randBytes(64)
		echoDone := make(chan struct{})
		go func() {
			defer close(echoDone)
			buf := make([]byte, 65536)
			for {
				k, err := p.b.Recv(buf)
				if err != nil {
					return
				}
				if err := p.b.Send(buf[:k]); err != nil {
					return
				}
			}
		}()
		defer func() { p.b.Unblock(); <-echoDone }()
		watchdog := time.AfterFunc(30*time.Second, func() { p.a.Unblock(); p.b.Unblock() })
		defer watchdog.Stop()
		buf := make([]byte, 65536)
		trip := func() error {
			if err := p.a.Send(msg); err != nil {
				return err
			}
			_, err := p.a.Recv(buf)
			return err
		}
		for i := 0; i < 100; i++ {
			if err := trip(); err != nil {
				return fmt.Errorf("%s ping-pong warm-up: %w", c.key, err)
			}
		}
		start := time.Now()
		for i := 0; i < n; i++ {
			if err := trip(); err != nil {
				return fmt.Errorf("%s ping-pong: %w", c.key, err)
			}
		}
		mean = time.Since(start) / time.Duration(n)
		return nil
	})
	return mean, err
}

// firstDatagram: from nothing (no socket) to the first 64-byte datagram
// delivered to the receiving application, handshake included.
func firstDatagram(c contender) (time.Duration, error) {
	msg := randBytes(64)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c.first != nil {
		start := time.Now()
		if err := c.first(ctx, msg); err != nil {
			return 0, fmt.Errorf("%s first datagram: %w", c.key, err)
		}
		return time.Since(start), nil
	}
	buf := make([]byte, 65536)
	start := time.Now()
	var d time.Duration
	err := withPair(c, func(p *pair) error {
		if err := p.a.Send(msg); err != nil {
			return err
		}
		t := time.AfterFunc(5*time.Second, p.b.Unblock)
		defer t.Stop()
		if _, err := p.b.Recv(buf); err != nil {
			return fmt.Errorf("%s first datagram: %w", c.key, err)
		}
		d = time.Since(start)
		return nil
	})
	return d, err
}

// ---------------------------------------------------------------- bookkeeping

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return nanf()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minMax(xs []float64) (float64, float64) {
	if len(xs) == 0 {
		return nanf(), nanf()
	}
	return slices.Min(xs), slices.Max(xs)
}

// clean drops the NaNs (failed rounds).
func clean(xs []float64) []float64 {
	var out []float64
	for _, x := range xs {
		if !isNaN(x) {
			out = append(out, x)
		}
	}
	return out
}

// ratiosOf divides each round's value by raw's value of the same round.
func ratiosOf(vals, raw []float64) []float64 {
	var out []float64
	for i := range vals {
		if i < len(raw) && !isNaN(vals[i]) && !isNaN(raw[i]) && raw[i] != 0 {
			out = append(out, vals[i]/raw[i])
		}
	}
	return out
}

type tputAgg struct {
	rate, loss, mallocs, pkts []float64
	kdrops                    int64
	size                      int
	sendErrs                  int
}

// run measures every selected contender in o.rounds interleaved rounds and
// writes the table to w, progress to progress. It returns an error when a
// measurement failed (the table is written all the same, with the
// failures listed under it).
func run(o options, w, progress io.Writer) error {
	e, err := newEnv(o, progress)
	if err != nil {
		return err
	}
	all := e.contenders()
	cs := all
	if o.only != nil {
		want := map[string]bool{"raw": !o.noRaw}
		for k := range o.only {
			want[k] = true
		}
		cs = nil
		for _, c := range all {
			if want[c.key] {
				cs = append(cs, c)
			}
		}
	}
	if len(cs) == 0 {
		return fmt.Errorf("no contender selected")
	}
	tputOf := func(c contender) bool { return c.newPair != nil && !c.hsOnly }
	firstOf := func(c contender) bool { return !c.noFirst }

	// Warm-up: one connection and exchange per contender, not recorded
	// (first use of crypto, code paging, goroutine pools).
	maxP := map[string]int{}
	for _, c := range cs {
		if _, err := firstDatagram(c); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		if c.newPair != nil {
			if err := withPair(c, func(p *pair) error { maxP[c.key] = p.maxPayload; return nil }); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
	}

	R := o.rounds
	tput := make(map[string]map[int]*tputAgg)
	rtt := make(map[string][]float64)
	first := make(map[string][]float64)
	for _, c := range cs {
		tput[c.key] = map[int]*tputAgg{}
		for _, s := range o.sizes {
			tput[c.key][s] = &tputAgg{}
		}
	}
	var failures []string
	fail := func(err error) {
		fmt.Fprintln(progress, "  error:", err)
		failures = append(failures, err.Error())
	}
	startAll := time.Now()
	for r := 0; r < R; r++ {
		// Turn the order each round so that no contender always runs
		// right after the same neighbour.
		order := append(slices.Clone(cs[r%len(cs):]), cs[:r%len(cs)]...)
		if !o.skip["tput"] {
			for _, s := range o.sizes {
				for _, c := range order {
					if !tputOf(c) {
						continue
					}
					fmt.Fprintf(progress, "round %d/%d  tput %5d B  %-10s ", r+1, R, s, c.key)
					q0 := e.quicDropTotal()
					res, err := throughput(c, s, o.dur, o.window)
					a := tput[c.key][s]
					if err != nil {
						fail(err)
						a.rate = append(a.rate, nanf())
						a.loss = append(a.loss, nanf())
						continue
					}
					a.size = res.size
					a.rate = append(a.rate, res.rate())
					a.loss = append(a.loss, res.loss())
					a.mallocs = append(a.mallocs, float64(res.mallocs)/float64(max(res.got, 1)))
					a.pkts = append(a.pkts, float64(res.udpIn)/float64(max(res.got, 1)))
					a.kdrops += res.kdrops
					if res.sendErr != nil {
						a.sendErrs++
					}
					fmt.Fprintf(progress, "%8.0f/s  sent %d got %d loss %.2f%%  kdrop %d  udpIn/got %.2f  allocs/got %.2f",
						res.rate(), res.sent, res.got, res.loss(), res.kdrops,
						float64(res.udpIn)/float64(max(res.got, 1)), float64(res.mallocs)/float64(max(res.got, 1)))
					if res.sendErr != nil {
						fmt.Fprintf(progress, "  (send stopped: %v)", res.sendErr)
					}
					if o.quicTrace && c.key == "quic" {
						fmt.Fprintf(progress, "  quic-go own drops %d", e.quicDropTotal()-q0)
					}
					fmt.Fprintln(progress)
				}
			}
		}
		if !o.skip["rtt"] {
			for _, c := range order {
				if !tputOf(c) {
					continue
				}
				fmt.Fprintf(progress, "round %d/%d  rtt            %-10s ", r+1, R, c.key)
				d, err := pingPong(c, o.rtt)
				if err != nil {
					fail(err)
					rtt[c.key] = append(rtt[c.key], nanf())
					continue
				}
				rtt[c.key] = append(rtt[c.key], float64(d)/1e3)
				fmt.Fprintf(progress, "%.1f µs\n", float64(d)/1e3)
			}
		}
		if !o.skip["first"] {
			for _, c := range order {
				if !firstOf(c) {
					continue
				}
				fmt.Fprintf(progress, "round %d/%d  first dgram    %-10s ", r+1, R, c.key)
				var ds []float64
				for i := 0; i < o.hs; i++ {
					d, err := firstDatagram(c)
					if err != nil {
						fail(err)
						continue
					}
					ds = append(ds, float64(d)/1e6)
				}
				first[c.key] = append(first[c.key], median(ds))
				fmt.Fprintf(progress, "%.3f ms (samples %s)\n", median(ds), fmtFloats(ds))
			}
		}
	}
	elapsed := time.Since(startAll)

	// ---------------------------------------------------------- table
	fmt.Fprintf(w, "Go %s %s/%s, kernel %s, GOMAXPROCS=%d, NumCPU=%d; %d interleaved rounds, %v send window, %d round trips, %d first-datagram samples per round; run took %v.\n\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, kernelRelease(), runtime.GOMAXPROCS(0), runtime.NumCPU(), R, o.dur, o.rtt, o.hs, elapsed.Round(time.Second))
	if o.window > 0 {
		fmt.Fprintf(w, "Throughput flow-controlled: at most %d datagrams in flight (credits returned as they arrive), as a stream over UDP is.\n\n", o.window)
	} else {
		fmt.Fprintf(w, "Throughput unpaced: each sender as fast as it goes, whatever its receiver keeps up with.\n\n")
	}
	fmt.Fprintln(w, "Median over rounds, (min–max) over rounds; ×raw = median over rounds of (contender ÷ raw UDP of the same round), with its min–max.")
	fmt.Fprintln(w, "delivered/s = delivered ÷ send time; loss = (sent − delivered)/sent; kdrop = kernel Udp RcvbufErrors delta (system-wide, summed over rounds);")
	fmt.Fprintln(w, "pkts/dgram = kernel Udp InDatagrams delta ÷ delivered (system-wide); allocs/dgram = runtime Mallocs delta ÷ delivered (whole process, both ends),")
	fmt.Fprintln(w, "its ×raw is the difference from raw's (raw allocates none, so a quotient would be undefined).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| measure | contender | median | (min–max) | ×raw | ×raw (min–max) | loss % med (max) | kdrop | pkts/dgram | allocs/dgram (−raw) |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	if !o.skip["tput"] {
		for _, s := range o.sizes {
			var raw, rawAllocs []float64
			if a := tput["raw"][s]; a != nil {
				raw, rawAllocs = a.rate, a.mallocs
			}
			for _, c := range cs {
				if !tputOf(c) {
					continue
				}
				a := tput[c.key][s]
				lo, hi := minMax(clean(a.rate))
				rs := ratiosOf(a.rate, raw)
				rlo, rhi := minMax(rs)
				name := c.name
				if a.size != 0 && a.size != s {
					name += fmt.Sprintf(" (max %d B used)", a.size)
				}
				if a.sendErrs > 0 {
					name += fmt.Sprintf(" [sender stopped early in %d rounds]", a.sendErrs)
				}
				_, lossMax := minMax(clean(a.loss))
				allocs := fmt.Sprintf("%.2f", median(a.mallocs))
				if c.key != "raw" && len(rawAllocs) > 0 {
					allocs += fmt.Sprintf(" (%+.2f)", median(a.mallocs)-median(rawAllocs))
				}
				fmt.Fprintf(w, "| delivered/s, %d B | %s | %s | (%s–%s) | %.2f | (%.2f–%.2f) | %.2f (%.2f) | %d | %.2f | %s |\n",
					s, name, kfmt(median(clean(a.rate))), kfmt(lo), kfmt(hi), median(rs), rlo, rhi,
					median(clean(a.loss)), lossMax, a.kdrops, median(a.pkts), allocs)
			}
		}
	}
	if !o.skip["rtt"] {
		for _, c := range cs {
			if !tputOf(c) {
				continue
			}
			vals := clean(rtt[c.key])
			lo, hi := minMax(vals)
			rs := ratiosOf(rtt[c.key], rtt["raw"])
			rlo, rhi := minMax(rs)
			fmt.Fprintf(w, "| 64 B ping-pong RTT, µs (lower is better) | %s | %.1f | (%.1f–%.1f) | %.2f | (%.2f–%.2f) | | | | |\n",
				c.name, median(vals), lo, hi, median(rs), rlo, rhi)
		}
	}
	if !o.skip["first"] {
		for _, c := range cs {
			if !firstOf(c) {
				continue
			}
			vals := clean(first[c.key])
			lo, hi := minMax(vals)
			rs := ratiosOf(first[c.key], first["raw"])
			rlo, rhi := minMax(rs)
			name := c.name
			if c.firstName != "" {
				name = c.firstName
			}
			fmt.Fprintf(w, "| nothing → first datagram, ms (lower is better) | %s | %.3f | (%.3f–%.3f) | %.1f | (%.1f–%.1f) | | | | |\n",
				name, median(vals), lo, hi, median(rs), rlo, rhi)
		}
	}
	fmt.Fprintln(w)
	suite := "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
	if o.dtlsSuite == "aes" {
		suite = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
	}
	fmt.Fprintf(w, "- pion/dtls: configured %s (%s), P-256 ECDSA self-signed cert, full handshake each time. quic-go: TLS 1.3 %s (Go's crypto/tls picks them), same cert. vaultudp: ChaCha20-Poly1305, X25519 + Ed25519.\n",
		suite, e.dtlsInfo, e.quicTLSInfo)
	fmt.Fprintln(w, "- First datagram: raw = two ListenUDP, one WriteTo, one ReadFrom. vaultudp = Listen both, AddPeer, one WriteTo at once (queued until the handshake completes), the receiver's first ReadFrom; \"already in ReadFrom\" has a goroutine reading on both ends from right after Listen, the other nobody reading until the datagram was written. quic-go = Listen, Dial + Accept, SendDatagram, ReceiveDatagram. pion/dtls = Client/Server, handshake, Write, Read.")
	if o.quicTrace {
		fmt.Fprintf(w, "- quic-go's own datagram drops (qlog tracer on, which slows quic-go): send too_large %d, receive buffer_full %d, other %d.\n",
			e.quicDrops.sendTooLarge.Load(), e.quicDrops.recvBufferFull.Load(), e.quicDrops.other.Load())
	}
	fmt.Fprint(w, "- Largest datagram each sender accepted right after setup:")
	for _, c := range cs {
		if c.key == "raw" || !tputOf(c) {
			continue
		}
		if c.key == "dtls" {
			fmt.Fprintf(w, " %s (not probed: pion does not cut application data to its MTU; 8 KiB read buffers);", c.key)
			continue
		}
		fmt.Fprintf(w, " %s %d B;", c.key, maxP[c.key])
	}
	fmt.Fprintln(w)
	if len(failures) > 0 {
		fmt.Fprintf(w, "\nFailures (%d):\n", len(failures))
		for _, f := range failures {
			fmt.Fprintf(w, "- %s\n", f)
		}
		return fmt.Errorf("%d measurements failed (listed under the table)", len(failures))
	}
	return nil
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func nanf() float64         { return math.NaN() }
func isNaN(x float64) bool  { return x != x }
func kfmt(x float64) string { return fmt.Sprintf("%.1fk", x/1e3) }
func fmtFloats(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, strconv.FormatFloat(x, 'f', 2, 64))
	}
	return "[" + strings.Join(s, " ") + "]"
}
