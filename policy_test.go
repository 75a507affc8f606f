package vaultudp

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// wireTap records what crosses a memNet, classified.
type wireTap struct {
	mu      sync.Mutex
	entries []wireEntry
}

type wireEntry struct {
	from, to netip.AddrPort
	kind     string // hello, reply, cookie, open (a payload in clear), sealed, junk
	payload  string // of an open datagram
}

func (w *wireTap) record(from, to netip.AddrPort, b []byte) {
	e := wireEntry{from: from, to: to, kind: "junk"}
	if len(b) >= 2 && b[0] == ProtocolVersion {
		switch b[1] {
		case typeSealed:
			e.kind = "sealed"
		case typeOpen:
			if rec, err := parseRecord(b[2:]); err == nil && rec.hasPayload {
				e.kind, e.payload = "open", string(rec.payload)
			}
		case typeHello:
			e.kind = "hello"
		case typeReply:
			e.kind = "reply"
		case typeCookie:
			e.kind = "cookie"
		case typeFinal:
			e.kind = "final"
		}
	}
	w.mu.Lock()
	w.entries = append(w.entries, e)
	w.mu.Unlock()
}

// sentOpen reports whether payload p went from from to to in clear.
func (w *wireTap) sentOpen(from, to netip.AddrPort, p string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.entries {
		if e.from == from && e.to == to && e.kind == "open" && e.payload == p {
			return true
		}
	}
	return false
}

func (w *wireTap) count(from netip.AddrPort, kind string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, e := range w.entries {
		if e.from == from && e.kind == kind {
			n++
		}
	}
	return n
}

// openDatagram is an open (unencrypted) datagram carrying p.
func openDatagram(p string) []byte {
	rec := record{payload: []byte(p), hasPayload: true}
	return rec.appendTo([]byte{ProtocolVersion, typeOpen}, 0)
}

