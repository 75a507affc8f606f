package vaultudp

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"testing"
)

// spoofer sends UDP datagrams over IPv4 with any source address.
type spoofer struct{ fd int }

func newSpoofer(t testing.TB) *spoofer {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		t.Skipf("no raw socket to forge source addresses (needs root): %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return &spoofer{fd: fd}
}

// send sends payload from from (forged) to to. The kernel fills in the IP
// checksum and length; a zero UDP checksum means none (IPv4).
func (s *spoofer) send(t testing.TB, from, to netip.AddrPort, payload []byte) {
	t.Helper()
	if err := s.write(from, to, payload); err != nil {
		t.Fatalf("raw send: %v", err)
	}
}

// sendQuiet is send for a goroutine other than the test's: an error is
// ignored (the flood only falls short, which the test reports).
func (s *spoofer) sendQuiet(from, to netip.AddrPort, payload []byte) { s.write(from, to, payload) }

// write sends one forged IPv4 UDP datagram.
func (s *spoofer) write(from, to netip.AddrPort, payload []byte) error {
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	pkt[8] = 64
	pkt[9] = syscall.IPPROTO_UDP
	src, dst := from.Addr().As4(), to.Addr().As4()
	copy(pkt[12:16], src[:])
	copy(pkt[16:20], dst[:])
	binary.BigEndian.PutUint16(pkt[20:], from.Port())
	binary.BigEndian.PutUint16(pkt[22:], to.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload)))
	copy(pkt[28:], payload)
	return syscall.Sendto(s.fd, pkt, 0, &syscall.SockaddrInet4{Addr: dst})
}
