package vaultudp

import (
	"errors"
	"testing"
)

func fakeInterfaces(ifs ...netInterface) interfaceLister {
	return func() ([]netInterface, error) { return ifs, nil }
}

func TestDiscoverMTU(t *testing.T) {
	parallel(t)
	lo := netInterface{Name: "lo", MTU: 65536, Up: true, Loopback: true}
	cases := []struct {
		name      string
		list      interfaceLister
		mtu       int
		iface     string
		fellBack  bool
		datagram4 int
	}{
		{"no interfaces", fakeInterfaces(), DefaultMTU, "", true, 1472},
		{"listing fails", func() ([]netInterface, error) { return nil, errors.New("no /proc") }, DefaultMTU, "", true, 1472},
		{"loopback only", fakeInterfaces(lo), DefaultMTU, "", true, 1472},
		{"none up", fakeInterfaces(lo, netInterface{Name: "eth0", MTU: 1400}), DefaultMTU, "", true, 1472},
		{"one", fakeInterfaces(lo, netInterface{Name: "eth0", MTU: 1500, Up: true}), 1500, "eth0", false, 1472},
		{"several, smallest wins", fakeInterfaces(
			netInterface{Name: "eth0", MTU: 1500, Up: true},
			netInterface{Name: "wg0", MTU: 1420, Up: true},
			netInterface{Name: "tun0", MTU: 1280, Up: false},
			lo,
		), 1420, "wg0", false, 1392},
		{"jumbo frames", fakeInterfaces(netInterface{Name: "eth0", MTU: 9000, Up: true}), 9000, "eth0", false, 8972},
		{"bogus MTU ignored", fakeInterfaces(
			netInterface{Name: "weird", MTU: 0, Up: true},
			netInterface{Name: "tiny", MTU: 100, Up: true},
			netInterface{Name: "eth0", MTU: 1500, Up: true},
		), 1500, "eth0", false, 1472},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mtu, iface := discoverMTU(c.list)
			if mtu != c.mtu || iface != c.iface {
				t.Fatalf("discoverMTU = %d, %q; want %d, %q", mtu, iface, c.mtu, c.iface)
			}
			if (iface == "") != c.fellBack {
				t.Fatalf("fell back = %v, want %v", iface == "", c.fellBack)
			}
			if got := datagramSize(mtu, false); got != c.datagram4 {
				t.Fatalf("IPv4 datagram = %d, want %d", got, c.datagram4)
			}
			if got := datagramSize(mtu, true); got != c.datagram4-20 {
				t.Fatalf("IPv6 datagram = %d, want %d", got, c.datagram4-20)
			}
		})
	}
}

// systemInterfaces works on this host, whatever it has.
func TestSystemInterfaces(t *testing.T) {
	parallel(t)
	ifs, err := systemInterfaces()
	if err != nil {
		t.Skipf("the system cannot list interfaces here: %v", err)
	}
	sawLoopback := false
	for _, ifi := range ifs {
		sawLoopback = sawLoopback || ifi.Loopback
	}
	if len(ifs) > 0 && !sawLoopback {
		t.Logf("no loopback among %d interfaces", len(ifs))
	}
	mtu, _ := discoverMTU(systemInterfaces)
	if mtu < MinMTU || mtu > MaxMTU {
		t.Fatalf("discovered MTU %d", mtu)
	}
}

// maxPayloadFor is the exact inverse of sealedLen: the largest payload
// fits, one byte more does not, across the bin header boundaries.
func TestMaxPayloadArithmetic(t *testing.T) {
	parallel(t)
	for d := 40; d <= 70000; d++ {
		n := maxPayloadFor(d)
		if n < 0 {
			if sealedLen(0) <= d {
				t.Fatalf("datagram %d: no payload fits, but an empty one does", d)
			}
			continue
		}
		if sealedLen(n) > d {
			t.Fatalf("datagram %d: payload %d seals to %d", d, n, sealedLen(n))
		}
		if sealedLen(n+1) <= d {
			t.Fatalf("datagram %d: payload %d is not the largest", d, n)
		}
	}
	// quic-go sends 1280-byte packets: they fit a 1500-byte path over IPv6.
	if n := maxPayloadFor(datagramSize(1500, true)); n < 1280 {
		t.Fatalf("MaxPayload on a 1500 MTU over IPv6 is %d, want >= 1280", n)
	}
	if got, want := maxPayloadFor(datagramSize(1500, false)), 1472-32-9; got != want {
		t.Fatalf("MaxPayload(1500, IPv4) = %d, want %d", got, want)
	}
}

// The envelope length used in the arithmetic is what appendTo writes.
func TestSealedLenMatchesEnvelope(t *testing.T) {
	parallel(t)
	for _, n := range []int{0, 1, 255, 256, 1400, 65535 - 9} {
		r := record{payload: make([]byte, n), hasPayload: true}
		if got, want := sealedOverhead+len(r.appendTo(nil, 0)), sealedLen(n); got != want {
			t.Fatalf("payload %d: sealed length %d, arithmetic says %d", n, got, want)
		}
	}
}

func TestCheckMTU(t *testing.T) {
	parallel(t)
	for _, ok := range []int{0, MinMTU, 1500, 9000, MaxMTU} {
		if err := checkMTU(ok); err != nil {
			t.Errorf("checkMTU(%d) = %v", ok, err)
		}
	}
	for _, bad := range []int{-1, 1, MinMTU - 1, MaxMTU + 1} {
		if err := checkMTU(bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("checkMTU(%d) = %v, want ErrInvalidConfig", bad, err)
		}
	}
}

// sealedLen is the exact length on the wire (UDP payload) of a sealed
// datagram carrying an uncompressed payload of n bytes and no padding.
func sealedLen(n int) int {
	return sealedOverhead + envelopeFraming + binHeaderLen(n) + n
}
