package noise

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"testing"
)

// readerEntropy derives every random value from r, in the order the
// handshake asks for them: X25519 private keys (32 bytes), ML-KEM-768
// seeds (d || z, 64 bytes) and encapsulation randomness (m, 32 bytes),
// as FIPS 203 defines them, so that another implementation given the
// same bytes reproduces the vectors.
type readerEntropy struct{ r io.Reader }

func (e readerEntropy) read(n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(e.r, b); err != nil {
		panic(err)
	}
	return b
}

func (e readerEntropy) X25519() (*ecdh.PrivateKey, error) {
	return ecdh.X25519().NewPrivateKey(e.read(32))
}

func (e readerEntropy) MLKEM768() (*mlkem.DecapsulationKey768, error) {
	return mlkem.NewDecapsulationKey768(e.read(mlkem.SeedSize))
}

func (e readerEntropy) Encapsulate768(ek *mlkem.EncapsulationKey768) ([]byte, []byte, error) {
	return mlkemtest.Encapsulate768(ek, e.read(32))
}

// counterReader is a deterministic stream: SHA-256(seed || counter)
// blocks, so that a test names its randomness by a seed string.
type counterReader struct {
	seed string
	n    uint64
	buf  []byte
}

func (c *counterReader) Read(p []byte) (int, error) {
	for len(c.buf) < len(p) {
		var ctr [8]byte
		binary.BigEndian.PutUint64(ctr[:], c.n)
		c.n++
		sum := sha256.Sum256(append([]byte(c.seed), ctr[:]...))
		c.buf = append(c.buf, sum[:]...)
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func seeded(seed string) Entropy { return readerEntropy{&counterReader{seed: seed}} }

// identity returns the Ed25519 identity whose seed is 32 bytes of b.
func identity(b byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = b + byte(i)
	}
	return ed25519.NewKeyFromSeed(seed)
}

// side is one endpoint's inputs to a handshake.
type side struct {
	id    ed25519.PrivateKey
	index uint32
	psk   *[PSKLen]byte
	ent   Entropy
	vers  []byte
	param Params
}

// run is a complete handshake's bytes and outcomes.
type run struct {
	init             *Initiation
	resp             *Response
	hello, reply     []byte
	final            []byte
	iKeys, rKeys     *Keys
	iPeer, rPeer     *Peer
	iStatic, rStatic *Static
}

// handshake runs a whole handshake between a (initiator) and b
// (responder), failing the test on any error.
func handshake(t testing.TB, a, b side) *run {
	t.Helper()
	r, err := tryHandshake(a, b)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func tryHandshake(a, b side) (*run, error) {
	var r run
	var err error
	if r.iStatic, err = NewStatic(a.id, a.ent); err != nil {
		return nil, err
	}
	if r.init, err = NewInitiation(InitiatorConfig{Static: r.iStatic, Index: a.index, PSK: a.psk, Entropy: a.ent, Versions: a.vers}); err != nil {
		return nil, err
	}
	r.hello = append([]byte(nil), r.init.Hello()...)
	h, err := ParseHello(r.hello)
	if err != nil {
		return nil, err
	}
	if r.rStatic, err = NewStatic(b.id, b.ent); err != nil {
		return nil, err
	}
	if r.resp, r.reply, err = Respond(h, ResponderConfig{Static: r.rStatic, Index: b.index, PSK: b.psk, Entropy: b.ent, Versions: b.vers, Params: b.param}); err != nil {
		return &r, err
	}
	if r.iPeer, err = r.init.ReadReply(r.reply); err != nil {
		return &r, err
	}
	if r.final, r.iKeys, err = r.init.WriteFinal(&a.param); err != nil {
		return &r, err
	}
	f, err := ParseFinal(r.final)
	if err != nil {
		return &r, err
	}
	if r.rPeer, r.rKeys, err = r.resp.ReadFinal(f); err != nil {
		return &r, err
	}
	return &r, nil
}

func stdSides(seed string) (side, side) {
	var tokA, tokB [TokenLen]byte
	for i := range tokA {
		tokA[i], tokB[i] = 0xa0+byte(i), 0xb0+byte(i)
	}
	a := side{id: identity(0x00), index: 0x11223344, ent: seeded(seed + "/initiator"),
		param: Params{MaxUnfragmented: 1472, MaxDatagram: 65507, ResetToken: tokA, HasToken: true}}
	b := side{id: identity(0x20), index: 0x55667788, ent: seeded(seed + "/responder"),
		param: Params{MaxUnfragmented: 1472, MaxDatagram: 65507, ResetToken: tokB, HasToken: true}}
	return a, b
}
