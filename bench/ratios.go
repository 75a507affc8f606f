package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// The -ratios mode reads the output of the root module's benchmarks (one
// or more passes, as BENCHMARKS.md runs them) and prints, for each row of
// the target table, raw's and vaultudp's medians and the median (min–max)
// over passes of vaultudp ÷ raw of the same pass. benchstat gives medians
// and confidence intervals per benchmark but no ratio between two
// sub-benchmarks of one run, which is the number that holds on a noisy
// machine.

// benchSamples maps "name unit" to the values in file order: the i-th
// value of a benchmark is from its i-th pass.
type benchSamples map[string][]float64

func parseBenchOutput(r io.Reader) (benchSamples, error) {
	s := benchSamples{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		// f[1] is the iteration count, then value-unit pairs.
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			s[name+" "+f[i+1]] = append(s[name+" "+f[i+1]], v)
		}
	}
	return s, sc.Err()
}

func printRatios(path string, w io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	s, err := parseBenchOutput(f)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	suffix := ""
	for k := range s {
		if strings.HasPrefix(k, "Throughput/raw/64B-") {
			suffix = "-" + strings.Fields(strings.TrimPrefix(k, "Throughput/raw/64B-"))[0]
		}
	}
	type row struct{ label, num, den, unit string }
	var rows []row
	for _, sz := range []string{"64B", "512B", "1200B"} {
		rows = append(rows, row{"WriteTo/ReadFrom " + sz + ", delivered/s", "Throughput/vaultudp/" + sz, "Throughput/raw/" + sz, "recv/s"})
	}
	for _, sz := range []string{"64B", "512B", "1200B"} {
		for _, pad := range []string{"mtu", "block(64)", "none"} {
			n := "Padding/" + pad
			if sz != "64B" {
				n += "/" + sz
			}
			rows = append(rows, row{"Padding " + pad + ", " + sz + ", delivered/s", n, "Padding/raw/" + sz, "recv/s"})
		}
	}
	rows = append(rows,
		row{"ping-pong 64 B, µs/rtt (lower is better)", "PingPong/vaultudp", "PingPong/raw", "µs/rtt"},
		row{"ping-pong 64 B, PadNone, µs/rtt", "PingPong/vaultudp-padnone", "PingPong/raw", "µs/rtt"},
		row{"WriteBatch/ReadBatch 1200 B ÷ x/net sendmmsg/recvmmsg", "Batch/vaultudp/1200B", "Batch/raw-mmsg/1200B", "recv/s"},
		row{"WriteBatch/ReadBatch 1200 B ÷ raw per-datagram WriteTo", "Batch/vaultudp/1200B", "Batch/raw-writeto/1200B", "recv/s"},
		row{"first datagram, nobody reading before (lower is better)", "FirstDatagram/vaultudp/nobody-reading", "FirstDatagram/raw", "ns/op"},
		row{"first datagram, reader waiting (lower is better)", "FirstDatagram/vaultudp/reader-waiting", "FirstDatagram/raw", "ns/op"},
		row{"64 peers → one Conn, -cpu 1, delivered/s", "ManyPeers/vaultudp", "ManyPeers/raw", "recv/s"},
		row{"64 peers → one Conn, -cpu 2, delivered/s", "ManyPeers/vaultudp" + suffix, "ManyPeers/raw" + suffix, "recv/s"},
	)
	fmt.Fprintln(w, "| measure | raw | vaultudp | ×raw, median (min–max) of passes | passes | raw loss % med (max) | vaultudp loss % med (max) | vaultudp allocs/op |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range rows {
		num, den := r.num, r.den
		if !strings.HasPrefix(r.label, "64 peers") {
			num, den = num+suffix, den+suffix
		}
		a, b := s[num+" "+r.unit], s[den+" "+r.unit]
		if len(a) == 0 || len(b) == 0 {
			fmt.Fprintf(w, "| %s | | | (not in %s) | | | | |\n", r.label, path)
			continue
		}
		var ratios []float64
		for i := range min(len(a), len(b)) {
			if b[i] != 0 {
				ratios = append(ratios, a[i]/b[i])
			}
		}
		lo, hi := minMax(ratios)
		fmt.Fprintf(w, "| %s | %s | %s | **%.2f** (%.2f–%.2f) | %d | %s | %s | %s |\n", r.label,
			unitFmt(median(b), r.unit), unitFmt(median(a), r.unit), median(ratios), lo, hi, len(ratios),
			lossFmt(s[den+" loss%"]), lossFmt(s[num+" loss%"]), allocFmt(s[num+" allocs/op"]))
	}
	return nil
}

func unitFmt(v float64, unit string) string {
	switch {
	case unit == "recv/s":
		return kfmt(v) + "/s"
	case unit == "ns/op" && v >= 1e6:
		return fmt.Sprintf("%.2f ms", v/1e6)
	case unit == "ns/op":
		return fmt.Sprintf("%.1f µs", v/1e3)
	}
	return fmt.Sprintf("%.1f %s", v, unit)
}

func lossFmt(xs []float64) string {
	if len(xs) == 0 {
		return ""
	}
	_, hi := minMax(xs)
	return fmt.Sprintf("%.2f (%.1f)", median(xs), hi)
}

func allocFmt(xs []float64) string {
	if len(xs) == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f", median(xs))
}
