package noise

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	stdhkdf "crypto/hkdf"
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"os"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"
)

// TestVectorsIndependent recomputes every vector from its inputs with a
// second, straight-line implementation written from PROTOCOL.md section
// 9 and the Noise specification: no token engine, no SymmetricState,
// RFC 5869 HKDF from crypto/hkdf instead of the package's HMAC chain.
// The file, the package and this must agree byte for byte.
func TestVectorsIndependent(t *testing.T) {
	b, err := os.ReadFile(vectorPath)
	if err != nil {
		t.Fatal(err)
	}
	var f vectorFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	for _, v := range f.Vectors {
		hello, reply, final, h, k1, k2 := independent(t, v)
		for _, c := range []struct {
			what      string
			got, want []byte
		}{
			{"hello", hello, v.Hello}, {"reply", reply, v.Reply}, {"final", final, v.Final},
			{"handshake hash", h, v.HandshakeHash}, {"k_i2r", k1, v.KeyI2R}, {"k_r2i", k2, v.KeyR2I},
		} {
			if !bytes.Equal(c.got, c.want) {
				t.Errorf("%s: independent %s differs\n got %x\nwant %x", v.Name, c.what, c.got, c.want)
			}
		}
	}
}

func independent(t *testing.T, v vector) (hello, reply, final, hh, k1, k2 []byte) {
	// HKDF of Noise = RFC 5869 with salt ck, empty info.
	kdf := func(ck, ikm []byte, n int) [][]byte {
		prk, err := stdhkdf.Extract(sha256.New, ikm, ck)
		if err != nil {
			t.Fatal(err)
		}
		okm, err := stdhkdf.Expand(sha256.New, prk, "", 32*n)
		if err != nil {
			t.Fatal(err)
		}
		var out [][]byte
		for i := range n {
			out = append(out, okm[32*i:32*i+32])
		}
		return out
	}
	hash := func(parts ...[]byte) []byte {
		s := sha256.Sum256(bytes.Join(parts, nil))
		return s[:]
	}
	seal := func(k []byte, n uint64, ad, pt []byte) []byte {
		a, err := chacha20poly1305.New(k)
		if err != nil {
			t.Fatal(err)
		}
		nonce := make([]byte, 12)
		binary.LittleEndian.PutUint64(nonce[4:], n)
		return a.Seal(nil, nonce, pt, ad)
	}
	x := func(priv, pub []byte) []byte {
		k, err := ecdh.X25519().NewPrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		if pub == nil {
			return k.PublicKey().Bytes()
		}
		p, err := ecdh.X25519().NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		s, err := k.ECDH(p)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	params := func(s vectorSide, versions bool) []byte {
		p := []byte{1, 2, byte(s.MaxUnfragmented >> 8), byte(s.MaxUnfragmented), 2, 2, byte(s.MaxDatagram >> 8), byte(s.MaxDatagram), 3, 16}
		p = append(p, s.ResetToken...)
		if versions {
			p = append(p, 4, 1, 4)
		}
		return p
	}
	I, R := v.Initiator, v.Responder
	sI, eI, dz := I.Random[0:32], I.Random[32:64], I.Random[64:128]
	sR, eR, m := R.Random[0:32], R.Random[32:64], R.Random[64:96]
	psk := make([]byte, 32)
	copy(psk, I.PSK)
	idI, idR := ed25519.NewKeyFromSeed(I.IdentitySeed), ed25519.NewKeyFromSeed(R.IdentitySeed)
	prefix := []byte("vaultudp/4 static key\x00")

	h := hash([]byte("Noise_XXhfs+psk2_25519+MLKEM768_ChaChaPoly_SHA256"))
	ck := h
	header := []byte{4, 4, 0, 0, 0, 0, 0, 0, 1, 4}
	binary.BigEndian.PutUint32(header[4:], I.Index)
	h = hash(h, header)

	// Message 1: e, e1; the payload is zeros up to 1360 bytes.
	ePubI := x(eI, nil)
	h = hash(h, ePubI)
	o := kdf(ck, ePubI, 2)
	ck, k := o[0], o[1]
	dk, err := mlkem.NewDecapsulationKey768(dz)
	if err != nil {
		t.Fatal(err)
	}
	c1 := seal(k, 0, h, dk.EncapsulationKey().Bytes())
	h = hash(h, c1)
	c2 := seal(k, 1, h, make([]byte, 1360-len(header)-32-1184-16-16-16))
	h = hash(h, c2)
	hello = bytes.Join([][]byte{header, ePubI, c1, c2, make([]byte, 16)}, nil)

	// Message 2: e, ee, ekem1, s, es, psk.
	ePubR := x(eR, nil)
	h = hash(h, ePubR)
	o = kdf(ck, ePubR, 2)
	ck = o[0]
	o = kdf(ck, x(eR, ePubI), 2)
	ck, k = o[0], o[1]
	ss, ct, err := mlkemtest.Encapsulate768(dk.EncapsulationKey(), m)
	if err != nil {
		t.Fatal(err)
	}
	c3 := seal(k, 0, h, ct)
	h = hash(h, c3)
	o = kdf(ck, ss, 2)
	ck, k = o[0], o[1]
	sPubR := x(sR, nil)
	c4 := seal(k, 0, h, sPubR)
	h = hash(h, c4)
	o = kdf(ck, x(sR, ePubI), 2)
	ck = o[0]
	o = kdf(ck, psk, 3)
	ck, k = o[0], o[2]
	h = hash(h, o[1])
	pay2 := binary.BigEndian.AppendUint32(nil, R.Index)
	pay2 = append(pay2, idR.Public().(ed25519.PublicKey)...)
	pay2 = append(pay2, ed25519.Sign(idR, append(prefix, sPubR...))...)
	pay2 = append(pay2, params(R, true)...)
	c5 := seal(k, 0, h, pay2)
	h = hash(h, c5)
	reply = bytes.Join([][]byte{{4, 5, 0, 0}, header[4:8], ePubR, c3, c4, c5}, nil)

	// Message 3: s, se.
	sPubI := x(sI, nil)
	c6 := seal(k, 1, h, sPubI)
	h = hash(h, c6)
	o = kdf(ck, x(sI, ePubR), 2)
	ck, k = o[0], o[1]
	pay3 := append(bytes.Clone(idI.Public().(ed25519.PublicKey)), ed25519.Sign(idI, append(prefix, sPubI...))...)
	pay3 = append(pay3, params(I, false)...)
	c7 := seal(k, 0, h, pay3)
	h = hash(h, c7)
	fh := []byte{4, 7, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(fh[2:], uint16(len(c6)+len(c7)))
	binary.BigEndian.PutUint32(fh[4:], R.Index)
	final = bytes.Join([][]byte{fh, c6, c7}, nil)
	o = kdf(ck, nil, 2)
	return hello, reply, final, h, o[0], o[1]
}
