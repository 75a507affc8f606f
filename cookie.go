package vaultudp

import (
	"crypto/rand"
	"crypto/subtle"
	"hash/maphash"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/crypto/blake2b"
)

// cookieRotation is how often the cookie secret changes. A cookie made
// under the previous secret is still accepted, so a cookie lives between
// one and two rotations.
const cookieRotation = 2 * time.Minute

// DefaultCookieThreshold is the number of hellos per second above which a
// responder asks for cookies (Config.CookieThreshold): well under the
// handshakes one core can answer (about 2,000/s on the machine of
// BENCHMARKS.md: v4's responder, 0.5 ms each), well over what a
// legitimate crowd of peers sends.
const DefaultCookieThreshold = 500

// cookieJar makes and checks cookies, and tells when the responder is
// under load. A cookie is BLAKE2b-128, keyed by a random secret that
// rotates every cookieRotation, over the source IP (16 bytes, IPv4 as
// IPv4-mapped IPv6) and port (2 bytes, big endian). It proves the sender
// receives at that address, so a spoofed flood costs the responder one
// MAC per hello, not a signature verification.
type cookieJar struct {
	threshold int
	budget    sourceBudget // cookie messages per source (cookieRate)
	holders   sourceBudget // hellos with a valid cookie per source (holderRate)
	jobs      cookieQueue  // cookie messages to send (handshake_queue.go)

	// mu guards the fields below.
	mu          sync.Mutex
	secret      [32]byte
	previous    [32]byte
	rotated     time.Time
	second      time.Time // start of the one-second load window
	helloCount  int       // hellos seen in that window
	loadedUntil time.Time // cookies required until then
}

func newCookieJar(threshold int, now time.Time) *cookieJar {
	j := &cookieJar{threshold: threshold, rotated: now, second: now,
		budget:  newSourceBudget(cookieRate, cookieBurst),
		holders: newSourceBudget(holderRate, holderBurst),
		jobs:    newCookieQueue()}
	rand.Read(j.secret[:])
	rand.Read(j.previous[:])
	return j
}

// rotateLocked changes the secret when it is older than cookieRotation.
//
// Rotations keep to a fixed schedule (rotated advances by whole periods)
// and count every period that passed: rotating only once per call, at the
// time of the call, let a cookie outlive two rotations, without limit when
// no hello came in between (made at 0, still valid at 100 min), and by up
// to a period when rotations drifted to the time of use.
func (j *cookieJar) rotateLocked(now time.Time) {
	n := now.Sub(j.rotated) / cookieRotation // periods passed; <= 0 if the clock stepped back
	if n < 1 {
		return
	}
	if n == 1 {
		j.previous = j.secret
	} else {
		// The current secret is two or more periods old: neither it
		// nor the previous may be accepted any longer.
		rand.Read(j.previous[:])
	}
	rand.Read(j.secret[:])
	j.rotated = j.rotated.Add(n * cookieRotation)
}

func cookieFor(secret *[32]byte, addr netip.AddrPort) [cookieLen]byte {
	var msg [18]byte
	ip := addr.Addr().As16()
	copy(msg[:16], ip[:])
	msg[16], msg[17] = byte(addr.Port()>>8), byte(addr.Port())
	h, _ := blake2b.New(cookieLen, secret[:])
	h.Write(msg[:])
	var c [cookieLen]byte
	h.Sum(c[:0])
	return c
}

// make returns the current cookie for addr.
func (j *cookieJar) make(addr netip.AddrPort, now time.Time) [cookieLen]byte {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.rotateLocked(now)
	return cookieFor(&j.secret, addr)
}

// valid reports whether cookie is addr's under the current or previous
// secret, in constant time.
func (j *cookieJar) valid(addr netip.AddrPort, cookie []byte, now time.Time) bool {
	j.mu.Lock()
	j.rotateLocked(now)
	cur, prev := cookieFor(&j.secret, addr), cookieFor(&j.previous, addr)
	j.mu.Unlock()
	return subtle.ConstantTimeCompare(cur[:], cookie) == 1 ||
		subtle.ConstantTimeCompare(prev[:], cookie) == 1
}

