package noise

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"
)

// completes runs the rest of a handshake from a (possibly altered) hello
// through to the responder's keys, and reports whether both sides
// ended with the same keys.
func completes(t *testing.T, init *Initiation, hello []byte, b side) bool {
	t.Helper()
	h, err := ParseHello(hello)
	if err != nil {
		return false
	}
	rs, _ := NewStatic(b.id, nil)
	resp, reply, err := Respond(h, ResponderConfig{Static: rs, Index: b.index, PSK: b.psk})
	if err != nil {
		return false
	}
	if _, err := init.ReadReply(reply); err != nil {
		return false
	}
	final, ik, err := init.WriteFinal(&Params{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ParseFinal(final)
	if err != nil {
		return false
	}
	_, rk, err := resp.ReadFinal(f)
	return err == nil && *ik == *rk
}

func newInit(t *testing.T, a side) *Initiation {
	t.Helper()
	st, _ := NewStatic(a.id, nil)
	init, err := NewInitiation(InitiatorConfig{Static: st, Index: a.index, PSK: a.psk})
	if err != nil {
		t.Fatal(err)
	}
	return init
}

// TestTamperedHello flips one byte of the hello at a time. Only the
// cookie is outside the transcript: every other change fails the
// handshake, at the responder (message 1's AEAD), or at the initiator
// when it reads the reply (the responder's transcript differs).
func TestTamperedHello(t *testing.T) {
	a, b := stdSides("tamper hello")
	init := newInit(t, a)
	hello := bytes.Clone(init.Hello())
	var positions []int
	for i := 0; i < 64; i++ {
		positions = append(positions, i)
	}
	for i := 64; i < len(hello)-CookieLen; i += 37 {
		positions = append(positions, i)
	}
	for i := len(hello) - CookieLen - 20; i < len(hello); i++ {
		positions = append(positions, i)
	}
	completed := 0
	for _, i := range positions {
		h := bytes.Clone(hello)
		h[i] ^= 0x20
		ok := completes(t, init, h, b)
		cookie := i >= len(hello)-CookieLen
		if ok != cookie {
			t.Errorf("hello byte %d changed: completed = %v", i, ok)
		}
		if ok {
			completed++
			init = newInit(t, a) // that one is finished
			hello = bytes.Clone(init.Hello())
		}
	}
	t.Logf("%d hello bytes changed one at a time: only the %d cookie bytes leave the handshake working", len(positions), completed)
}

// TestTamperedReplyAndFinal flips each byte of the reply and of the
// final message: each change fails, and leaves the waiting side able to
// complete with the genuine message.
func TestTamperedReplyAndFinal(t *testing.T) {
	a, b := stdSides("tamper reply")
	init := newInit(t, a)
	h, _ := ParseHello(init.Hello())
	rs, _ := NewStatic(b.id, nil)
	resp, reply, err := Respond(h, ResponderConfig{Static: rs, Index: b.index})
	if err != nil {
		t.Fatal(err)
	}
	for i := range reply {
		r := bytes.Clone(reply)
		r[i] ^= 0x01
		if _, err := init.ReadReply(r); err == nil {
			t.Fatalf("reply byte %d changed: accepted", i)
		}
	}
	for _, n := range []int{0, 1, 8, 40, 1100, len(reply) - 17, len(reply) - 1} {
		if _, err := init.ReadReply(reply[:n]); err == nil {
			t.Fatalf("reply cut to %d bytes: accepted", n)
		}
	}
	if _, err := init.ReadReply(append(bytes.Clone(reply), 0)); err == nil {
		t.Fatal("reply with a byte more: accepted")
	}
	if _, err := init.ReadReply(reply); err != nil {
		t.Fatalf("the genuine reply after %d altered ones: %v", len(reply), err)
	}
	final, ik, err := init.WriteFinal(&Params{MaxDatagram: 1472})
	if err != nil {
		t.Fatal(err)
	}
	for i := range final {
		fb := bytes.Clone(final)
		fb[i] ^= 0x01
		f, err := ParseFinal(fb)
		if err != nil {
			continue
		}
		if _, _, err := resp.ReadFinal(f); err == nil {
			t.Fatalf("final byte %d changed: accepted", i)
		}
	}
	for n := 0; n < len(final); n += 7 {
		if f, err := ParseFinal(final[:n]); err == nil {
			if _, _, err := resp.ReadFinal(f); err == nil {
				t.Fatalf("final cut to %d bytes: accepted", n)
			}
		}
	}
	f, err := ParseFinal(final)
	if err != nil {
		t.Fatal(err)
	}
	_, rk, err := resp.ReadFinal(f)
	if err != nil || *rk != *ik {
		t.Fatalf("the genuine final message after altered ones: %v", err)
	}
	t.Logf("%d reply bytes and %d final bytes changed one at a time: each refused", len(reply), len(final))
}

// TestReplays: a reply or final message seen twice, a replayed hello, and
// messages of one handshake offered to another all fail.
func TestReplays(t *testing.T) {
	a, b := stdSides("replay")
	r := handshake(t, a, b)
	// The same reply again: the initiation is over.
	if _, err := r.init.ReadReply(r.reply); !errors.Is(err, ErrState) {
		t.Errorf("reply twice: %v", err)
	}
	// The same final again: the response is over.
	f, _ := ParseFinal(r.final)
	if _, _, err := r.resp.ReadFinal(f); !errors.Is(err, ErrState) {
		t.Errorf("final twice: %v", err)
	}
	// The hello replayed: the responder answers (it cannot tell), but
	// the new response cannot be completed by the old final, and the
	// finished initiator refuses the new reply.
	h, _ := ParseHello(r.hello)
	rs, _ := NewStatic(b.id, nil)
	resp2, reply2, err := Respond(h, ResponderConfig{Static: rs, Index: b.index})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := resp2.ReadFinal(f); !errors.Is(err, ErrDecrypt) {
		t.Errorf("old final to a replayed hello's response: %v", err)
	}
	if _, err := r.init.ReadReply(reply2); err == nil {
		t.Error("finished initiation took a second reply")
	}
	// A reply to another hello with the same index: refused.
	other := newInit(t, a)
	if _, err := other.ReadReply(r.reply); !errors.Is(err, ErrDecrypt) {
		t.Errorf("reply to another hello: %v", err)
	}
	// A final message for another index: refused as another's.
	fb := bytes.Clone(r.final)
	fb[7] ^= 1
	f2, _ := ParseFinal(fb)
	if _, _, err := resp2.ReadFinal(f2); !errors.Is(err, ErrState) {
		t.Errorf("final for another index: %v", err)
	}
}

// TestVersions: the hello's version list is in the prologue, the
// responder's in the encrypted reply; a list without 4 is refused, and a
// change to the initiator's list on the way fails the handshake.
func TestVersions(t *testing.T) {
	a, b := stdSides("versions")
	a.vers = []byte{3}
	if _, err := tryHandshake(a, b); !errors.Is(err, ErrVersion) {
		t.Errorf("initiator without 4: %v", err)
	}
	a.vers, b.vers = nil, []byte{3}
	if _, err := tryHandshake(a, b); !errors.Is(err, ErrVersion) {
		t.Errorf("responder without 4: %v", err)
	}
	// Both speak 4 and 3: 4.
	a.vers, b.vers = []byte{3, 4}, []byte{4, 3}
	if _, err := tryHandshake(a, b); err != nil {
		t.Errorf("both speak 3 and 4: %v", err)
	}
	// An attacker rewrites the initiator's list [3, 4] as [4, 4]: the
	// list is in the prologue, hence in the associated data of message
	// 1's first AEAD (psk mode keys it from e), so the responder
	// refuses the hello; and if it did not, the initiator would refuse
	// the reply (the transcripts differ).
	a.vers, b.vers = []byte{3, 4}, nil
	init := newInitV(t, a)
	hello := bytes.Clone(init.Hello())
	hello[9] = 4
	h, err := ParseHello(hello)
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := NewStatic(b.id, nil)
	if _, _, err := Respond(h, ResponderConfig{Static: rs, Index: b.index}); !errors.Is(err, ErrDecrypt) {
		t.Errorf("altered version list: %v", err)
	}
	// A responder that claims to speak 5 but answered in 4's format
	// is downgrading: refused by an initiator that speaks 5 too.
	a.vers, b.vers = []byte{4, 5}, []byte{4, 5}
	init = newInitV(t, a)
	h, _ = ParseHello(init.Hello())
	h.Versions = []byte{4} // what a responder that downgrades would see fit to answer
	_, reply, err := Respond(h, ResponderConfig{Static: rs, Index: b.index, Versions: []byte{4, 5}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := init.ReadReply(reply); !errors.Is(err, ErrVersion) {
		t.Errorf("downgraded reply: %v", err)
	}
}

func newInitV(t *testing.T, a side) *Initiation {
	t.Helper()
	st, _ := NewStatic(a.id, nil)
	init, err := NewInitiation(InitiatorConfig{Static: st, Index: a.index, Versions: a.vers})
	if err != nil {
		t.Fatal(err)
	}
	return init
}

// TestReflection: a hello answered by the same identity (a reflected
// hello, or two Conns sharing a key) is refused by the initiator.
func TestReflection(t *testing.T) {
	a, b := stdSides("reflect")
	b.id = a.id
	if _, err := tryHandshake(a, b); !errors.Is(err, ErrReflected) {
		t.Errorf("same identity: %v", err)
	}
}

// TestStaticBinding: the identity signature binds one static key. An
// attacker who signs another's static key with its own identity, or who
// presents another's signature beside its own static key, is refused
// (unknown key-share): it would have to hold the static private key to
// complete es or se.
func TestStaticBinding(t *testing.T) {
	a, b := stdSides("uks")
	mallory := identity(0x66)
	init := newInit(t, a)
	h, _ := ParseHello(init.Hello())
	victim, _ := NewStatic(b.id, nil)
	// Mallory's own static key, but the victim's signature block.
	own, _ := NewStatic(mallory, nil)
	forged := &Static{key: own.key, identity: victim.identity, sig: victim.sig}
	_, reply, err := Respond(h, ResponderConfig{Static: forged, Index: b.index})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := init.ReadReply(reply); !errors.Is(err, ErrSignature) {
		t.Errorf("another's signature on Mallory's static key: %v", err)
	}
	// Mallory's identity signing the victim's static public key, with
	// Mallory's own static key in the handshake.
	msg := append([]byte(StaticSignaturePrefix), victim.key.PublicKey().Bytes()...)
	resigned := &Static{key: own.key, identity: mallory.Public().(ed25519.PublicKey)}
	copy(resigned.sig[:], ed25519.Sign(mallory, msg))
	_, reply, err = Respond(h, ResponderConfig{Static: resigned, Index: b.index})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := init.ReadReply(reply); !errors.Is(err, ErrSignature) {
		t.Errorf("Mallory's signature on the victim's static key: %v", err)
	}
}

// TestSizes: the hello is HelloLen; a reply never exceeds the hello it
// answers (a responder refuses to send one that would, and refuses
// hellos shorter than HelloLen); every message fits 1472 bytes.
func TestSizes(t *testing.T) {
	a, b := stdSides("sizes")
	r := handshake(t, a, b)
	t.Logf("hello %d, reply %d, final %d (+ a coalesced sealed datagram), cookie %d; amplification reply/hello %.3f",
		len(r.hello), len(r.reply), len(r.final), CookieMsgLen, float64(len(r.reply))/float64(len(r.hello)))
	if len(r.hello) > 1472 || len(r.reply) > len(r.hello) || len(r.final) > 1472 {
		t.Fatal("sizes out of bounds")
	}
	if _, err := ParseHello(r.hello[:HelloLen-1]); !errors.Is(err, ErrMalformed) {
		t.Errorf("short hello: %v", err)
	}
	// An initiator may pad more; the responder still answers.
	st, _ := NewStatic(a.id, nil)
	long, err := NewInitiation(InitiatorConfig{Static: st, Index: 9, HelloLen: 1472})
	if err != nil {
		t.Fatal(err)
	}
	if !completes(t, long, long.Hello(), b) {
		t.Error("a 1472-byte hello does not complete")
	}
	// The largest reply this package makes (8 versions, every
	// parameter) still fits the smallest hello a responder accepts.
	h, _ := ParseHello(r.hello)
	rs, _ := NewStatic(b.id, nil)
	most := Params{MaxDatagram: 1, MaxUnfragmented: 1, HasToken: true}
	_, reply, err := Respond(h, ResponderConfig{Static: rs, Index: 1, Versions: []byte{4, 1, 2, 3, 5, 6, 7, 8}, Params: most})
	if err != nil || len(reply) > HelloLen {
		t.Errorf("largest reply: %d bytes, %v", len(reply), err)
	}
	t.Logf("largest reply %d bytes, %d under the hello", len(reply), HelloLen-len(reply))
	// Too short a hello to hold its fields cannot be made.
	if _, err := NewInitiation(InitiatorConfig{Static: st, Index: 9, HelloLen: 1000}); err == nil {
		t.Error("a 1000-byte hello was made")
	}
}

// TestCookie: the cookie travels outside the transcript, so a hello
// resent with a cookie completes; a cookie message parses exactly.
func TestCookie(t *testing.T) {
	a, b := stdSides("cookie")
	init := newInit(t, a)
	c := bytes.Repeat([]byte{0xcc}, CookieLen)
	msg := CookieMsg(init.Index(), c)
	idx, got, err := ParseCookie(msg)
	if err != nil || idx != init.Index() || !bytes.Equal(got, c) {
		t.Fatalf("cookie message: %v", err)
	}
	for _, bad := range [][]byte{msg[:CookieMsgLen-1], append(bytes.Clone(msg), 0), func() []byte { m := bytes.Clone(msg); m[2] = 1; return m }()} {
		if _, _, err := ParseCookie(bad); err == nil {
			t.Errorf("malformed cookie message %x accepted", bad)
		}
	}
	init.SetCookie(got)
	h, _ := ParseHello(init.Hello())
	if !bytes.Equal(h.Cookie, c) {
		t.Fatal("cookie not in the hello")
	}
	if !completes(t, init, init.Hello(), b) {
		t.Fatal("a hello with its cookie does not complete")
	}
}

// TestSmallOrderEphemeral: a hello whose ephemeral key is a point of
// small order (here 0, whose X25519 output is all zero), correctly
// encrypted around it, is refused by the responder at ee with ErrKey.
func TestSmallOrderEphemeral(t *testing.T) {
	_, b := stdSides("small order")
	dk, _ := seeded("small order").MLKEM768()
	header := []byte{Version, TypeHello, 0, 0, 0, 0, 0, 9, 1, Version}
	var ss SymmetricState
	ss.InitializeSymmetric(ProtocolName)
	ss.MixHash(header)
	zero := make([]byte, DHLen)
	ss.MixHash(zero)
	ss.MixKey(zero)
	hello := append(bytes.Clone(header), zero...)
	hello, _ = ss.EncryptAndHash(hello, dk.EncapsulationKey().Bytes())
	hello, _ = ss.EncryptAndHash(hello, make([]byte, HelloLen-len(hello)-tagLen-CookieLen))
	hello = append(hello, make([]byte, CookieLen)...)
	h, err := ParseHello(hello)
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := NewStatic(b.id, nil)
	if _, _, err := Respond(h, ResponderConfig{Static: rs, Index: b.index}); !errors.Is(err, ErrKey) {
		t.Fatalf("small-order ephemeral: %v", err)
	}
}

// TestProtocolNameBinds: an initiator running another protocol name (a
// classical-only XX with psk, say) fails at the responder's first AEAD,
// before any costly work: the name is the first input of h.
func TestProtocolNameBinds(t *testing.T) {
	for _, name := range []string{"Noise_XXpsk2_25519_ChaChaPoly_SHA256", "Noise_XXhfs+psk2_25519+MLKEM512_ChaChaPoly_SHA256"} {
		ent := seeded(name)
		s, _ := ent.X25519()
		i := newHandshakeState(name, xxhfsPSK2, true, true, []byte("p"), s, nil, ent)
		m, err := i.WriteMessage(nil, make([]byte, 8))
		if err != nil {
			t.Fatal(err)
		}
		r := NewHandshakeState(false, []byte("p"), s, nil, nil)
		if _, err := r.ReadMessage(nil, m); !errors.Is(err, ErrDecrypt) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
