// Command bench measures vaultudp beside raw UDP and the encrypted-datagram
// options a Go user would otherwise pick, on loopback, in one run: raw UDP
// (two *net.UDPConn with vaultudp's socket buffers), vaultudp (default,
// PadNone, WriteBatch/ReadBatch ×64), quic-go RFC 9221 datagrams and
// pion/dtls v3.
//
// Rounds are interleaved (every contender's round 1, then every
// contender's round 2, ...; the order turns each round) and every value is
// also divided by raw UDP's value of the same round, so the ratios hold on
// a noisy machine even when the absolute numbers move. The table (markdown)
// goes to stdout, progress to stderr.
//
//	cd bench && go run . -rounds 5 -dur 2s
//	cd bench && go run . -rounds 5 -dur 2s -window 1024  # flow-controlled
//
// With -ratios file it measures nothing and prints vaultudp ÷ raw per
// pass from the root module's benchmark output instead.
//
// It is a module of its own so that the library gains no dependency on
// quic-go or pion; it uses only vaultudp's public API.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := mainErr(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func mainErr(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var sizes, only, skip, cpuprofile, ratios string
	fs.IntVar(&o.rounds, "rounds", 5, "interleaved rounds")
	fs.DurationVar(&o.dur, "dur", 2*time.Second, "send time of each throughput window")
	fs.StringVar(&sizes, "sizes", "64,512,1200", "payload sizes in bytes, comma-separated")
	fs.IntVar(&o.rtt, "rtt", 2000, "64-byte round trips per ping-pong measurement")
	fs.IntVar(&o.hs, "hs", 7, "first-datagram samples per contender per round (at least 1); the round's value is their median")
	fs.StringVar(&only, "only", "", "comma-separated contender keys ("+strings.Join(contenderKeys(), ",")+"); raw always runs unless -noraw")
	fs.BoolVar(&o.noRaw, "noraw", false, "with -only: leave raw out too (for a CPU profile of one contender; no ratios)")
	fs.StringVar(&skip, "skip", "", "comma-separated measures to skip: tput,rtt,first")
	fs.StringVar(&cpuprofile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	fs.BoolVar(&o.quicTrace, "quictrace", false, "count quic-go's own datagram drops with a qlog tracer (slows quic-go)")
	fs.StringVar(&ratios, "ratios", "", "measure nothing: read this file of the root module's benchmark output (BENCHMARKS.md) and print vaultudp ÷ raw per pass")
	fs.IntVar(&o.window, "window", 0, "throughput flow-controlled: at most this many datagrams in flight (0: unpaced)")
	fs.StringVar(&o.dtlsSuite, "dtls-suite", "chacha", "pion/dtls cipher suite: chacha (ECDHE_ECDSA_CHACHA20_POLY1305) or aes (ECDHE_ECDSA_AES_128_GCM)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q: bench takes flags only", fs.Args())
	}
	if ratios != "" {
		return printRatios(ratios, stdout)
	}
	if o.rounds < 1 || o.dur <= 0 || o.rtt < 1 || o.hs < 1 || o.window < 0 {
		return fmt.Errorf("-rounds, -rtt and -hs must be at least 1, -dur positive and -window not negative")
	}
	if o.dtlsSuite != "chacha" && o.dtlsSuite != "aes" {
		return fmt.Errorf("-dtls-suite %q: want chacha or aes", o.dtlsSuite)
	}
	for _, s := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fmt.Errorf("-sizes: bad size %q", s)
		}
		o.sizes = append(o.sizes, n)
	}
	o.skip = map[string]bool{}
	for _, k := range strings.Split(skip, ",") {
		if k = strings.TrimSpace(k); k != "" {
			if k != "tput" && k != "rtt" && k != "first" {
				return fmt.Errorf("-skip: unknown measure %q (tput, rtt, first)", k)
			}
			o.skip[k] = true
		}
	}
	if only != "" {
		o.only = map[string]bool{}
		known := map[string]bool{}
		for _, k := range contenderKeys() {
			known[k] = true
		}
		for _, k := range strings.Split(only, ",") {
			k = strings.TrimSpace(k)
			if !known[k] {
				return fmt.Errorf("-only: unknown contender %q (%s)", k, strings.Join(contenderKeys(), ","))
			}
			o.only[k] = true
		}
	}
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	return run(o, stdout, stderr)
}