// The policy matrix. A has policy pa for every peer, B has pb (both as
// Config.Policy, so the peers are learned, not configured). Each cell runs
// the same script:
//
//  1. A writes m1 to B (no session exists yet); if pa is not Plaintext,
//     A.Handshake waits for the session or its failure;
//  2. A writes m3 (after the handshake, or its failure);
//  3. B writes m2 to A, then waits for a handshake if pb is not Plaintext;
//  4. B writes m4.
//
// Expected, with "sealed"/"open" for how a datagram was delivered and "-"
// for not delivered (B's column: m1, m3; A's: m2, m4):
//
//	A \ B      RequireEncryption      Opportunistic          Plaintext
//	Require    B sealed,sealed        B sealed,sealed        B -,-  (a)
//	           A sealed,sealed        A sealed,sealed        A -,-
//	Opportun.  B -,sealed (b)         B open,sealed (c)      B open,open (d)
//	           A sealed,sealed        A sealed,sealed        A open,open
//	Plaintext  B -,-  (e)             B open,open (d)        B open,open
//	           A -,-                  A open,open            A open,open
//
//	(a) B refuses A's hellos (Drops.Policy); A's handshake times out, m1
//	    is dropped (Drops.HandshakeTimeout) and m3, written in the back-off,
//	    is dropped too (Drops.WriteBackoff; no write error, as on a UDP
//	    socket); A refuses B's plaintext (Drops.Policy).
//	(b) m1 went open before the session: B refuses it (Drops.Policy).
//	(c) m1 went open before the session and B accepts it: B had not yet
//	    seen A sealed. From then on both sides send only sealed.
//	(d) the side that refuses hellos stays in plaintext; the Opportunistic
//	    side's handshake times out and it goes on in clear, without errors.
//	(e) mirror of (a): B's m2 is dropped, m4 is dropped in the back-off.
//
// A side that requires encryption never sends a payload in clear, and a
// side whose policy is Plaintext never sends a hello.
func TestPolicyMatrix(t *testing.T) {
	parallel(t)
	cases := []struct {
		pa, pb       Policy
		bGets, aGets [2]string // m1, m3 at B; m2, m4 at A
		bRefusesData int       // open datagrams with payload B drops by policy
		aRefusesData int
	}{
		{RequireEncryption, RequireEncryption, [2]string{"sealed", "sealed"}, [2]string{"sealed", "sealed"}, 0, 0},
		{RequireEncryption, Opportunistic, [2]string{"sealed", "sealed"}, [2]string{"sealed", "sealed"}, 0, 0},
		{RequireEncryption, Plaintext, [2]string{"-", "-"}, [2]string{"-", "-"}, 0, 2},
		{Opportunistic, RequireEncryption, [2]string{"-", "sealed"}, [2]string{"sealed", "sealed"}, 1, 0},
		{Opportunistic, Opportunistic, [2]string{"open", "sealed"}, [2]string{"sealed", "sealed"}, 0, 0},
		{Opportunistic, Plaintext, [2]string{"open", "open"}, [2]string{"open", "open"}, 0, 0},
		{Plaintext, RequireEncryption, [2]string{"-", "-"}, [2]string{"-", "-"}, 2, 0},
		{Plaintext, Opportunistic, [2]string{"open", "open"}, [2]string{"open", "open"}, 0, 0},
		{Plaintext, Plaintext, [2]string{"open", "open"}, [2]string{"open", "open"}, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.pa.String()+"/"+tc.pb.String(), func(t *testing.T) {
			tap := &wireTap{}
			n := newMemNet()
			n.tap = tap.record
			ma, mb := n.listen(t, "10.0.0.1:1000"), n.listen(t, "10.0.0.2:2000")
			a := wrapT(t, ma, &Config{Policy: tc.pa, HandshakeTimeout: 300 * time.Millisecond, MTU: 1500})
			b := wrapT(t, mb, &Config{Policy: tc.pb, HandshakeTimeout: 300 * time.Millisecond, MTU: 1500})
			aFails := tc.pa != Plaintext && tc.pb == Plaintext // a's handshake cannot succeed
			bFails := tc.pb != Plaintext && tc.pa == Plaintext
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()

			write := func(c *Conn, m string, to netip.AddrPort, wantErr bool) {
				t.Helper()
				before := c.Stats().Drops.WriteBackoff
				_, err := c.WriteToUDPAddrPort([]byte(m), to)
				switch {
				case err != nil:
					t.Fatalf("write %s: %v", m, err)
				case wantErr && c.Stats().Drops.WriteBackoff != before+1:
					t.Fatalf("write %s: not counted in Drops.WriteBackoff", m)
				}
			}
			handshake := func(c *Conn, to netip.AddrPort, p Policy, fails bool) {
				t.Helper()
				if p == Plaintext {
					if err := c.Handshake(ctx, to); !errors.Is(err, ErrNoSession) {
						t.Fatalf("Handshake under Plaintext: %v, want ErrNoSession", err)
					}
					return
				}
				err := c.Handshake(ctx, to)
				if fails != (err != nil) || (fails && !errors.Is(err, ErrHandshakeTimeout)) {
					t.Fatalf("Handshake: %v, want failure %v", err, fails)
				}
			}

			write(a, "m1", mb.addr, false)
			handshake(a, mb.addr, tc.pa, aFails)
			write(a, "m3", mb.addr, aFails && tc.pa == RequireEncryption)
			settle(t, ma, mb)
			write(b, "m2", ma.addr, false)
			handshake(b, ma.addr, tc.pb, bFails)
			write(b, "m4", ma.addr, bFails && tc.pb == RequireEncryption)
			settle(t, ma, mb)

			check := func(name string, c *Conn, from, to netip.AddrPort, msgs [2]string, want [2]string) {
				t.Helper()
				delivered := 0
				for i, m := range msgs {
					open := tap.sentOpen(from, to, m)
					if want[i] == "sealed" && open {
						t.Errorf("%s went in clear, want sealed", m)
					}
					if want[i] == "open" && !open {
						t.Errorf("%s did not go in clear", m)
					}
					if want[i] != "-" {
						// In order: the second write, made once the
						// handshake completed, does not overtake the first
						// if that one waited for the handshake.
						expectRead(t, c, m, from)
						delivered++
					}
				}
				expectNothing(t, c, 20*time.Millisecond)
				if s := c.Stats(); s.DatagramsIn != uint64(delivered) {
					t.Errorf("%s: DatagramsIn %d, want %d", name, s.DatagramsIn, delivered)
				}
			}
			check("b", b, ma.addr, mb.addr, [2]string{"m1", "m3"}, tc.bGets)
			check("a", a, mb.addr, ma.addr, [2]string{"m2", "m4"}, tc.aGets)

			as, bs := a.Stats(), b.Stats()
			bHellos := tc.pb == Plaintext && tc.pa != Plaintext // b refuses a's hellos
			aHellos := tc.pa == Plaintext && tc.pb != Plaintext
			checkPolicy := func(name string, got uint64, data int, hellos bool) {
				t.Helper()
				if hellos && got <= uint64(data) || !hellos && got != uint64(data) {
					t.Errorf("%s: Drops.Policy %d, want %d refused datagrams (plus refused hellos: %v)", name, got, data, hellos)
				}
			}
			checkPolicy("a", as.Drops.Policy, tc.aRefusesData, aHellos)
			checkPolicy("b", bs.Drops.Policy, tc.bRefusesData, bHellos)
			if aFails && tc.pa == RequireEncryption && as.Drops.HandshakeTimeout != 1 {
				t.Errorf("a: Drops.HandshakeTimeout %d, want 1 (m1)", as.Drops.HandshakeTimeout)
			}
			if bFails && tc.pb == RequireEncryption && bs.Drops.HandshakeTimeout != 1 {
				t.Errorf("b: Drops.HandshakeTimeout %d, want 1 (m2)", bs.Drops.HandshakeTimeout)
			}
			for _, s := range []struct {
				name string
				p    Policy
				addr netip.AddrPort
			}{{"a", tc.pa, ma.addr}, {"b", tc.pb, mb.addr}} {
				if s.p == Plaintext && tap.count(s.addr, "hello") > 0 {
					t.Errorf("%s (Plaintext) sent %d hellos", s.name, tap.count(s.addr, "hello"))
				}
				if s.p == RequireEncryption && tap.count(s.addr, "open") > 0 {
					t.Errorf("%s (RequireEncryption) sent %d payloads in clear", s.name, tap.count(s.addr, "open"))
				}
			}
			if t.Failed() {
				t.Logf("a: %+v", as)
				t.Logf("b: %+v", bs)
				var sb strings.Builder
				for _, e := range tap.entries {
					sb.WriteString(e.from.String() + " -> " + e.to.String() + " " + e.kind + " " + e.payload + "\n")
				}
				t.Logf("wire:\n%s", sb.String())
			}
		})
	}
}

