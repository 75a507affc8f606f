//go:build !vaultudp_portable

package vaultudp

import (
	"slices"
	"testing"
)

// The netlink dump Listen reads lists what net.Interfaces lists: the same
// links, with the same names, MTUs and flags.
func TestDumpLinksMatchesStdlib(t *testing.T) {
	parallel(t)
	want, err := stdInterfaces()
	if err != nil {
		t.Skipf("net.Interfaces: %v", err)
	}
	got, err := dumpLinks()
	if err != nil {
		t.Fatalf("dumpLinks: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("dumpLinks = %+v\nnet.Interfaces = %+v", got, want)
	}
}

// parseLinks refuses what it does not expect (net.Interfaces then
// decides) rather than misreading it.
func TestParseLinksRefusesMalformed(t *testing.T) {
	parallel(t)
	for _, b := range [][]byte{
		{1, 2, 3}, // shorter than a header
		append([]byte{200, 0, 0, 0}, make([]byte, 12)...), // length past the end
		make([]byte, 16), // length 0
	} {
		var out []netInterface
		if _, err := parseLinks(b, 1, &out); err == nil {
			t.Errorf("parseLinks(%v) accepted it: %+v", b, out)
		}
	}
}
