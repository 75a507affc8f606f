package vaultudp

import (
	"net/netip"
	"testing"
	"time"
)

// fakeRoutes is a route lookup that counts its calls.
type fakeRoutes struct {
	calls int
	mtu   map[netip.Addr]int // no entry: no route
}

func (f *fakeRoutes) lookup(addr netip.AddrPort) (int, bool) {
	f.calls++
	m, ok := f.mtu[addr.Addr()]
	return m, ok
}

// The cache asks once per destination address within its TTL, whatever
// the port; asks again once the entry expires (seeing a changed MTU); and
// remembers a failed lookup for routeFailTTL only.
func TestRouteCache(t *testing.T) {
	parallel(t)
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("2001:db8::1")
	gone := netip.MustParseAddr("198.51.100.1")
	f := &fakeRoutes{mtu: map[netip.Addr]int{a: 1500, b: 1280}}
	rc := &routeCache{ttl: 30 * time.Second, lookup: f.lookup, m: make(map[netip.Addr]routeEntry)}
	t0 := time.Unix(1000, 0)
	check := func(addr netip.AddrPort, at time.Time, wantMTU int, wantOK bool, wantCalls int) {
		t.Helper()
		mtu, ok := rc.mtuAt(addr, at)
		if mtu != wantMTU || ok != wantOK || f.calls != wantCalls {
			t.Fatalf("mtuAt(%v, +%v) = %d, %v after %d lookups; want %d, %v after %d", addr, at.Sub(t0), mtu, ok, f.calls, wantMTU, wantOK, wantCalls)
		}
	}
	check(netip.AddrPortFrom(a, 1), t0, 1500, true, 1)
	check(netip.AddrPortFrom(a, 2), t0.Add(time.Second), 1500, true, 1) // another port: the same route
	check(netip.AddrPortFrom(b, 1), t0, 1280, true, 2)
	f.mtu[a] = 1400 // the interface changed
	check(netip.AddrPortFrom(a, 1), t0.Add(29*time.Second), 1500, true, 2)
	check(netip.AddrPortFrom(a, 1), t0.Add(30*time.Second), 1400, true, 3) // expired: asked again
	check(netip.AddrPortFrom(gone, 1), t0, 0, false, 4)
	check(netip.AddrPortFrom(gone, 1), t0.Add(routeFailTTL/2), 0, false, 4)
	f.mtu[gone] = 9000 // the route came up
	check(netip.AddrPortFrom(gone, 1), t0.Add(routeFailTTL), 9000, true, 5)

	// A TTL of 0 (Linux) asks every time.
	rc0 := &routeCache{lookup: f.lookup}
	calls := f.calls
	for i := 0; i < 3; i++ {
		if mtu, ok := rc0.mtuAt(netip.AddrPortFrom(b, 1), t0); mtu != 1280 || !ok {
			t.Fatalf("no cache: %d, %v", mtu, ok)
		}
	}
	if f.calls != calls+3 {
		t.Fatalf("no cache: %d lookups for 3 calls", f.calls-calls)
	}
}

// A full cache makes room: first by dropping what expired, else by
// starting over; it never holds more than routeCacheMax destinations.
func TestRouteCacheBounded(t *testing.T) {
	parallel(t)
	f := &fakeRoutes{mtu: map[netip.Addr]int{}}
	rc := &routeCache{ttl: time.Minute, lookup: f.lookup, m: make(map[netip.Addr]routeEntry)}
	t0 := time.Unix(1000, 0)
	addr := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 9)
	}
	for i := 0; i < routeCacheMax; i++ {
		f.mtu[addr(i).Addr()] = 1500
		rc.mtuAt(addr(i), t0)
	}
	if len(rc.m) != routeCacheMax {
		t.Fatalf("%d entries, want %d", len(rc.m), routeCacheMax)
	}
	// Half of them were refreshed later; the rest expire first.
	for i := 0; i < routeCacheMax/2; i++ {
		rc.mtuAt(addr(i), t0.Add(time.Minute)) // expired: looked up again
	}
	rc.mtuAt(addr(routeCacheMax), t0.Add(time.Minute+time.Second))
	if len(rc.m) != routeCacheMax/2+1 {
		t.Fatalf("after the expired went: %d entries, want %d", len(rc.m), routeCacheMax/2+1)
	}
	calls := f.calls
	rc.mtuAt(addr(0), t0.Add(time.Minute+time.Second))
	if f.calls != calls {
		t.Fatal("a live entry was dropped to make room")
	}
	// Full of live entries: it starts over.
	for i := routeCacheMax + 1; len(rc.m) < routeCacheMax; i++ {
		rc.mtuAt(addr(i), t0.Add(time.Minute+time.Second))
	}
	rc.mtuAt(addr(5*routeCacheMax), t0.Add(time.Minute+time.Second))
	if len(rc.m) != 1 {
		t.Fatalf("full of live entries: %d after one more, want 1", len(rc.m))
	}
}

// BenchmarkRouteMTU is the lookup a handshake makes for its peer's path
// MTU: the system's each time, and through a Conn's cache. On Linux the
// two are the same (no cache); with the vaultudp_portable tag (or off
// Linux) the cache answers from memory.
//
//	go test -run '^$' -bench RouteMTU -tags vaultudp_portable .
func BenchmarkRouteMTU(b *testing.B) {
	to := netip.MustParseAddrPort("127.0.0.1:9")
	if _, ok := routeMTU(to); !ok {
		b.Skip("no route MTU for 127.0.0.1 here")
	}
	b.Run("lookup", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			routeMTU(to)
		}
	})
	b.Run("cached", func(b *testing.B) {
		rc := newRouteCache()
		b.ReportAllocs()
		for b.Loop() {
			rc.mtu(to)
		}
	})
}
