package vaultudp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// Tests of protocol v4's handshake as the Conn runs it, over loopback
// sockets: what a capture holds, what a downgrade does, preshared keys,
// the parameters known when Handshake returns, and the amplification of
// every answer to an unproved address.

// identityForms are the byte strings a capture must not hold for the
// identity key pub: the key, fixed functions of it, and every 12-byte
// window of it.
func identityForms(pub []byte) [][]byte {
	s256, s512 := sha256.Sum256(pub), sha512.Sum512(pub)
	forms := [][]byte{pub, s256[:], s512[:32]}
	for i := 0; i+12 <= len(pub); i += 4 {
		forms = append(forms, pub[i:i+12])
	}
	return forms
}

// TestV4CaptureHidesIdentities: whole handshakes between pinned, TOFU
// and preshared-key peers, rekeys and data both ways, captured on the
// path (a relay between the two): no datagram holds either side's
// identity key, a fixed hash of it, or any 12 bytes of it. It prints the
// handshake datagrams' sizes, and checks that the first datagram rode in
// the final message.
func TestV4CaptureHidesIdentities(t *testing.T) {
	parallel(t)
	var psk [32]byte
	rand.Read(psk[:])
	for _, tc := range []struct {
		name   string
		pinned bool
		psk    bool
	}{{"tofu", false, false}, {"pinned", true, false}, {"psk", false, true}, {"pinned+psk", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := func() *Config {
				c := &Config{HandshakeTimeout: 2 * time.Second}
				if tc.psk {
					c.PresharedKey = &psk
				}
				return c
			}
			a, b := pair(t, "udp4", "127.0.0.1", cfg(), cfg())
			r := newRelay(t, addrOf(a), addrOf(b))
			ra := r.addr()
			if tc.pinned {
				if err := b.AddPeer(PeerConfig{Addr: ra, PublicKey: a.PublicKey()}); err != nil {
					t.Fatal(err)
				}
				if err := a.AddPeer(PeerConfig{Addr: ra, PublicKey: b.PublicKey()}); err != nil {
					t.Fatal(err)
				}
			}
			// The first datagram is written before any session: it waits,
			// and rides in the final message.
			if _, err := a.WriteToUDPAddrPort([]byte("first"), ra); err != nil {
				t.Fatal(err)
			}
			expectRead(t, b, "first", ra)
			for i := range 3 {
				if _, err := b.WriteToUDPAddrPort([]byte("answer"), ra); err != nil {
					t.Fatal(err)
				}
				expectRead(t, a, "answer", ra)
				if i < 2 {
					rekeyNow(t, a, b, ra)
				}
			}
			var sizes []int
			coalesced := false
			for _, d := range r.datagrams() {
				for _, id := range [][]byte{a.PublicKey(), b.PublicKey()} {
					for _, f := range identityForms(id) {
						if bytes.Contains(d, f) {
							t.Fatalf("a datagram of %d bytes (type %d) holds an identity's bytes %x", len(d), d[1], f)
						}
					}
				}
				if d[0] == ProtocolVersion && d[1] >= typeHello && d[1] <= typeFinal {
					sizes = append(sizes, len(d))
					if d[1] == typeFinal && len(d) > finalAloneLen {
						coalesced = true
					}
				}
			}
			t.Logf("%s: %d datagrams captured; handshake datagrams (hello, reply, final...) %v", tc.name, len(r.datagrams()), sizes)
			if len(sizes) < 3 || sizes[0] != noise.HelloLen {
				t.Fatalf("handshake datagrams %v: want a %d-byte hello first", sizes, noise.HelloLen)
			}
			if !coalesced && !tc.pinned { // pinned: b's own hello may win the crossing, and a then answers
				t.Error("the first datagram did not ride in a final message")
			}
		})
	}
}

// finalAloneLen is the length of this implementation's final message
// without a coalesced datagram: the header, then message 3 with the
// identity block and 26 bytes of parameters.
var finalAloneLen = 8 + noise.MessageLen(2, 32+64+26)

