//go:build !linux || vaultudp_portable

package udpio

import (
	"errors"
	"net/netip"
	"testing"
)

// linuxIO: this build reads and writes through udp_portable.go.
const linuxIO = false

// The portable reader over a read that fails as Windows' does: a
// datagram too large for the buffer comes back cut and marked (with no
// source, which the system does not give), other errors are returned,
// and a datagram that fits is returned whole with its source unmapped.
func TestPortableReaderWindowsErrors(t *testing.T) {
	from := netip.MustParseAddrPort("[::ffff:192.0.2.7]:4000")
	type result struct {
		n    int
		from netip.AddrPort
		err  error
	}
	var next result
	r := &portableReader{rules: &testWindowsRules, read: func(b []byte) (int, netip.AddrPort, error) {
		copy(b, "abcdefghij")
		return next.n, next.from, next.err
	}}
	ms := []Message{{Buf: make([]byte, 8)}}

	next = result{8, netip.AddrPort{}, readErr(wsaEMSGSIZE)}
	if n, err := r.Read(ms); n != 1 || err != nil || !ms[0].Truncated || ms[0].N != 8 || ms[0].Addr.IsValid() {
		t.Errorf("WSAEMSGSIZE: Read = %d, %v, %+v; want 1 datagram of 8 bytes, truncated, no source", n, err, ms[0])
	}
	next = result{0, netip.AddrPort{}, readErr(wsaECONNRESET)}
	if n, err := r.Read(ms); n != 0 || !errors.Is(err, wsaECONNRESET) {
		t.Errorf("WSAECONNRESET: Read = %d, %v; want 0 and the error (for the caller to read again)", n, err)
	}
	next = result{3, from, nil}
	if n, err := r.Read(ms); n != 1 || err != nil || ms[0].Truncated || ms[0].N != 3 || ms[0].Addr != netip.MustParseAddrPort("192.0.2.7:4000") {
		t.Errorf("a datagram: Read = %d, %v, %+v; want 3 bytes from 192.0.2.7:4000", n, err, ms[0])
	}
	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Errorf("Read(nil) = %d, %v", n, err)
	}
}
