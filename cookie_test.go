package vaultudp

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

var cookieT0 = time.Unix(1_700_000_000, 0)

// TestCookieAddress: a cookie is valid for its address and port only.
func TestCookieAddress(t *testing.T) {
	parallel(t)
	j := newCookieJar(DefaultCookieThreshold, cookieT0)
	addr := netip.MustParseAddrPort("192.0.2.1:4000")
	c := j.make(addr, cookieT0)
	if !j.valid(addr, c[:], cookieT0) {
		t.Fatal("a fresh cookie is invalid")
	}
	if c2 := j.make(addr, cookieT0.Add(time.Second)); c2 != c {
		t.Fatal("the cookie for one address changed within a rotation")
	}
	for _, other := range []string{
		"192.0.2.1:4001", "192.0.2.2:4000", "192.0.2.1:40", "[2001:db8::1]:4000", "[::]:4000", "0.0.0.0:0",
	} {
		o := netip.MustParseAddrPort(other)
		if j.valid(o, c[:], cookieT0) {
			t.Fatalf("the cookie of %v is valid for %v", addr, o)
		}
		if oc := j.make(o, cookieT0); oc == c {
			t.Fatalf("%v and %v have the same cookie", addr, o)
		}
	}
	// IPv4 is MACed as IPv4-mapped IPv6 (documented): one host, one cookie.
	if !j.valid(netip.MustParseAddrPort("[::ffff:192.0.2.1]:4000"), c[:], cookieT0) {
		t.Fatal("IPv4-mapped form of the address not accepted")
	}
	// Not a cookie: wrong lengths, zeros, a one-bit change, another jar's.
	bad := [][]byte{nil, {}, c[:15], append(c[:], 0), make([]byte, cookieLen)}
	for i := 0; i < cookieLen*8; i++ {
		f := c
		f[i/8] ^= 1 << (i % 8)
		bad = append(bad, f[:])
	}
	other := newCookieJar(DefaultCookieThreshold, cookieT0)
	oc := other.make(addr, cookieT0)
	bad = append(bad, oc[:])
	for _, b := range bad {
		if j.valid(addr, b, cookieT0) {
			t.Fatalf("cookie %x accepted", b)
		}
	}
}

// TestCookieRotation: a cookie stays valid across one rotation of the
// secret and is invalid after two, whether or not the jar was used in
// between (an idle responder must not accept an old cookie when the next
// hello arrives).
func TestCookieRotation(t *testing.T) {
	parallel(t)
	addr := netip.MustParseAddrPort("[2001:db8::7]:53")
	at := func(d time.Duration) time.Time { return cookieT0.Add(d) }

	// Used regularly: made at 10 s, checked every 10 s.
	j := newCookieJar(DefaultCookieThreshold, cookieT0)
	c := j.make(addr, at(10*time.Second))
	for d := 10 * time.Second; d < 2*cookieRotation; d += 10 * time.Second {
		if !j.valid(addr, c[:], at(d)) {
			t.Fatalf("cookie made at 10s invalid at %v (within one rotation)", d)
		}
	}
	if !j.valid(addr, c[:], at(2*cookieRotation-time.Nanosecond)) {
		t.Fatal("cookie invalid just before its second rotation")
	}
	if j.valid(addr, c[:], at(2*cookieRotation)) {
		t.Fatal("cookie valid after two rotations")
	}
	if j.make(addr, at(2*cookieRotation)) == c {
		t.Fatal("the cookie did not change at the rotation")
	}

	// Checked only just before the second rotation, then just after it.
	j = newCookieJar(DefaultCookieThreshold, cookieT0)
	c = j.make(addr, at(time.Minute))
	if !j.valid(addr, c[:], at(2*cookieRotation-time.Second)) {
		t.Fatal("cookie invalid after one rotation")
	}
	if j.valid(addr, c[:], at(2*cookieRotation)) {
		t.Fatal("cookie valid after two rotations (rotations drift with the time of use)")
	}

	// Idle in between: the next use is long after two rotations.
	for _, idle := range []time.Duration{2 * cookieRotation, 5 * cookieRotation, 24 * time.Hour} {
		j = newCookieJar(DefaultCookieThreshold, cookieT0)
		c = j.make(addr, cookieT0)
		if j.valid(addr, c[:], at(idle)) {
			t.Fatalf("cookie valid after %v idle", idle)
		}
		// The jar works again after the jump.
		c2 := j.make(addr, at(idle))
		if !j.valid(addr, c2[:], at(idle+cookieRotation)) {
			t.Fatalf("after %v idle: a new cookie is invalid one rotation later", idle)
		}
	}

	// A clock that steps back does not rotate or break anything.
	j = newCookieJar(DefaultCookieThreshold, cookieT0)
	c = j.make(addr, cookieT0)
	if !j.valid(addr, c[:], at(-time.Hour)) {
		t.Fatal("a step back in time invalidated a cookie")
	}
}