// rekeyNow makes a's session with to due for renewal and waits for the
// new one on both sides (b knows a at to too: a relay's address). Both
// sides keep only the session before the current one, so two rekeys in a
// row must not outrun the responder: b's background reader may leave the
// final message in its socket for a few tens of milliseconds (direct.go).
func rekeyNow(t *testing.T, a, b *Conn, to netip.AddrPort) {
	t.Helper()
	// First no handshake in flight on either side (pinned peers' hellos
	// at AddPeer may cross, and the second exchange may land after the
	// session taken as the old one here; the rekey is then never asked).
	if took, ok := waitFor(waitLong, func() bool {
		sa, sb := peerState(a, to), peerState(b, to)
		return !sa.attempt && !sa.next && !sb.attempt && !sb.next
	}); !ok {
		t.Fatalf("handshakes still in flight after %v: a %+v, b %+v", took, peerState(a, to), peerState(b, to))
	}
	old := sessionOf(t, a, to)
	old.sendCounter.Store(rekeyAfterMessages)
	// Writes ask for rekeys: a keeps writing, as an application that
	// has traffic does (once a second; the first write asks at once).
	next := time.Now()
	if took, ok := waitFor(waitLong, func() bool {
		if time.Now().After(next) {
			if _, err := a.WriteToUDPAddrPort([]byte("rekey"), to); err != nil {
				t.Error(err)
			}
			next = time.Now().Add(time.Second)
		}
		s, sb := currentSession(a, to), currentSession(b, to)
		return s != nil && s != old && sb != nil && sb.localIndex == s.remoteIndex
	}); !ok {
		t.Fatalf("no rekey on both sides after %v: a %+v, b %+v", took, peerState(a, to), peerState(b, to))
	}
}

// TestV4DowngradeFails: a hello offering only version 3, a v3 hello, and
// a classical-only hello (X25519 alone, no ML-KEM key: Noise XX's first
// message, padded) get no answer from a v4 Conn; and between two v4
// Conns, a path that rewrites the hello to any of them makes the
// handshake fail (a v4 peer never settles for less with another).
func TestV4DowngradeFails(t *testing.T) {
	parallel(t)
	v3Only := func(hello []byte) []byte {
		h := bytes.Clone(hello)
		h[9] = 3 // the version list (n = 1): the prologue, so no key opens it
		return h
	}
	classical := func(hello []byte) []byte {
		h := make([]byte, len(hello))
		copy(h, hello[:noise.HelloLen-cookieLen-noise.MessageLen(0, 0)+32]) // header and e; no ML-KEM key, zeros after
		return h
	}
	v3Hello := func(hello []byte) []byte {
		h := bytes.Clone(hello)
		h[0] = 3
		return h
	}
	for _, tc := range []struct {
		name    string
		rewrite func([]byte) []byte
	}{{"version 3 offered", v3Only}, {"classical only", classical}, {"v3 hello", v3Hello}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &Config{HandshakeTimeout: 400 * time.Millisecond}
			a, b := pair(t, "udp4", "127.0.0.1", cfg, cfg)
			// A stranger's offer: no answer.
			raw := rawUDP(t)
			before := b.Stats()
			if _, err := raw.WriteToUDPAddrPort(tc.rewrite(helloDatagram(t)), addrOf(b)); err != nil {
				t.Fatal(err)
			}
			if took, ok := waitFor(waitLong, func() bool {
				s := b.Stats()
				return s.Drops.Malformed+s.Drops.Auth > before.Drops.Malformed+before.Drops.Auth
			}); !ok {
				t.Fatalf("the offer was not refused and counted after %v", took)
			}
			raw.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if n, _, err := raw.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
				t.Fatalf("the offer was answered with %d bytes", n)
			}
			// Between two v4 Conns, through a path that rewrites hellos.
			r := newRelay(t, addrOf(a), addrOf(b))
			r.setRewrite(func(p []byte, toB bool) [][]byte {
				if toB && len(p) > 1 && p[1] == typeHello {
					return [][]byte{tc.rewrite(p)}
				}
				return [][]byte{p}
			})
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			err := a.Handshake(ctx, r.addr())
			if !errors.Is(err, ErrHandshakeTimeout) {
				t.Fatalf("Handshake through the downgrading path: %v, want a timeout", err)
			}
			if s := b.Stats(); s.Handshakes != 0 || s.Sessions != 0 {
				t.Fatalf("b made %d handshakes, holds %d sessions", s.Handshakes, s.Sessions)
			}
		})
	}
}

