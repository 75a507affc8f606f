package vaultudp

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Pure tests of the key exchange: handshaker.initiate / respond / complete,
// parseHello / parseReply, with fixed identities, ephemerals and times. The
// Conn-level rules (pinned keys, "newer than the last hello accepted",
// simultaneous hellos) are tested with Conns, not here.

var hsNow = time.Unix(1_700_000_000, 123_456_789)

const (
	hsWindow    = 60 * time.Second
	hsInitIndex = 0x11111111
	hsRespIndex = 0x22222222
	hsRespDelay = 25 * time.Millisecond
)

// hsIdentity is a fixed Ed25519 identity: the seed is 32 copies of seed.
func hsIdentity(seed byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
}

// hsEph is a fixed X25519 ephemeral key: 32 copies of seed.
func hsEph(t testing.TB, seed byte) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{seed}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// hsExch is one complete exchange: A (identity seed 1, ephemeral seed 0xa1)
// initiates with hsInitIndex at hsNow, B (identity seed 2, ephemeral seed
// 0xb2) responds with hsRespIndex hsRespDelay later.
type hsExch struct {
	a, b         *handshaker
	init         *initiation
	hello, reply []byte // as on the wire; fresh copies, safe to change
	aKeys, bKeys *sessionKeys
}

func hsExchange(t testing.TB) *hsExch {
	t.Helper()
	x := &hsExch{a: newHandshaker(hsIdentity(1)), b: newHandshaker(hsIdentity(2))}
	x.init = x.a.initiate(hsNow, hsInitIndex, hsEph(t, 0xa1))
	x.hello = bytes.Clone(x.init.hello)
	m, err := parseHello(bytes.Clone(x.hello))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.verify(); err != nil {
		t.Fatal(err)
	}
	reply, bKeys, err := x.b.respond(m, hsNow.Add(hsRespDelay), hsRespIndex, hsEph(t, 0xb2))
	if err != nil {
		t.Fatal(err)
	}
	x.reply, x.bKeys = bytes.Clone(reply), bKeys
	r, err := parseReply(bytes.Clone(reply))
	if err != nil {
		t.Fatal(err)
	}
	x.aKeys, err = x.a.complete(x.init, r, hsNow.Add(2*hsRespDelay), hsWindow)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// hsComplete parses reply (a copy) and completes init with it, at a time
// just after the reply was made.
func hsComplete(h *handshaker, init *initiation, reply []byte) (*sessionKeys, error) {
	r, err := parseReply(bytes.Clone(reply))
	if err != nil {
		return nil, err
	}
	return h.complete(init, r, hsNow.Add(2*hsRespDelay), hsWindow)
}

// hsVerifyHello parses and verifies hello (a copy).
func hsVerifyHello(hello []byte) error {
	m, err := parseHello(bytes.Clone(hello))
	if err != nil {
		return err
	}
	return m.verify()
}

// hsResignHello re-signs hello in place with id, as an attacker holding id
// (or a misbehaving peer) would.
func hsResignHello(id ed25519.PrivateKey, hello []byte) {
	off := helloFixedLen + int(hello[77])
	sig := ed25519.Sign(id, append(bytes.Clone(helloLabel), hello[:off]...))
	copy(hello[off:], sig)
}

// hsResignReply re-signs reply in place with id, over hello (with or
// without its cookie).
func hsResignReply(id ed25519.PrivateKey, hello, reply []byte) {
	hello = hello[:helloFixedLen+int(hello[77])+ed25519.SignatureSize]
	off := replyFixedLen + int(reply[81])
	msg := append(append(bytes.Clone(replyLabel), hello...), reply[:off]...)
	copy(reply[off:], ed25519.Sign(id, msg))
}

// hsInitSnapshot is what complete must not change.
type hsInitSnapshot struct {
	localIndex uint32
	timestamp  uint64
	eph        []byte
	hello      []byte
}

func hsSnapshot(i *initiation) hsInitSnapshot {
	return hsInitSnapshot{i.localIndex, i.timestamp, bytes.Clone(i.ephemeral.Bytes()), bytes.Clone(i.hello)}
}

func (s hsInitSnapshot) check(t testing.TB, i *initiation) {
	t.Helper()
	if i.localIndex != s.localIndex || i.timestamp != s.timestamp ||
		!bytes.Equal(i.ephemeral.Bytes(), s.eph) || !bytes.Equal(i.hello, s.hello) {
		t.Fatal("a rejected reply changed the initiation")
	}
}

// hsMustReject completes init with reply and requires failure with want,
// no keys, and the initiation unchanged.
func hsMustReject(t testing.TB, h *handshaker, init *initiation, reply []byte, want error) {
	t.Helper()
	snap := hsSnapshot(init)
	keys, err := hsComplete(h, init, reply)
	if !errors.Is(err, want) {
		t.Fatalf("complete: err = %v, want %v", err, want)
	}
	if keys != nil {
		t.Fatal("complete returned keys with an error")
	}
	snap.check(t, init)
}

// TestHandshakeRoundTrip: both sides derive matching keys, the indexes
// cross, version 3 is chosen, and sealed datagrams open on the other side
// in both directions.
func TestHandshakeRoundTrip(t *testing.T) {
	x := hsExchange(t)
	a, b := x.aKeys, x.bKeys
	if a.send != b.recv || a.recv != b.send {
		t.Fatal("initiator and responder keys do not match")
	}
	if a.send == a.recv {
		t.Fatal("both directions use the same key")
	}
	if a.send == ([keyLen]byte{}) || a.recv == ([keyLen]byte{}) {
		t.Fatal("a zero key")
	}
	if a.localIndex != hsInitIndex || b.remoteIndex != hsInitIndex || b.localIndex != hsRespIndex || a.remoteIndex != hsRespIndex {
		t.Fatalf("indexes do not cross: initiator %x/%x, responder %x/%x", a.localIndex, a.remoteIndex, b.localIndex, b.remoteIndex)
	}
	if a.version != ProtocolVersion || b.version != ProtocolVersion || ProtocolVersion != 3 {
		t.Fatalf("versions %d, %d; want 3", a.version, b.version)
	}
	if !a.initiator || b.initiator {
		t.Fatal("initiator flags wrong")
	}
	if !bytes.Equal(a.peerIdentity, x.b.public) || !bytes.Equal(b.peerIdentity, x.a.public) {
		t.Fatal("peer identities wrong")
	}

	// Sizes as the wire-format comment gives them, for one version.
	if got, want := len(x.hello), helloFixedLen+1+ed25519.SignatureSize+cookieLen; got != want || got != 159 {
		t.Fatalf("hello is %d bytes, want %d", got, want)
	}
	if got, want := len(x.reply), replyFixedLen+1+ed25519.SignatureSize; got != want || got != 147 {
		t.Fatalf("reply is %d bytes, want %d", got, want)
	}
	if !bytes.Equal(x.hello[len(x.hello)-cookieLen:], make([]byte, cookieLen)) {
		t.Fatal("a fresh hello carries a non-zero cookie")
	}

	// peerIdentity is a copy: the received bytes may be reused.
	m, _ := parseHello(bytes.Clone(x.hello))
	_, k2, err := x.b.respond(m, hsNow, 9, hsEph(t, 0xb3))
	if err != nil {
		t.Fatal(err)
	}
	clear(m.raw)
	if !bytes.Equal(k2.peerIdentity, x.a.public) {
		t.Fatal("peerIdentity aliases the received hello")
	}

	sa, err := newSession(a, 0)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := newSession(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i, dir := range []struct{ from, to *session }{{sa, sb}, {sb, sa}, {sa, sb}} {
		env := []byte("datagram number " + string(rune('0'+i)))
		dg := sessSeal(t, dir.from, env)
		if idx, ok := sealedIndex(dg); !ok || idx != dir.to.localIndex {
			t.Fatalf("sealed datagram addressed to %x (ok %v), want %x", idx, ok, dir.to.localIndex)
		}
		got, err := dir.to.open(dg)
		if err != nil {
			t.Fatalf("datagram %d does not open: %v", i, err)
		}
		if !bytes.Equal(got, env) {
			t.Fatalf("datagram %d opened to %q, want %q", i, got, env)
		}
	}
}

// TestHandshakeFreshKeysPerSession: another ephemeral or another
// transcript gives other keys (forward secrecy needs fresh keys per
// session; the keys are bound to the transcript, not only to the DH).
func TestHandshakeFreshKeysPerSession(t *testing.T) {
	x := hsExchange(t)
	m, _ := parseHello(bytes.Clone(x.hello))
	// Same hello, same responder ephemeral (so the same DH), other time:
	// the transcript differs, so must the keys.
	_, k, err := x.b.respond(m, hsNow.Add(time.Second), hsRespIndex, hsEph(t, 0xb2))
	if err != nil {
		t.Fatal(err)
	}
	if k.send == x.bKeys.send || k.recv == x.bKeys.recv {
		t.Fatal("keys do not depend on the transcript")
	}
	// Another responder ephemeral: other keys.
	_, k, err = x.b.respond(m, hsNow.Add(hsRespDelay), hsRespIndex, hsEph(t, 0xb3))
	if err != nil {
		t.Fatal(err)
	}
	if k.send == x.bKeys.send || k.recv == x.bKeys.recv {
		t.Fatal("keys do not depend on the responder's ephemeral")
	}
}

// TestHandshakeCookieNotSigned: the cookie rides outside the signature,
// so a hello retransmitted with a cookie verifies and completes, and
// setCookie does not change the hello a sender may still hold.
func TestHandshakeCookieNotSigned(t *testing.T) {
	x := hsExchange(t)
	old := x.init.hello
	oldCopy := bytes.Clone(old)
	cookie := bytes.Repeat([]byte{0xc0}, cookieLen)
	x.init.setCookie(cookie)
	if !bytes.Equal(old, oldCopy) {
		t.Fatal("setCookie changed the old hello in place")
	}
	if !bytes.Equal(x.init.hello[len(x.init.hello)-cookieLen:], cookie) || !bytes.Equal(x.init.hello[:len(old)-cookieLen], old[:len(old)-cookieLen]) {
		t.Fatal("setCookie did not set just the cookie")
	}
	m, err := parseHello(bytes.Clone(x.init.hello))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.cookie, cookie) {
		t.Fatal("parsed cookie differs")
	}
	if err := m.verify(); err != nil {
		t.Fatalf("a hello with a cookie does not verify: %v", err)
	}
	reply, bKeys, err := x.b.respond(m, hsNow.Add(hsRespDelay), hsRespIndex, hsEph(t, 0xb2))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(reply, x.reply) {
		t.Fatal("the cookie changed the reply: it must not be in the transcript")
	}
	aKeys, err := hsComplete(x.a, x.init, reply)
	if err != nil {
		t.Fatal(err)
	}
	if aKeys.send != bKeys.recv || aKeys.send != x.aKeys.send {
		t.Fatal("keys differ with a cookie")
	}
}

// TestHandshakeMalformed: the parsers refuse every wrong length, type
// and version count, without panicking.
func TestHandshakeMalformed(t *testing.T) {
	x := hsExchange(t)
	for n := 0; n < len(x.hello)+2; n++ {
		b := append(bytes.Clone(x.hello), 0, 0)[:n]
		if _, err := parseHello(b); (err == nil) != (n == len(x.hello)) {
			t.Fatalf("parseHello of %d bytes: err = %v", n, err)
		} else if err != nil && !errors.Is(err, errMalformed) {
			t.Fatalf("parseHello of %d bytes: err = %v, want errMalformed", n, err)
		}
	}
	for n := 0; n < len(x.reply)+2; n++ {
		b := append(bytes.Clone(x.reply), 0, 0)[:n]
		if _, err := parseReply(b); (err == nil) != (n == len(x.reply)) {
			t.Fatalf("parseReply of %d bytes: err = %v", n, err)
		} else if err != nil && !errors.Is(err, errMalformed) {
			t.Fatalf("parseReply of %d bytes: err = %v, want errMalformed", n, err)
		}
	}
	for _, typ := range []byte{0, ctlReply, ctlCookie, 0xff} {
		h := bytes.Clone(x.hello)
		h[0] = typ
		if _, err := parseHello(h); !errors.Is(err, errMalformed) {
			t.Fatalf("hello of type %d: err = %v", typ, err)
		}
	}
	for _, typ := range []byte{0, ctlHello, ctlCookie, 0xff} {
		r := bytes.Clone(x.reply)
		r[0] = typ
		if _, err := parseReply(r); !errors.Is(err, errMalformed) {
			t.Fatalf("reply of type %d: err = %v", typ, err)
		}
	}
	// Version counts 0 and maxVersions+1, with lengths to match.
	for _, n := range []int{0, maxVersions + 1, 255} {
		h := make([]byte, helloFixedLen+n+ed25519.SignatureSize+cookieLen)
		h[0], h[77] = ctlHello, byte(n)
		if _, err := parseHello(h); !errors.Is(err, errMalformed) {
			t.Fatalf("hello with %d versions: err = %v", n, err)
		}
		r := make([]byte, replyFixedLen+n+ed25519.SignatureSize)
		r[0], r[81] = ctlReply, byte(n)
		if _, err := parseReply(r); !errors.Is(err, errMalformed) {
			t.Fatalf("reply with %d versions: err = %v", n, err)
		}
	}
	// The cookie message.
	c := cookieMsg(0xdeadbeef, bytes.Repeat([]byte{7}, cookieLen))
	if len(c) != 21 {
		t.Fatalf("cookie message of %d bytes, want 21", len(c))
	}
	idx, cookie, err := parseCookieMsg(c)
	if err != nil || idx != 0xdeadbeef || !bytes.Equal(cookie, bytes.Repeat([]byte{7}, cookieLen)) {
		t.Fatalf("parseCookieMsg = %x, %x, %v", idx, cookie, err)
	}
	for n := 0; n < len(c)+2; n++ {
		if n == len(c) {
			continue
		}
		if _, _, err := parseCookieMsg(append(bytes.Clone(c), 0, 0)[:n]); !errors.Is(err, errMalformed) {
			t.Fatalf("cookie message of %d bytes: err = %v", n, err)
		}
	}
	c[0] = ctlHello
	if _, _, err := parseCookieMsg(c); !errors.Is(err, errMalformed) {
		t.Fatalf("cookie message of type hello: err = %v", err)
	}
}

// TestHandshakeForgedSignature: any signature byte flipped, in the hello
// or in the reply, is rejected with errAuth; so is any flipped byte of the
// signed part of either message (the cookie alone is unsigned).
func TestHandshakeForgedSignature(t *testing.T) {
	x := hsExchange(t)
	sigOff := helloFixedLen + 1
	for i := 0; i < len(x.hello); i++ {
		h := bytes.Clone(x.hello)
		h[i] ^= 0x01
		err := hsVerifyHello(h)
		switch {
		case i >= sigOff+ed25519.SignatureSize: // the cookie
			if err != nil {
				t.Fatalf("hello with cookie byte %d flipped: %v", i, err)
			}
		case i == 0 || i == 77: // type, version count: no longer a hello
			if !errors.Is(err, errMalformed) {
				t.Fatalf("hello with byte %d flipped: err = %v, want errMalformed", i, err)
			}
		default:
			if !errors.Is(err, errAuth) {
				t.Fatalf("hello with byte %d flipped: err = %v, want errAuth", i, err)
			}
		}
	}
	for i := 0; i < len(x.reply); i++ {
		r := bytes.Clone(x.reply)
		r[i] ^= 0x01
		keys, err := hsComplete(x.a, x.init, r)
		if err == nil || keys != nil {
			t.Fatalf("reply with byte %d flipped completed", i)
		}
		if i >= replyFixedLen+1 && !errors.Is(err, errAuth) { // the signature itself
			t.Fatalf("reply with signature byte %d flipped: err = %v, want errAuth", i-replyFixedLen-1, err)
		}
	}
	// A whole signature of zeros or of another message.
	h := bytes.Clone(x.hello)
	clear(h[sigOff : sigOff+ed25519.SignatureSize])
	if err := hsVerifyHello(h); !errors.Is(err, errAuth) {
		t.Fatalf("zero hello signature: err = %v", err)
	}
	r := bytes.Clone(x.reply)
	copy(r[replyFixedLen+1:], x.hello[sigOff:sigOff+ed25519.SignatureSize])
	hsMustReject(t, x.a, x.init, r, errAuth)
	hsMustReject(t, x.a, x.init, x.reply[:len(x.reply)-1], errMalformed)
	// The untouched reply still completes: nothing above changed the state.
	if _, err := hsComplete(x.a, x.init, x.reply); err != nil {
		t.Fatal(err)
	}
}

// TestHandshakeSignatureOverOtherKeys is the reference library's bug: it
// checked a signature, but not that it covered the keys it installed. Here
// the signature covers the ephemeral and is checked against the identity
// carried, so a validly signed message with another ephemeral or another
// identity fails.
func TestHandshakeSignatureOverOtherKeys(t *testing.T) {
	x := hsExchange(t)
	mallory := hsEph(t, 0x66).PublicKey().Bytes()
	c := hsIdentity(3)

	// A's validly signed hello, its ephemeral replaced by Mallory's.
	h := bytes.Clone(x.hello)
	copy(h[13:45], mallory)
	if err := hsVerifyHello(h); !errors.Is(err, errAuth) {
		t.Fatalf("hello with a swapped ephemeral: err = %v, want errAuth", err)
	}
	// A's valid signature presented with identity key B (or C).
	for _, id := range []ed25519.PublicKey{x.b.public, c.Public().(ed25519.PublicKey)} {
		h := bytes.Clone(x.hello)
		copy(h[45:77], id)
		if err := hsVerifyHello(h); !errors.Is(err, errAuth) {
			t.Fatalf("A's signature with another identity: err = %v, want errAuth", err)
		}
	}
	// A's valid signature from another hello (another ephemeral) spliced
	// onto this one.
	other := x.a.initiate(hsNow, hsInitIndex, hsEph(t, 0xa2)).hello
	h = bytes.Clone(other)
	copy(h[helloFixedLen+1:], x.hello[helloFixedLen+1:helloFixedLen+1+ed25519.SignatureSize])
	if err := hsVerifyHello(h); !errors.Is(err, errAuth) {
		t.Fatalf("A's signature of another hello: err = %v, want errAuth", err)
	}

	// The same on the reply: B's signature with Mallory's ephemeral, or
	// presented as C's.
	r := bytes.Clone(x.reply)
	copy(r[17:49], mallory)
	hsMustReject(t, x.a, x.init, r, errAuth)
	r = bytes.Clone(x.reply)
	copy(r[49:81], c.Public().(ed25519.PublicKey))
	hsMustReject(t, x.a, x.init, r, errAuth)
	// A reply that C signed over B's message fails too: the identity
	// checked is the one carried, B.
	r = bytes.Clone(x.reply)
	hsResignReply(c, x.hello, r)
	hsMustReject(t, x.a, x.init, r, errAuth)
}

// TestHandshakeReplayedHello: freshness is checked in both directions
// (clocks differ) and the edges are exact. The "newer than the last hello
// accepted from that identity" rule lives in the Conn.
func TestHandshakeReplayedHello(t *testing.T) {
	now := hsNow
	ns := uint64(now.UnixNano())
	w := hsWindow
	for _, c := range []struct {
		name string
		ts   uint64
		ok   bool
	}{
		{"now", ns, true},
		{"window ago", ns - uint64(w), true},
		{"window ahead", ns + uint64(w), true},
		{"window+1ns ago", ns - uint64(w) - 1, false},
		{"window+1ns ahead", ns + uint64(w) + 1, false},
		{"an hour ago", ns - uint64(time.Hour), false},
		{"an hour ahead", ns + uint64(time.Hour), false},
		{"zero", 0, false},
		{"max", ^uint64(0), false},
		{"1<<63", 1 << 63, false},
		{"1<<63 + now", 1<<63 + ns, false},
	} {
		err := checkFresh(c.ts, now, w)
		if (err == nil) != c.ok {
			t.Errorf("%s: checkFresh = %v, want ok %v", c.name, err, c.ok)
		}
		if err != nil && !errors.Is(err, errStale) {
			t.Errorf("%s: err = %v, want errStale", c.name, err)
		}
	}

	// A real hello replayed later than the window, or received before its
	// time (a sender whose clock runs ahead by more than the window).
	x := hsExchange(t)
	m, _ := parseHello(bytes.Clone(x.hello))
	if err := checkFresh(m.timestamp, hsNow.Add(w+time.Millisecond), w); !errors.Is(err, errStale) {
		t.Fatalf("hello replayed after the window: err = %v", err)
	}
	if err := checkFresh(m.timestamp, hsNow.Add(-w-time.Millisecond), w); !errors.Is(err, errStale) {
		t.Fatalf("hello from the future: err = %v", err)
	}
	if err := checkFresh(m.timestamp, hsNow.Add(w/2), w); err != nil {
		t.Fatalf("hello within the window: %v", err)
	}

	// The reply's freshness is checked by complete itself, both ways.
	for _, skew := range []time.Duration{w + time.Second, -w - time.Second} {
		r, _ := parseReply(bytes.Clone(x.reply))
		snap := hsSnapshot(x.init)
		keys, err := x.a.complete(x.init, r, hsNow.Add(hsRespDelay+skew), w)
		if !errors.Is(err, errStale) || keys != nil {
			t.Fatalf("reply %v off: err = %v", skew, err)
		}
		snap.check(t, x.init)
	}
}

// TestHandshakeReplyToUnsentHello: a reply is accepted only for the hello
// it answers: another receiver index is unexpected, and a reply to another
// hello carrying the right index fails the signature over the transcript.
func TestHandshakeReplyToUnsentHello(t *testing.T) {
	x := hsExchange(t)

	// No initiation has this index.
	r := bytes.Clone(x.reply)
	binary.BigEndian.PutUint32(r[5:], hsInitIndex+1)
	hsMustReject(t, x.a, x.init, r, errUnexpected)

	// A second initiation by A with the same index (say, a retry with a
	// new ephemeral): the reply to the first does not complete it.
	init2 := x.a.initiate(hsNow, hsInitIndex, hsEph(t, 0xa2))
	hsMustReject(t, x.a, init2, x.reply, errAuth)

	// B answers C's hello, which happens to carry A's index: A never sent
	// that hello.
	c := newHandshaker(hsIdentity(3))
	cInit := c.initiate(hsNow, hsInitIndex, hsEph(t, 0xc3))
	m, _ := parseHello(bytes.Clone(cInit.hello))
	reply, _, err := x.b.respond(m, hsNow.Add(hsRespDelay), hsRespIndex, hsEph(t, 0xb2))
	if err != nil {
		t.Fatal(err)
	}
	hsMustReject(t, x.a, x.init, reply, errAuth)
	// ... and it is a valid reply for C.
	if _, err := hsComplete(c, cInit, reply); err != nil {
		t.Fatalf("C's own reply: %v", err)
	}
}

// TestHandshakeReflectedHello: our own hello sent back to us, or our own
// reply sent back, is refused as reflected.
func TestHandshakeReflectedHello(t *testing.T) {
	x := hsExchange(t)
	m, _ := parseHello(bytes.Clone(x.hello))
	if err := m.verify(); err != nil {
		t.Fatal(err) // it is validly signed: only the reflection check stops it
	}
	reply, keys, err := x.a.respond(m, hsNow, 5, hsEph(t, 0xa3))
	if !errors.Is(err, errReflected) || reply != nil || keys != nil {
		t.Fatalf("own hello: respond = %v", err)
	}

	// Our own reply: A answers B's hello whose index equals A's pending
	// initiation's, and the reply is sent back to A.
	bInit := x.b.initiate(hsNow, hsInitIndex, hsEph(t, 0xb4))
	bm, _ := parseHello(bytes.Clone(bInit.hello))
	aReply, _, err := x.a.respond(bm, hsNow.Add(hsRespDelay), 6, hsEph(t, 0xa4))
	if err != nil {
		t.Fatal(err)
	}
	hsMustReject(t, x.a, x.init, aReply, errReflected)
}

// TestHandshakeEphemeralSwapped: an ephemeral key swapped in flight, in
// the reply or in the hello, breaks a signature.
func TestHandshakeEphemeralSwapped(t *testing.T) {
	x := hsExchange(t)
	mallory := hsEph(t, 0x66).PublicKey().Bytes()

	r := bytes.Clone(x.reply)
	copy(r[17:49], mallory)
	hsMustReject(t, x.a, x.init, r, errAuth)

	// Swapped in the hello: the responder's verify fails; and were a
	// responder to skip it, the reply signs the hello it saw, which is not
	// the one the initiator sent.
	h := bytes.Clone(x.hello)
	copy(h[13:45], mallory)
	if err := hsVerifyHello(h); !errors.Is(err, errAuth) {
		t.Fatalf("hello with swapped ephemeral: err = %v", err)
	}
	m, _ := parseHello(h)
	reply, _, err := x.b.respond(m, hsNow.Add(hsRespDelay), hsRespIndex, hsEph(t, 0xb2))
	if err != nil {
		t.Fatal(err)
	}
	hsMustReject(t, x.a, x.init, reply, errAuth)
}

// TestHandshakeVersionStripped: the version lists are signed, so a
// version stripped from the hello or the reply breaks a signature; with
// no version in common the exchange fails with errVersion.
func TestHandshakeVersionStripped(t *testing.T) {
	a, b := newHandshaker(hsIdentity(1)), newHandshaker(hsIdentity(2))
	a.versions, b.versions = []byte{3, 4}, []byte{3, 4}
	init := a.initiate(hsNow, hsInitIndex, hsEph(t, 0xa1))
	m, err := parseHello(bytes.Clone(init.hello))
	if err != nil {
		t.Fatal(err)
	}
	if err := m.verify(); err != nil {
		t.Fatal(err)
	}
	reply, bKeys, err := b.respond(m, hsNow, hsRespIndex, hsEph(t, 0xb2))
	if err != nil {
		t.Fatal(err)
	}
	aKeys, err := hsComplete(a, init, reply)
	if err != nil {
		t.Fatal(err)
	}
	if aKeys.version != 4 || bKeys.version != 4 {
		t.Fatalf("untouched exchange chose %d/%d, want 4", aKeys.version, bKeys.version)
	}

	// Strip 4 from the hello in flight and fix the lengths: the hello now
	// lists only 3, under the signature made over 3 and 4.
	h := stripLastVersion(init.hello, 77)
	hm, err := parseHello(h)
	if err != nil {
		t.Fatalf("the stripped hello should parse: %v", err)
	}
	if !bytes.Equal(hm.versions, []byte{3}) {
		t.Fatalf("stripped versions = %v", hm.versions)
	}
	if err := hm.verify(); !errors.Is(err, errAuth) {
		t.Fatalf("hello with a version stripped: err = %v, want errAuth", err)
	}
	// A responder that skipped verify would pick 3, but its reply signs
	// the stripped hello and the initiator checks against the one it sent.
	r2, k2, err := b.respond(hm, hsNow, hsRespIndex, hsEph(t, 0xb2))
	if err != nil {
		t.Fatal(err)
	}
	if k2.version != 3 {
		t.Fatalf("downgraded responder chose %d", k2.version)
	}
	hsMustReject(t, a, init, r2, errAuth)

	// Strip 4 from the reply.
	hsMustReject(t, a, init, stripLastVersion(reply, 81), errAuth)

	// No common version: the responder refuses ...
	c := newHandshaker(hsIdentity(3))
	c.versions = []byte{5}
	if _, _, err := c.respond(m, hsNow, 1, hsEph(t, 0xc3)); !errors.Is(err, errVersion) {
		t.Fatalf("responder with no common version: err = %v", err)
	}
	// ... and so does the initiator (its versions changed under a pending
	// initiation, the only way to get a validly signed reply it cannot
	// speak).
	x := hsExchange(t)
	x.a.versions = []byte{5}
	hsMustReject(t, x.a, x.init, x.reply, errVersion)
}

// stripLastVersion removes the last version from a hello (count at 77) or
// reply (count at 81), leaving the signature as it was.
func stripLastVersion(msg []byte, countOff int) []byte {
	n := int(msg[countOff])
	out := bytes.Clone(msg[:countOff+n]) // up to, without, the last version
	out[countOff] = byte(n - 1)
	return append(out, msg[countOff+1+n:]...)
}

// x25519LowOrder are the u-coordinates of the points of small order on
// Curve25519 and their non-canonical encodings (libsodium's blocklist),
// and the same with the ignored top bit set. Each gives a zero shared
// secret with any private key.
var x25519LowOrder = func() [][]byte {
	p := func(last byte, first ...byte) []byte {
		b := bytes.Repeat([]byte{0xff}, 32)
		copy(b, first)
		b[31] = last
		return b
	}
	list := [][]byte{
		make([]byte, 32),                       // 0
		append([]byte{1}, make([]byte, 31)...), // 1
		{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
		{0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57},
		p(0x7f, 0xec), // p-1
		p(0x7f, 0xed), // p
		p(0x7f, 0xee), // p+1
	}
	for _, b := range list[:len(list):len(list)] {
		hi := bytes.Clone(b)
		hi[31] |= 0x80
		list = append(list, hi)
	}
	return list
}()

// TestHandshakeLowOrderEphemeral: a validly signed hello or reply whose
// ephemeral is a low-order point (all zeros first) is refused, and no
// session with a zero (attacker-known) shared secret results.
func TestHandshakeLowOrderEphemeral(t *testing.T) {
	x := hsExchange(t)
	for _, pt := range x25519LowOrder {
		// Sanity: this point does give a zero secret.
		if pub, err := ecdh.X25519().NewPublicKey(pt); err == nil {
			if _, err := hsEph(t, 0x42).ECDH(pub); err == nil {
				t.Fatalf("%x is not a low-order point", pt)
			}
		}

		h := bytes.Clone(x.hello)
		copy(h[13:45], pt)
		hsResignHello(x.a.identity, h) // A itself misbehaves: the signature is good
		m, err := parseHello(h)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.verify(); err != nil {
			t.Fatal(err)
		}
		reply, keys, err := x.b.respond(m, hsNow, hsRespIndex, hsEph(t, 0xb2))
		if err == nil || reply != nil || keys != nil {
			t.Fatalf("hello with ephemeral %x: respond accepted it", pt)
		}
		if !errors.Is(err, errAuth) && !errors.Is(err, errMalformed) {
			t.Fatalf("hello with ephemeral %x: err = %v", pt, err)
		}

		r := bytes.Clone(x.reply)
		copy(r[17:49], pt)
		hsResignReply(x.b.identity, x.hello, r) // B misbehaves
		snap := hsSnapshot(x.init)
		keys, err = hsComplete(x.a, x.init, r)
		if err == nil || keys != nil {
			t.Fatalf("reply with ephemeral %x: complete accepted it", pt)
		}
		if !errors.Is(err, errAuth) && !errors.Is(err, errMalformed) {
			t.Fatalf("reply with ephemeral %x: err = %v", pt, err)
		}
		snap.check(t, x.init)
	}
}

// BenchmarkHandshakeInitiator is the initiator's CPU cost of one
// exchange: ephemeral key generation, the hello (one signature), and
// completing with the reply (parse, one verification, one X25519, the
// KDF). The responder's work in between is not timed.
func BenchmarkHandshakeInitiator(b *testing.B) {
	a, r := newHandshaker(hsIdentity(1)), newHandshaker(hsIdentity(2))
	reph := hsEph(b, 0xb2)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		eph, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		init := a.initiate(hsNow, hsInitIndex, eph)

		b.StopTimer()
		m, _ := parseHello(init.hello)
		reply, _, err := r.respond(m, hsNow, hsRespIndex, reph)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		rm, err := parseReply(reply)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := a.complete(init, rm, hsNow, hsWindow); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandshakeResponder is the responder's CPU cost of one
// exchange: parse, freshness, one verification, ephemeral key generation,
// one X25519, one signature, the KDF, and the session's AEADs.
func BenchmarkHandshakeResponder(b *testing.B) {
	a, r := newHandshaker(hsIdentity(1)), newHandshaker(hsIdentity(2))
	hello := a.initiate(hsNow, hsInitIndex, hsEph(b, 0xa1)).hello
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m, err := parseHello(hello)
		if err != nil {
			b.Fatal(err)
		}
		if err := checkFresh(m.timestamp, hsNow, hsWindow); err != nil {
			b.Fatal(err)
		}
		if err := m.verify(); err != nil {
			b.Fatal(err)
		}
		eph, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		_, keys, err := r.respond(m, hsNow, hsRespIndex, eph)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := newSession(keys, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// hsFuzz is the fixed state FuzzHandshake runs against: A's pending
// initiation and B as responder from hsExchange, every reply that validly
// completes that initiation, and a real sealed datagram from A to B.
type hsFuzz struct {
	x       *hsExch
	respEph *ecdh.PrivateKey // B's ephemeral for every respond in the fuzz
	replies [][]byte         // the valid replies to x.init
	hellos  [][]byte         // the hellos A signed (without cookies)
	sealed  []byte
	seeds   []hsSeed
}

type hsSeed struct {
	name string
	data []byte
}

func newHSFuzz(t testing.TB) *hsFuzz {
	t.Helper()
	x := hsExchange(t)
	fz := &hsFuzz{x: x, respEph: hsEph(t, 0xb9)}
	m, _ := parseHello(bytes.Clone(x.hello))
	alt, _, err := x.b.respond(m, hsNow.Add(hsRespDelay), hsRespIndex, fz.respEph)
	if err != nil {
		t.Fatal(err)
	}
	fz.replies = [][]byte{x.reply, alt}
	sa, _ := newSession(x.aKeys, 0)
	fz.sealed = sessSeal(t, sa, []byte{0x81, 0xa1, 'v', 3})

	withCookie := bytes.Clone(x.hello)
	copy(withCookie[len(withCookie)-cookieLen:], bytes.Repeat([]byte{0xc0}, cookieLen))
	badSig := bytes.Clone(x.reply)
	badSig[len(badSig)-1] ^= 0x80
	lowOrder := bytes.Clone(x.hello)
	clear(lowOrder[13:45])
	hsResignHello(x.a.identity, lowOrder)
	a2 := newHandshaker(hsIdentity(1))
	a2.versions = []byte{4, 3}
	twoVersions := a2.initiate(hsNow, hsInitIndex, hsEph(t, 0xa1)).hello
	for _, h := range [][]byte{x.hello, lowOrder, twoVersions} {
		fz.hellos = append(fz.hellos, h[:len(h)-cookieLen])
	}
	fz.seeds = []hsSeed{
		{"hello", x.hello},
		{"hello-cookie", withCookie},
		{"hello-low-order-ephemeral", lowOrder},
		{"hello-two-versions", twoVersions},
		{"hello-truncated", x.hello[:helloFixedLen+1]},
		{"reply", x.reply},
		{"reply-bad-signature", badSig},
		{"cookie", cookieMsg(hsInitIndex, bytes.Repeat([]byte{0xc0}, cookieLen))},
		{"sealed", fz.sealed},
	}
	return fz
}

// TestHandshakeFuzzSeeds checks that the seed files of FuzzHandshake in
// testdata/fuzz/FuzzHandshake are the real messages of its fixture (so
// the fuzzer starts from valid hellos and replies); -update rewrites them.
func TestHandshakeFuzzSeeds(t *testing.T) {
	fz := newHSFuzz(t)
	dir := filepath.Join("testdata", "fuzz", "FuzzHandshake")
	if *updateVectors {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range fz.seeds {
		path := filepath.Join(dir, s.name)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s.data)
		if *updateVectors {
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("%s is not the fixture's %s any more; regenerate with -update", path, s.name)
		}
	}
}

// signedByA reports whether h (a hello without its cookie) is one that A
// signed.
func (fz *hsFuzz) signedByA(h []byte) bool {
	for _, s := range fz.hellos {
		if bytes.Equal(h, s) {
			return true
		}
	}
	return false
}