// TestCookieUnderLoad: cookies are required from the hello that takes
// the rate above the threshold per second until a second after the rate
// falls back; never at or below the threshold.
func TestCookieUnderLoad(t *testing.T) {
	heavy(t)
	const threshold = 10
	ms := func(n int) time.Time { return cookieT0.Add(time.Duration(n) * time.Millisecond) }
	j := newCookieJar(threshold, cookieT0)

	// Exactly threshold hellos a second, for three seconds: never loaded.
	for s := 0; s < 3; s++ {
		for i := 0; i < threshold; i++ {
			if j.underLoad(ms(s*1000 + i*50)) {
				t.Fatalf("loaded at %d hellos in second %d", i+1, s)
			}
		}
	}
	// Second 3: the 11th hello switches cookies on.
	for i := 0; i < threshold; i++ {
		if j.underLoad(ms(3000 + i)) {
			t.Fatalf("loaded at hello %d of second 3", i+1)
		}
	}
	if !j.underLoad(ms(3000 + threshold)) {
		t.Fatal("not loaded above the threshold")
	}
	// Still on while the flood lasts (hello 12 at 3.5 s refreshes it).
	if !j.underLoad(ms(3500)) {
		t.Fatal("not loaded during the flood")
	}
	// The rate falls: one hello at 4.2 s (a new window, count 1) is still
	// within a second of the last over-threshold hello at 3.5 s ...
	if !j.underLoad(ms(4200)) {
		t.Fatal("cookies off less than a second after the flood")
	}
	if !j.underLoad(ms(4499)) {
		t.Fatal("cookies off less than a second after the flood")
	}
	// ... and off from 4.5 s.
	if j.underLoad(ms(4500)) {
		t.Fatal("cookies still on a second after the flood")
	}
	if j.underLoad(ms(6000)) {
		t.Fatal("cookies on with no load")
	}

	// A flood switches it on again, and a sustained one keeps it on.
	on := false
	for i := 0; i < 5000; i++ { // 5000 hellos over 5 s
		l := j.underLoad(ms(10000 + i))
		if i > threshold && !l {
			t.Fatalf("off during a sustained flood at hello %d", i)
		}
		on = on || l
	}
	if !on {
		t.Fatal("a flood never switched cookies on")
	}
	if j.underLoad(ms(15000 + 1000)) {
		t.Fatal("still on a second after the sustained flood")
	}
}

// TestCookieFloodBoundsVerifications models the responder's gate
// (receive.go): under a flood of spoofed hellos, only hellos that carry a
// valid cookie for their source reach the handshake's costly step.
func TestCookieFloodBoundsVerifications(t *testing.T) {
	heavy(t)
	j := newCookieJar(DefaultCookieThreshold, cookieT0)
	init := helloInitFrom(GenerateIdentity(), 1)
	hello := init.Hello()
	verifications := 0
	gate := func(hello []byte, from netip.AddrPort, now time.Time) {
		m, err := noise.ParseHello(hello)
		if err != nil {
			t.Fatal(err)
		}
		if j.underLoad(now) && !j.valid(from, m.Cookie, now) {
			return // a cookie message goes back; no cryptography
		}
		verifications++
	}
	const flood = 20000 // over 2 s, from spoofed sources
	for i := 0; i < flood; i++ {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(i))
		gate(bytes.Clone(hello), from, cookieT0.Add(time.Duration(i)*100*time.Microsecond))
	}
	if verifications > DefaultCookieThreshold+1 {
		t.Fatalf("%d signature verifications for %d spoofed hellos", verifications, flood)
	}
	// A real peer that returns its cookie still gets through mid-flood.
	real := netip.MustParseAddrPort("198.51.100.9:5000")
	now := cookieT0.Add(2 * time.Second)
	if !j.underLoad(now) {
		t.Fatal("not under load")
	}
	cookie := j.make(real, now)
	withCookie := bytes.Clone(hello)
	copy(withCookie[len(withCookie)-cookieLen:], cookie[:])
	before := verifications
	gate(withCookie, real, now)
	if verifications != before+1 {
		t.Fatal("a hello with a valid cookie was not verified under load")
	}
}