// TestV4PresharedKey: equal keys (the Config's, or a peer's own) make a
// session; different keys, or a key on one side only, fail at once at
// the side that dialed with an error that says so (ErrPresharedKey, also
// ErrPeerRejected), counted in Drops.PresharedKey, well before the
// handshake timeout; the other side has made nothing.
func TestV4PresharedKey(t *testing.T) {
	parallel(t)
	k1, k2 := new([32]byte), new([32]byte)
	rand.Read(k1[:])
	rand.Read(k2[:])
	const timeout = 3 * time.Second
	for _, tc := range []struct {
		name   string
		ka, kb *[32]byte
		ok     bool
	}{
		{"same", k1, k1, true},
		{"none", nil, nil, true},
		{"different", k1, k2, false},
		{"dialer only", k1, nil, false},
		{"responder only", nil, k2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t, "udp4", "127.0.0.1", &Config{PresharedKey: tc.ka, HandshakeTimeout: timeout}, &Config{PresharedKey: tc.kb, HandshakeTimeout: timeout})
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			start := time.Now()
			err := a.Handshake(ctx, addrOf(b))
			took := time.Since(start)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := a.WriteToUDPAddrPort([]byte("psk"), addrOf(b)); err != nil {
					t.Fatal(err)
				}
				expectRead(t, b, "psk", addrOf(a))
				return
			}
			if !errors.Is(err, ErrPresharedKey) || !errors.Is(err, ErrPeerRejected) {
				t.Fatalf("Handshake: %v, want ErrPresharedKey", err)
			}
			t.Logf("%s: failed after %v: %v", tc.name, took.Round(time.Microsecond), err)
			if took >= timeout/2 {
				t.Errorf("the mismatch took %v to show", took)
			}
			if n := a.Stats().Drops.PresharedKey; n != 1 {
				t.Errorf("Drops.PresharedKey = %d, want 1", n)
			}
			if _, err := a.WriteToUDPAddrPort([]byte("x"), addrOf(b)); !errors.Is(err, ErrPresharedKey) {
				t.Errorf("a write after the mismatch: %v, want ErrPresharedKey", err)
			}
			if s := b.Stats(); s.Handshakes != 0 {
				t.Errorf("b completed %d handshakes", s.Handshakes)
			}
		})
	}
	t.Run("per peer", func(t *testing.T) {
		// b's default key is k2; a, at a configured address, has k1 there.
		a, b := pair(t, "udp4", "127.0.0.1", &Config{HandshakeTimeout: timeout}, &Config{PresharedKey: k2, HandshakeTimeout: timeout})
		if err := b.AddPeer(PeerConfig{Addr: addrOf(a), PresharedKey: k1, Policy: RequireEncryption}); err != nil {
			t.Fatal(err)
		}
		if err := a.AddPeer(PeerConfig{Addr: addrOf(b), PresharedKey: k1}); err != nil {
			t.Fatal(err)
		}
		handshakeT(t, a, addrOf(b))
		// A third Conn, unconfigured at b, holds b's default.
		c := listenT(t, "udp4", "127.0.0.1:0", &Config{PresharedKey: k2})
		handshakeT(t, c, addrOf(b))
		d := listenT(t, "udp4", "127.0.0.1:0", &Config{PresharedKey: k1})
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := d.Handshake(ctx, addrOf(b)); !errors.Is(err, ErrPresharedKey) {
			t.Fatalf("a stranger with another peer's key: %v, want ErrPresharedKey", err)
		}
	})
}

