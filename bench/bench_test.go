package main

import (
	"bytes"
	"cmp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTinyRound runs every contender and every measure once with tiny
// durations, so that the command cannot rot: each contender must set up,
// move datagrams and appear in the table. It asserts no speed.
func TestTinyRound(t *testing.T) {
	var out, progress bytes.Buffer
	args := []string{"-rounds", "1", "-dur", "20ms", "-rtt", "20", "-hs", "1"}
	if err := mainErr(args, &out, &progress); err != nil {
		t.Fatalf("bench %v: %v\nprogress:\n%s\ntable:\n%s", args, err, progress.String(), out.String())
	}
	table := out.String()
	env, err := newEnv(options{}, &progress)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range env.contenders() {
		var rows []string
		if !c.hsOnly {
			rows = append(rows, c.name) // throughput and ping-pong
		}
		if !c.noFirst {
			rows = append(rows, cmp.Or(c.firstName, c.name))
		}
		for _, name := range rows {
			if !strings.Contains(table, "| "+name+" |") {
				t.Errorf("table has no row for %s (%q)", c.key, name)
			}
		}
	}
	for _, m := range []string{"delivered/s, 64 B", "delivered/s, 512 B", "delivered/s, 1200 B", "64 B ping-pong RTT", "nothing → first datagram"} {
		if !strings.Contains(table, "| "+m) {
			t.Errorf("table has no %q rows", m)
		}
	}
	if t.Failed() {
		t.Logf("table:\n%s", table)
	}
}

// TestFlags: bad flags are refused with a message, not run.
func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-rounds", "0"},
		{"-dur", "0s"},
		{"-sizes", "64,x"},
		{"-only", "nosuch"},
		{"-skip", "nosuch"},
		{"-dtls-suite", "rc4"},
		{"extra"},
	} {
		var out, errs bytes.Buffer
		start := time.Now()
		if err := mainErr(args, &out, &errs); err == nil {
			t.Errorf("bench %v: no error", args)
		}
		if out.Len() != 0 {
			t.Errorf("bench %v wrote a table: %q", args, out.String())
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("bench %v took %v to refuse", args, d)
		}
	}
}

// TestRatios: -ratios pairs each pass of a vaultudp benchmark with the
// same pass of raw's.
func TestRatios(t *testing.T) {
	path := filepath.Join(t.TempDir(), "net.txt")
	in := `goos: linux
BenchmarkThroughput/raw/64B-2      	  100000	  9000 ns/op	 0 loss%	  100000 recv/s	 0 B/op	 0 allocs/op
BenchmarkThroughput/vaultudp/64B-2 	  100000	  9000 ns/op	 1.5 loss%	   80000 recv/s	 0 B/op	 0 allocs/op
BenchmarkThroughput/raw/64B-2      	  100000	  9000 ns/op	 0 loss%	   50000 recv/s	 0 B/op	 0 allocs/op
BenchmarkThroughput/vaultudp/64B-2 	  100000	  9000 ns/op	 0.5 loss%	   45000 recv/s	 0 B/op	 0 allocs/op
BenchmarkThroughput/raw/64B-2      	  100000	  9000 ns/op	 0 loss%	   90000 recv/s	 0 B/op	 0 allocs/op
BenchmarkThroughput/vaultudp/64B-2 	  100000	  9000 ns/op	 0 loss%	   63000 recv/s	 0 B/op	 0 allocs/op
PASS
`
	if err := os.WriteFile(path, []byte(in), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errs bytes.Buffer
	if err := mainErr([]string{"-ratios", path}, &out, &errs); err != nil {
		t.Fatal(err)
	}
	// Per pass: 0.80, 0.90, 0.70; median 0.80. Raw's median 90k, vaultudp's 63k.
	want := "| WriteTo/ReadFrom 64B, delivered/s | 90.0k/s | 63.0k/s | **0.80** (0.70–0.90) | 3 | 0.00 (0.0) | 0.50 (1.5) | 0 |"
	if !strings.Contains(out.String(), want) {
		t.Errorf("-ratios printed\n%s\nwant the row\n%s", out.String(), want)
	}
	if !strings.Contains(out.String(), "| WriteTo/ReadFrom 512B, delivered/s | | | (not in") {
		t.Errorf("-ratios does not say what is missing:\n%s", out.String())
	}
	if err := mainErr([]string{"-ratios", filepath.Join(t.TempDir(), "none.txt")}, &out, &errs); err == nil {
		t.Error("-ratios on a missing file: no error")
	}
}
