package noise

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"
)

// Known-answer vectors: fixed identities, fixed random bytes (listed in
// the file, in the order the handshake consumes them), fixed indexes and
// parameters in; the exact hello, reply, final message, handshake hash
// and keys out, in testdata/handshake_v4.json. TestVectors runs the
// code on the inputs and requires every output byte for byte, so a
// change to anything on the wire fails it. Regenerate after a
// deliberate change with
//
//	go test -run TestVectors -update ./internal/noise

var update = flag.Bool("update", false, "rewrite testdata/handshake_v4.json from the code")

const vectorPath = "testdata/handshake_v4.json"

type hexed []byte

func (h hexed) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(h)), nil }
func (h *hexed) UnmarshalText(b []byte) error {
	d, err := hex.DecodeString(string(b))
	*h = d
	return err
}

type vectorSide struct {
	IdentitySeed hexed `json:"identity_seed"`
	// Random is the side's randomness, consumed in this order. The
	// initiator: static X25519 private key (32), ephemeral X25519
	// private key (32), ML-KEM-768 seed d || z (64). The responder:
	// static X25519 private key (32), ephemeral X25519 private key
	// (32), ML-KEM encapsulation randomness m (32).
	Random          hexed  `json:"random"`
	Index           uint32 `json:"index"`
	PSK             hexed  `json:"psk,omitempty"`
	MaxUnfragmented uint16 `json:"max_unfragmented"`
	MaxDatagram     uint16 `json:"max_datagram"`
	ResetToken      hexed  `json:"reset_token"`
}

type vector struct {
	Name          string     `json:"name"`
	Protocol      string     `json:"protocol_name"`
	Initiator     vectorSide `json:"initiator"`
	Responder     vectorSide `json:"responder"`
	Hello         hexed      `json:"hello"`
	Reply         hexed      `json:"reply"`
	Final         hexed      `json:"final"`
	HandshakeHash hexed      `json:"handshake_hash"`
	KeyI2R        hexed      `json:"k_i2r"`
	KeyR2I        hexed      `json:"k_r2i"`
}

type vectorFile struct {
	Comment string   `json:"comment"`
	Vectors []vector `json:"vectors"`
}

// stream returns n bytes named by label: SHA-256(label || counter)
// blocks. Only the generator uses it; the file holds the bytes.
func stream(label string, n int) []byte {
	b := make([]byte, n)
	(&counterReader{seed: label}).Read(b)
	return b
}

func seq(start byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func newVector(name string, psk []byte) vector {
	v := vector{Name: name, Protocol: ProtocolName}
	v.Initiator = vectorSide{IdentitySeed: seq(0x00, 32), Random: stream("v4/initiator", 128), Index: 0x11223344,
		PSK: psk, MaxUnfragmented: 1472, MaxDatagram: 65507, ResetToken: seq(0xa0, 16)}
	v.Responder = vectorSide{IdentitySeed: seq(0x20, 32), Random: stream("v4/responder", 96), Index: 0x55667788,
		PSK: psk, MaxUnfragmented: 1472, MaxDatagram: 1472, ResetToken: seq(0xb0, 16)}
	return v
}

func (s vectorSide) side() side {
	p := Params{MaxUnfragmented: s.MaxUnfragmented, MaxDatagram: s.MaxDatagram, HasToken: true}
	copy(p.ResetToken[:], s.ResetToken)
	out := side{id: ed25519.NewKeyFromSeed(s.IdentitySeed), index: s.Index,
		ent: readerEntropy{bytes.NewReader(s.Random)}, param: p}
	if len(s.PSK) == PSKLen {
		out.psk = (*[PSKLen]byte)(s.PSK)
	}
	return out
}

// compute runs the vector's handshake and fills its outputs.
func (v *vector) compute(t *testing.T) {
	a, b := v.Initiator.side(), v.Responder.side()
	r := handshake(t, a, b)
	for _, s := range []side{a, b} {
		if left := s.ent.(readerEntropy).r.(*bytes.Reader).Len(); left != 0 {
			t.Fatalf("%s: %d random bytes not consumed: the order in the file is wrong", v.Name, left)
		}
	}
	if r.iKeys.I2R != r.rKeys.I2R || r.iKeys.Hash != r.rKeys.Hash {
		t.Fatalf("%s: sides disagree", v.Name)
	}
	v.Hello, v.Reply, v.Final = r.hello, r.reply, r.final
	v.HandshakeHash, v.KeyI2R, v.KeyR2I = r.iKeys.Hash[:], r.iKeys.I2R[:], r.iKeys.R2I[:]
}

func TestVectors(t *testing.T) {
	if *update {
		f := vectorFile{
			Comment: "vaultudp protocol v4 handshake (PROTOCOL.md section 9), made by internal/noise; byte strings in hex",
			Vectors: []vector{newVector("no psk", nil), newVector("psk", stream("psk", 32))},
		}
		for i := range f.Vectors {
			f.Vectors[i].compute(t)
		}
		b, err := json.MarshalIndent(f, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorPath, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(vectorPath)
	if err != nil {
		t.Fatal(err)
	}
	var f vectorFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Vectors) < 2 {
		t.Fatalf("%d vectors", len(f.Vectors))
	}
	for _, want := range f.Vectors {
		got := want
		got.compute(t)
		for _, c := range []struct {
			what      string
			got, want []byte
		}{
			{"hello", got.Hello, want.Hello}, {"reply", got.Reply, want.Reply}, {"final", got.Final, want.Final},
			{"handshake hash", got.HandshakeHash, want.HandshakeHash},
			{"k_i2r", got.KeyI2R, want.KeyI2R}, {"k_r2i", got.KeyR2I, want.KeyR2I},
		} {
			if !bytes.Equal(c.got, c.want) {
				t.Errorf("%s: %s differs from %s\n got %x\nwant %x", want.Name, c.what, vectorPath, c.got, c.want)
			}
		}
		if want.Protocol != ProtocolName {
			t.Errorf("%s: protocol %q, the code speaks %q", want.Name, want.Protocol, ProtocolName)
		}
		sum := sha256.Sum256(append(append(append([]byte(nil), want.Hello...), want.Reply...), want.Final...))
		t.Logf("%s: hello %d, reply %d, final %d bytes; transcript SHA-256 %x", want.Name, len(want.Hello), len(want.Reply), len(want.Final), sum[:8])
	}
	// The two vectors differ only in the preshared key, which enters at
	// the psk token, after s and es: the hellos are the same bytes, and
	// so is the reply up to its payload (byte 1192), but not after.
	v0, v1 := f.Vectors[0], f.Vectors[1]
	if !bytes.Equal(v0.Hello, v1.Hello) || !bytes.Equal(v0.Reply[:1192], v1.Reply[:1192]) {
		t.Error("a preshared key changes the hello or message 2 before its payload")
	}
	if bytes.Equal(f.Vectors[0].Reply, f.Vectors[1].Reply) {
		t.Error("a preshared key does not change the reply")
	}
}