// TestV4MaxPayloadFinalAtHandshake: when Handshake returns, MaxPayloadTo
// is what the peer said in the handshake, and a write of that size
// succeeds at once and arrives whole (v3: 1431 for the first 100-200 ms,
// and such a write failed with EMSGSIZE).
func TestV4MaxPayloadFinalAtHandshake(t *testing.T) {
	parallel(t)
	for range 5 {
		a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		if err := a.Handshake(ctx, addrOf(b)); err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel()
		n := a.MaxPayloadTo(addrOf(b))
		if !confirmed(a, addrOf(b)) {
			t.Fatal("Handshake returned before the responder confirmed the session")
		}
		// What b said in the handshake: the largest datagram it takes
		// (65,507 where it reads with GRO, else its buffers' 1,472 or more).
		if want := maxPayloadFor(min(max(b.acceptWhole(), b.accept()), udpMaxDatagram)); n != want {
			t.Fatalf("MaxPayloadTo = %d right after Handshake, want %d: the peer's parameters are not known", n, want)
		}
		msg := bytes.Repeat([]byte{0x5a}, n)
		if _, err := a.WriteToUDPAddrPort(msg, addrOf(b)); err != nil {
			t.Fatalf("a write of MaxPayloadTo (%d) right after Handshake: %v", n, err)
		}
		got, _ := readWithin(t, b, waitLong)
		if !bytes.Equal(got, msg) {
			t.Fatalf("got %d bytes, want %d", len(got), n)
		}
		t.Logf("MaxPayloadTo right after Handshake: %d (b's MaxPayload %d)", n, b.MaxPayload())
	}
}

// TestV4Amplification sends each datagram an unproved address can send a
// v4 Conn, from a plain socket, and measures the answer: never larger
// than what caused it. It prints every factor.
func TestV4Amplification(t *testing.T) {
	heavy(t)
	b := listenT(t, "udp4", "127.0.0.1:0", &Config{CookieThreshold: 2})
	raw := rawUDP(t)
	buf := make([]byte, 65536)
	answer := func(what string, d []byte, want byte) int {
		t.Helper()
		if _, err := raw.WriteToUDPAddrPort(d, addrOf(b)); err != nil {
			t.Fatal(err)
		}
		raw.SetReadDeadline(time.Now().Add(waitLong))
		for {
			n, _, err := raw.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("%s: no answer: %v", what, err)
			}
			if n >= 2 && buf[1] == want {
				f := float64(n) / float64(len(d))
				t.Logf("amplification: %-34s %5d B -> %5d B: factor %.3f", what, len(d), n, f)
				if n > len(d) {
					t.Errorf("%s: %d bytes answered with %d", what, len(d), n)
				}
				return n
			}
		}
	}
	answer("hello -> reply", helloDatagram(t), typeReply)
	// Under load (more than 2 hellos a second): a cookie.
	for range 3 {
		raw.WriteToUDPAddrPort(helloDatagram(t), addrOf(b))
	}
	answer("hello under load, no cookie -> cookie", helloDatagram(t), typeCookie)
	// A sealed datagram for an index b never issued: nothing (no reset
	// for an index without a live session).
	sealed := make([]byte, sealedOverhead)
	sealed[0], sealed[1] = ProtocolVersion, typeSealed
	binary.BigEndian.PutUint32(sealed[4:], 0xdeadbeef)
	before := b.Stats().ResetsSent
	raw.WriteToUDPAddrPort(sealed, addrOf(b))
	if took, ok := waitFor(waitLong, func() bool { return b.Stats().Drops.UnknownSession > 0 }); !ok {
		t.Fatalf("the sealed datagram was not counted after %v", took)
	}
	if n := b.Stats().ResetsSent - before; n > 0 {
		t.Logf("amplification: %-34s %5d B -> %5d B: factor %.3f", "sealed, unknown index -> reset", len(sealed), resetLen, float64(resetLen)/float64(len(sealed)))
	} else {
		t.Logf("amplification: %-34s %5d B -> nothing", "sealed, unknown index", len(sealed))
	}
	// A final message for no reply: nothing.
	final := make([]byte, finalAloneLen)
	final[0], final[1] = ProtocolVersion, typeFinal
	binary.BigEndian.PutUint16(final[2:], uint16(len(final)-8))
	binary.BigEndian.PutUint32(final[4:], 0xdeadbeef)
	stale := b.Stats().Drops.Stale
	raw.WriteToUDPAddrPort(final, addrOf(b))
	if took, ok := waitFor(waitLong, func() bool { return b.Stats().Drops.Stale > stale }); !ok {
		t.Logf("%+v", b.Stats().Drops)
		t.Fatalf("the stray final message was not counted after %v", took)
	}
	t.Logf("amplification: %-34s %5d B -> nothing", "final for no reply", len(final))
	raw.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	for {
		n, _, err := raw.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if buf[1] != typeReply && buf[1] != typeCookie && buf[1] != typeReset {
			t.Errorf("an answer of %d bytes, type %d, to a datagram that deserves none", n, buf[1])
		}
	}
}

