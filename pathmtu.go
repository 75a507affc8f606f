package vaultudp

import (
	"net/netip"
	"sync"
	"time"
)

// routeCache is a Conn's route-MTU lookups (routeMTU), remembered per
// destination address where the lookup is dear. On Linux it asks the
// kernel every time (routeCacheTTL is 0): a lookup there is one
// getsockopt (about 11 us) and brings what path MTU discovery learned
// since. Elsewhere a lookup connects a socket and lists every interface
// with its addresses (100 to 150 us, beside a 190 us handshake), and
// brings only the outgoing interface's MTU, which changes when routes or
// interfaces do: rarely. So it is remembered for routeCacheTTL, and a
// failed lookup (no route: the network may be coming up) for
// routeFailTTL. The cache holds at most routeCacheMax destinations; when
// a new one finds it full, the expired entries go, and if none has, all
// of them (a Conn that talks to more destinations than that within a TTL
// pays the lookups it did before).
type routeCache struct {
	ttl    time.Duration
	lookup func(netip.AddrPort) (mtu int, ok bool)

	mu sync.Mutex // guards m; never held across a lookup
	m  map[netip.Addr]routeEntry
}

type routeEntry struct {
	mtu     int
	ok      bool
	expires time.Time
}

const (
	// routeFailTTL is how long a failed lookup is remembered.
	routeFailTTL = time.Second
	// routeCacheMax is the most destinations a cache holds.
	routeCacheMax = 1024
)

func newRouteCache() *routeCache {
	return &routeCache{ttl: routeCacheTTL, lookup: routeMTU, m: make(map[netip.Addr]routeEntry)}
}

// mtu returns the MTU of the route to addr, and false if it is not known
// (see routeMTU). The port does not choose the route: entries are per
// address (its zone included).
func (rc *routeCache) mtu(addr netip.AddrPort) (int, bool) {
	return rc.mtuAt(addr, time.Now())
}

// mtuAt is mtu at time now.
func (rc *routeCache) mtuAt(addr netip.AddrPort, now time.Time) (int, bool) {
	if rc.ttl <= 0 {
		return rc.lookup(addr)
	}
	key := addr.Addr()
	rc.mu.Lock()
	e, hit := rc.m[key]
	rc.mu.Unlock()
	if hit && now.Before(e.expires) {
		return e.mtu, e.ok
	}
	mtu, ok := rc.lookup(addr)
	ttl := rc.ttl
	if !ok {
		ttl = min(ttl, routeFailTTL)
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if _, there := rc.m[key]; !there && len(rc.m) >= routeCacheMax {
		for k, e := range rc.m {
			if !now.Before(e.expires) {
				delete(rc.m, k)
			}
		}
		if len(rc.m) >= routeCacheMax {
			clear(rc.m)
		}
	}
	rc.m[key] = routeEntry{mtu: mtu, ok: ok, expires: now.Add(ttl)}
	return mtu, ok
}
