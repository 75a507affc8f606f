//go:build !linux

package vaultudp

import (
	"net/netip"
	"testing"
)

// spoofer would send UDP datagrams with forged source addresses: only
// Linux's raw IPv4 sockets (path_linux_test.go) do here, so the attacks
// through it skip elsewhere.
type spoofer struct{}

func newSpoofer(t testing.TB) *spoofer {
	t.Helper()
	t.Skip("forging source addresses takes a Linux raw socket")
	return nil
}

func (s *spoofer) send(testing.TB, netip.AddrPort, netip.AddrPort, []byte) {}