// TestOpportunisticNoDowngrade: once an Opportunistic Conn has seen a peer
// sealed, an open datagram claiming to be from that peer (a forged source
// address) is dropped and counted as a policy drop. Before that, open
// datagrams from it are accepted.
func TestOpportunisticNoDowngrade(t *testing.T) {
	parallel(t)
	n := newMemNet()
	ma, mb := n.listen(t, "10.0.0.1:1000"), n.listen(t, "10.0.0.2:2000")
	cfg := &Config{Policy: Opportunistic, MTU: 1500}
	a, b := wrapT(t, ma, cfg), wrapT(t, mb, cfg)

	// Before any session, plaintext claiming to be from a is accepted.
	n.inject(ma.addr, mb.addr, openDatagram("early plaintext"))
	expectRead(t, b, "early plaintext", ma.addr)

	handshakeT(t, a, mb.addr)
	if _, err := a.WriteToUDPAddrPort([]byte("sealed"), mb.addr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "sealed", ma.addr)
	before := b.Stats()

	n.inject(ma.addr, mb.addr, openDatagram("forged downgrade"))
	settle(t, ma, mb)
	expectNothing(t, b, 20*time.Millisecond)
	after := b.Stats()
	if after.Drops.Policy != before.Drops.Policy+1 || after.DatagramsIn != before.DatagramsIn {
		t.Errorf("forged plaintext: Drops.Policy %d -> %d, DatagramsIn %d -> %d; want +1, +0",
			before.Drops.Policy, after.Drops.Policy, before.DatagramsIn, after.DatagramsIn)
	}
	// Sealed traffic goes on.
	if _, err := a.WriteToUDPAddrPort([]byte("still sealed"), mb.addr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, b, "still sealed", ma.addr)
	// b, which has seen a sealed, never answers in clear either.
	if _, err := b.WriteToUDPAddrPort([]byte("reply"), ma.addr); err != nil {
		t.Fatal(err)
	}
	expectRead(t, a, "reply", mb.addr)
}