// TestV4HelloCreditFromPlaintext: a peer known only from plaintext gets a
// hello (1360 bytes) only once it has sent at least as many bytes.
func TestV4HelloCreditFromPlaintext(t *testing.T) {
	parallel(t)
	if got := (&Conn{}).helloWireLen(); got != noise.HelloLen {
		t.Fatalf("helloWireLen = %d, want %d", got, noise.HelloLen)
	}
	b := listenT(t, "udp4", "127.0.0.1:0", &Config{Policy: Opportunistic})
	raw := rawUDP(t)
	open := func(n int) []byte {
		return (&record{payload: make([]byte, n), hasPayload: true}).appendTo([]byte{ProtocolVersion, typeOpen}, 0)
	}
	sent := 0
	for sent < noise.HelloLen {
		d := open(200)
		raw.WriteToUDPAddrPort(d, addrOf(b))
		readWithin(t, b, waitLong)
		p, _ := b.peerFor(addrOf2(raw), lookupOnly)
		p.mu.Lock()
		may := b.mayInitiateLocked(p)
		p.mu.Unlock()
		sent += len(d)
		if may != (sent >= noise.HelloLen) {
			t.Fatalf("after %d bytes from the address: may send a hello = %v", sent, may)
		}
	}
}

var _ = net.IPv4 // net is used by helpers in other files' tests

// BenchmarkHandshakeResponderConn: one op is one whole v4 handshake as a
// Conn's responder does it, through the Conn's own code (handleHandshakeNow,
// one message at a time): the hello (parse, Respond: a static key, an
// ephemeral key, the encapsulation, two DH, a signature; the reply sent)
// and the final message (ReadFinal: a DH and a signature check; the trust
// rules; the session made and installed; the confirmation sent). The
// initiator's side is computed outside the timer, from a plain socket.
// handshakes/s is on one core of this machine; BenchmarkHandshakeServer
// (handshake_workers_bench_test.go) is the same through the socket, the
// queue and the workers.
func BenchmarkHandshakeResponderConn(b *testing.B) {
	c := listenT(b, "udp4", "127.0.0.1:0", &Config{CookieThreshold: 1 << 30})
	raw := rawUDP(b)
	from := addrOf2(raw)
	id := GenerateIdentity()
	buf := make([]byte, 65536)
	read := func(typ byte) []byte {
		raw.SetReadDeadline(time.Now().Add(waitLong))
		for {
			n, _, err := raw.ReadFromUDPAddrPort(buf)
			if err != nil {
				b.Fatal(err)
			}
			if n > 1 && buf[1] == typ {
				return buf[:n]
			}
		}
	}
	params := &noise.Params{MaxUnfragmented: 1472, MaxDatagram: 1472}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		init := helloInitFrom(id, uint32(i+1))
		hello := init.Hello()
		b.StartTimer()
		c.handleHandshakeNow(hello, from, netip.Addr{})
		b.StopTimer()
		if _, err := init.ReadReply(read(typeReply)); err != nil {
			b.Fatal(err)
		}
		final, _, err := init.WriteFinal(params)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		c.handleHandshakeNow(final, from, netip.Addr{})
		b.StopTimer()
		read(typeSealed) // the confirmation
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}