// underLoad counts one hello and reports whether cookies are required:
// from the moment more than threshold hellos arrive within a second
// until a full second after the rate falls back.
func (j *cookieJar) underLoad(now time.Time) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if now.Sub(j.second) >= time.Second {
		j.second, j.helloCount = now, 0
	}
	j.helloCount++
	if j.helloCount > j.threshold {
		j.loadedUntil = now.Add(time.Second)
	}
	return now.Before(j.loadedUntil)
}

// Budgets under load, as WireGuard's: on what proves a source receives,
// not on what anyone can forge.
//
// Cookie messages. A hello without a valid cookie costs the reader a
// cookie message, a system call: a flood that never answers its cookies
// would make the reader spend its time sending them. Each source (an
// address and port) gets at most cookieRate cookies a second, in bursts
// of cookieBurst; past that its cookieless hellos are dropped
// (Drops.CookieLimit). Sources forged at random each get their cookie (the
// cookie goroutine's queue bounds them, Drops.HandshakeQueueFull).
//
// What this does not stop: hellos forged from a client's own address and
// port spend its budget, and it gets no cookie while that lasts (README,
// "does not protect"). The forger must know the port, which an off-path
// attacker rarely does. The budget cannot be kept for what only the
// client knows (its hello's sender index, say) without letting one socket
// that sends many distinct hellos have a cookie message for each:
// measured so, an unpaced flood from one socket kept new clients waiting
// 0.7 s on average, up to 2.1 s, where the budget per source keeps them
// at a few milliseconds (TestSecurityHelloFloodHandshake).
//
// Hellos with a valid cookie. The cookie proves the source receives; it
// does not limit it: a source that answered one cookie could send signed
// hellos, each costing a responder's key exchange, as fast as its link
// allows, and fill the handshake queue ahead of new clients. Each source
// (an address and port: the cookie's) gets at most holderRate of them a
// second, in bursts of holderBurst, past that dropped (Drops.CookieLimit).
// WireGuard bounds these initiations per IP (20 a second); by port too
// here, so that clients behind one NAT address, or a flash crowd from one
// host, are not one budget. A client sends one hello a retry interval,
// and one more when a cookie comes.
const (
	cookieRate  = 20
	cookieBurst = 20
	holderRate  = 20
	holderBurst = 5
)

// budgetSlots is the size of a sourceBudget's table, 24 bytes a slot,
// allocated at the first use (96 KiB).
const budgetSlots = 4096

// sourceBudget paces something (resets, cookies) per source, in a fixed
// table of token buckets found by a keyed hash of the source's address
// and port: bounded memory, whatever the number of sources. The last
// source seen in a slot owns it; another source that hashes there takes it
// over with a full bucket, so a flood from many sources cannot drain the
// budget of one it does not forge, and the secret seed keeps an attacker
// from aiming at a slot. The port is part of the source: keyed by address
// alone, a flood forged from a client's address (or from behind its NAT)
// would drain the budget of the client's own port, and with it the
// client's cookies or resets, at a hundred datagrams a second.
type sourceBudget struct {
	rate, burst float64
	seed        maphash.Seed

	mu    sync.Mutex
	slots []budgetSlot
}

type budgetSlot struct {
	tag    uint64
	tokens float64
	last   int64 // Conn clock of the last refill
}

func newSourceBudget(rate, burst float64) sourceBudget {
	return sourceBudget{rate: rate, burst: burst, seed: maphash.MakeSeed()}
}

// allow takes one from the budget of from's source at now (Conn clock,
// nanoseconds).
func (b *sourceBudget) allow(from netip.AddrPort, now int64) bool {
	var k [18]byte
	a := from.Addr().Unmap().As16()
	copy(k[:], a[:])
	k[16], k[17] = byte(from.Port()>>8), byte(from.Port())
	h := maphash.Bytes(b.seed, k[:])
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.slots == nil {
		b.slots = make([]budgetSlot, budgetSlots)
	}
	s := &b.slots[h%budgetSlots]
	if s.tag != h {
		*s = budgetSlot{tag: h, tokens: b.burst, last: now}
	} else {
		s.tokens = min(b.burst, s.tokens+float64(now-s.last)*b.rate/1e9)
		s.last = now
	}
	if s.tokens < 1 {
		return false
	}
	s.tokens--
	return true
}
