package noise

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"math/big"
	"testing"

	"github.com/vaultudp/vaultudp/internal/errs"
	"golang.org/x/crypto/blake2b"
)

// rawHandshake runs the three Noise messages between two
// HandshakeStates made from the given entropy, with tweak (may be nil)
// on both sides, and returns the initiator's and responder's keys.
func rawHandshake(t *testing.T, iEnt, rEnt Entropy, tweak func(token, []byte)) (ik, rk [2][keyLen]byte) {
	t.Helper()
	iS, _ := iEnt.X25519()
	rS, _ := rEnt.X25519()
	i := NewHandshakeState(true, []byte("prologue"), iS, nil, iEnt)
	r := NewHandshakeState(false, []byte("prologue"), rS, nil, rEnt)
	i.tweak, r.tweak = tweak, tweak
	step := func(w, rd *HandshakeState) {
		m, err := w.WriteMessage(nil, []byte("payload"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rd.ReadMessage(nil, m); err != nil {
			t.Fatal(err)
		}
	}
	step(i, r)
	step(r, i)
	step(i, r)
	var err error
	if ik[0], ik[1], err = i.Split(); err != nil {
		t.Fatal(err)
	}
	if rk[0], rk[1], err = r.Split(); err != nil {
		t.Fatal(err)
	}
	if ik != rk {
		t.Fatal("sides disagree")
	}
	return ik, rk
}

// TestKeysDependOnEachSecret changes one shared secret at a time, the
// same way on both sides and everything else fixed (the same keys, the
// same random bytes), and requires the session keys to change: each of
// the X25519 secrets (ee, es, se) and the ML-KEM-768 secret (ekem1)
// enters the keys, so that breaking one primitive leaves the keys
// depending on the other.
func TestKeysDependOnEachSecret(t *testing.T) {
	base, _ := rawHandshake(t, seeded("dep/i"), seeded("dep/r"), nil)
	again, _ := rawHandshake(t, seeded("dep/i"), seeded("dep/r"), nil)
	if base != again {
		t.Fatal("the same inputs gave different keys")
	}
	for _, tok := range []token{tokEE, tokES, tokSE, tokEKEM1} {
		seen := false
		k, _ := rawHandshake(t, seeded("dep/i"), seeded("dep/r"), func(t token, secret []byte) {
			if t == tok {
				secret[0] ^= 1
				seen = true
			}
		})
		if !seen {
			t.Fatalf("%v: no such secret in the handshake", tok)
		}
		if k[0] == base[0] || k[1] == base[1] {
			t.Errorf("%v: the keys do not change with its shared secret", tok)
		}
	}
}

// swapEntropy is e, but for the n-th X25519 key, or the n-th
// encapsulation, which come from other.
type swapEntropy struct {
	Entropy
	other         Entropy
	x25519, encap int // 1-based call to swap; 0: none
	nx, ne        int
}

func (s *swapEntropy) X25519() (*ecdh.PrivateKey, error) {
	s.nx++
	if s.nx == s.x25519 {
		return s.other.X25519()
	}
	return s.Entropy.X25519()
}

func (s *swapEntropy) Encapsulate768(ek *mlkem.EncapsulationKey768) ([]byte, []byte, error) {
	s.ne++
	if s.ne == s.encap {
		return s.other.Encapsulate768(ek)
	}
	return s.Entropy.Encapsulate768(ek)
}

// TestKeysChangeWithEitherExchange replaces one random value at a time
// in a whole handshake: only the initiator's ephemeral X25519 key, or
// only the ML-KEM encapsulation: the keys change either way.
func TestKeysChangeWithEitherExchange(t *testing.T) {
	a, b := stdSides("either")
	base := handshake(t, a, b).iKeys
	cases := []struct {
		name string
		a, b func() Entropy
	}{
		{"initiator ephemeral X25519", func() Entropy {
			return &swapEntropy{Entropy: seeded("either/initiator"), other: seeded("other"), x25519: 2}
		}, func() Entropy { return seeded("either/responder") }},
		{"responder ephemeral X25519", func() Entropy { return seeded("either/initiator") }, func() Entropy {
			return &swapEntropy{Entropy: seeded("either/responder"), other: seeded("other"), x25519: 2}
		}},
		{"ML-KEM encapsulation", func() Entropy { return seeded("either/initiator") }, func() Entropy {
			return &swapEntropy{Entropy: seeded("either/responder"), other: seeded("other"), encap: 1}
		}},
	}
	for _, c := range cases {
		a.ent, b.ent = c.a(), c.b()
		k := handshake(t, a, b).iKeys
		if k.I2R == base.I2R || k.R2I == base.R2I || k.Hash == base.Hash {
			t.Errorf("%s: keys unchanged", c.name)
		}
	}
	a.ent, b.ent = seeded("either/initiator"), seeded("either/responder")
	if k := handshake(t, a, b).iKeys; *k != *base {
		t.Fatal("the unchanged inputs gave other keys")
	}
}

// montgomery returns the X25519 form u = (1+y)/(1-y) of an Ed25519
// public key: what a converted identity would send.
func montgomery(pub ed25519.PublicKey) []byte {
	p := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	le := bytes.Clone(pub)
	le[31] &= 0x7f
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		le[i], le[j] = le[j], le[i]
	}
	y := new(big.Int).SetBytes(le)
	num := new(big.Int).Add(big.NewInt(1), y)
	den := new(big.Int).Sub(big.NewInt(1), y)
	den.Mod(den, p)
	u := num.Mul(num, den.ModInverse(den, p))
	u.Mod(u, p)
	out := make([]byte, 32)
	u.FillBytes(out)
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// identityFunctions are fixed functions of an identity key a wire
// capture must not contain.
func identityFunctions(id ed25519.PrivateKey) map[string][]byte {
	pub := id.Public().(ed25519.PublicKey)
	s256 := sha256.Sum256(pub)
	s512 := sha512.Sum512(pub)
	b2 := blake2b.Sum256(pub)
	h := sha512.Sum512(id.Seed()) // the X25519 scalar of the converted key
	x, _ := ecdh.X25519().NewPrivateKey(h[:32])
	sig := ed25519.Sign(id, nil)
	return map[string][]byte{
		"identity key": pub, "SHA-256 of it": s256[:], "SHA-512 of it": s512[:],
		"BLAKE2b-256 of it": b2[:], "its Montgomery (X25519) form": montgomery(pub),
		"the X25519 key of its seed": x.PublicKey().Bytes(), "its signature of nothing": sig,
	}
}

// containsWindow reports whether hay holds any w-byte run of needle.
func containsWindow(hay, needle []byte, w int) bool {
	for i := 0; i+w <= len(needle); i++ {
		if bytes.Contains(hay, needle[i:i+w]) {
			return true
		}
	}
	return false
}

// TestWireHidesIdentities captures whole handshakes (every byte both
// sides send: hello, reply, final) and requires that no 8-byte run of
// either identity key, or of a fixed function of it, appears; that two
// sessions between the same identities share no 6-byte run outside the
// fixed fields (version, type, reserved, version list, the zero cookie,
// the final's length); and that the lengths do not depend on who talks.
func TestWireHidesIdentities(t *testing.T) {
	psk := [PSKLen]byte{1, 2, 3}
	for _, withPSK := range []bool{false, true} {
		var caps [][]byte
		wireLen := 0
		for s := range 2 {
			a, b := stdSides("hide" + string(rune('0'+s)))
			var idx [8]byte
			(&counterReader{seed: "idx" + string(rune('0'+s))}).Read(idx[:])
			a.index = uint32(idx[0])<<24 | uint32(idx[1])<<16 | uint32(idx[2])<<8 | uint32(idx[3]) | 1
			b.index = uint32(idx[4])<<24 | uint32(idx[5])<<16 | uint32(idx[6])<<8 | uint32(idx[7]) | 1
			if withPSK {
				a.psk, b.psk = &psk, &psk
			}
			r := handshake(t, a, b)
			wire := bytes.Join([][]byte{r.hello, r.reply, r.final}, nil)
			wireLen = len(wire)
			// The check finds what it looks for: v3's hello carried the
			// identity key in clear.
			if !containsWindow(append(bytes.Clone(wire), a.id.Public().(ed25519.PublicKey)...), a.id.Public().(ed25519.PublicKey), 8) {
				t.Fatal("the search finds nothing")
			}
			for who, id := range map[string]ed25519.PrivateKey{"initiator": a.id, "responder": b.id} {
				for what, f := range identityFunctions(id) {
					if containsWindow(wire, f, 8) {
						t.Errorf("psk %v: the capture contains 8 bytes of the %s's %s", withPSK, who, what)
					}
				}
			}
			// Blank the fixed fields: what remains is what could link.
			h, rp, f := bytes.Clone(r.hello), bytes.Clone(r.reply), bytes.Clone(r.final)
			clear(h[:4])
			clear(h[8:10])
			h = h[:len(h)-CookieLen]
			clear(rp[:4])
			clear(f[:4])
			caps = append(caps, bytes.Join([][]byte{h, rp, f}, nil))
		}
		if len(caps[0]) != len(caps[1]) {
			t.Errorf("psk %v: captures of %d and %d bytes", withPSK, len(caps[0]), len(caps[1]))
		}
		shared := 0
		for i := 0; i+6 <= len(caps[0]); i++ {
			w := caps[0][i : i+6]
			if !bytes.Equal(w, make([]byte, 6)) && bytes.Contains(caps[1], w) {
				shared++
			}
		}
		if shared > 0 {
			t.Errorf("psk %v: two sessions of the same identities share %d 6-byte runs", withPSK, shared)
		}
		t.Logf("psk %v: %d bytes a handshake on the wire, no identity bytes, no run shared between sessions", withPSK, wireLen)
	}
	// Other identities, same lengths.
	a, b := stdSides("len")
	a.id, b.id = identity(0x77), identity(0x99)
	r := handshake(t, a, b)
	if len(r.hello) != HelloLen || len(r.reply) != 1337 || len(r.final) != 194 {
		t.Errorf("lengths %d, %d, %d depend on the identities", len(r.hello), len(r.reply), len(r.final))
	}
}

// TestPSK: the same key on both sides completes; any difference (other
// keys, a key on one side only) fails at the initiator, when it reads
// the reply, with ErrPSKMismatch (which is an authentication failure),
// before it reveals anything, and without revealing the responder's
// identity to it.
func TestPSK(t *testing.T) {
	k1, k2 := [PSKLen]byte{1}, [PSKLen]byte{2}
	for _, c := range []struct {
		name   string
		ia, rb *[PSKLen]byte
		ok     bool
	}{
		{"none", nil, nil, true},
		{"same", &k1, &k1, true},
		{"zero key is none", &[PSKLen]byte{}, nil, true},
		{"different", &k1, &k2, false},
		{"initiator only", &k1, nil, false},
		{"responder only", nil, &k2, false},
	} {
		a, b := stdSides("psk " + c.name)
		a.psk, b.psk = c.ia, c.rb
		r, err := tryHandshake(a, b)
		if c.ok {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrPSKMismatch) || !errors.Is(err, errs.ErrAuth) {
			t.Errorf("%s: err = %v, want ErrPSKMismatch", c.name, err)
			continue
		}
		if r.iPeer != nil || r.final != nil {
			t.Errorf("%s: the initiator learned the responder or sent its final message", c.name)
		}
		// The initiation survives: a genuine reply (with the right key)
		// still completes it after the wrong one.
		t.Logf("%s: %v", c.name, err)
	}
}

// TestPSKMismatchLeavesInitiation: a reply that fails (a wrong key)
// leaves the initiation as it was, so a forged reply cannot end it.
func TestPSKMismatchLeavesInitiation(t *testing.T) {
	k1, k2 := [PSKLen]byte{1}, [PSKLen]byte{2}
	a, b := stdSides("survive")
	a.psk = &k1
	st, _ := NewStatic(a.id, a.ent)
	init, err := NewInitiation(InitiatorConfig{Static: st, Index: a.index, PSK: a.psk, Entropy: a.ent})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := ParseHello(init.Hello())
	reply := func(psk *[PSKLen]byte) []byte {
		rs, _ := NewStatic(b.id, nil)
		_, rep, err := Respond(h, ResponderConfig{Static: rs, Index: b.index, PSK: psk})
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if _, err := init.ReadReply(reply(&k2)); !errors.Is(err, ErrPSKMismatch) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := init.ReadReply(reply(&k1)); err != nil {
		t.Fatalf("the right reply after a wrong one: %v", err)
	}
}
