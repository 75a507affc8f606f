package vaultudp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// Test vectors for sealed datagrams and cookies: fixed keys, indexes and
// counters in, exact bytes out, in testdata/vectors/sealed_v4.json (all
// byte strings hex). The session keys and indexes are those of the
// complete v4 handshakes in internal/noise/testdata/handshake_v4.json
// (PROTOCOL.md 9.14, checked there against a straight-line implementation
// of the handshake), so that the two files together take an implementation
// from identity seeds to the bytes of its first datagrams. TestVectors
// recomputes every output twice, with the package's code and with an
// independent implementation written from the wire format (PROTOCOL.md
// 2.3, 5.9, 9.3) with nothing but the primitives, and requires both to
// equal the file byte for byte.
//
// Regenerate, after a deliberate change of the wire format, with
//
//	go test -run TestVectors -update .

var updateVectors = flag.Bool("update", false, "rewrite testdata/vectors/*.json from the code")

const (
	vectorsFile      = "testdata/vectors/sealed_v4.json"
	noiseVectorsFile = "internal/noise/testdata/handshake_v4.json"
)

type vectorFile struct {
	Comment  string         `json:"comment"`
	Sessions []sessionCase  `json:"sessions"`
	Cookies  []cookieVector `json:"cookies"`
}

// hexed is a byte string written as hex in JSON.
type hexed []byte

func (h hexed) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(h)), nil }
func (h *hexed) UnmarshalText(b []byte) error {
	d, err := hex.DecodeString(string(b))
	*h = d
	return err
}

type sealedVector struct {
	Direction string `json:"direction"` // "i2r" or "r2i"
	Counter   uint64 `json:"counter,string"`
	Envelope  hexed  `json:"envelope"` // in
	Datagram  hexed  `json:"datagram"` // out
}

type sessionCase struct {
	// Handshake names the vector of internal/noise's file whose keys and
	// indexes the session has (in).
	Handshake      string         `json:"handshake"`
	InitiatorIndex uint32         `json:"initiator_index"` // out: from that vector
	ResponderIndex uint32         `json:"responder_index"`
	KeyI2R         hexed          `json:"key_i2r"`
	KeyR2I         hexed          `json:"key_r2i"`
	Sealed         []sealedVector `json:"sealed"`
}

type cookieVector struct {
	Secret        hexed  `json:"secret"`
	Source        string `json:"source"`
	ReceiverIndex uint32 `json:"receiver_index"`
	Input         hexed  `json:"mac_input"` // out
	Cookie        hexed  `json:"cookie"`    // out
	Message       hexed  `json:"message"`   // out: the cookie datagram
}

// seq returns the bytes from, from+1, ..., from+n-1.
func seq(from byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = from + byte(i)
	}
	return b
}

// vectorInputs are the inputs from which -update writes the file.
func vectorInputs() vectorFile {
	// Envelopes (section 3) keep their own version field, "v": 3.
	hi := []byte{0x82, 0xa1, 'v', 3, 0xa1, 'p', 0xc4, 2, 'h', 'i'}
	keepalive := []byte{0x81, 0xa1, 'v', 3}
	padded := append([]byte{0x83, 0xa1, 'v', 3, 0xa1, 'p', 0xc4, 2, 'h', 'i', 0xa1, 'g', 0xc4, 18}, make([]byte, 18)...)
	return vectorFile{
		Comment: "vaultudp protocol 4 sealed datagrams and cookies; see PROTOCOL.md section 8 and vectors_test.go. Session keys from internal/noise/testdata/handshake_v4.json. All byte strings are hex; 64-bit integers are decimal strings.",
		Sessions: []sessionCase{{
			Handshake: "no psk",
			Sealed: []sealedVector{
				{Direction: "i2r", Counter: 0, Envelope: hi},
				{Direction: "i2r", Counter: 1, Envelope: keepalive},
			},
		}, {
			Handshake: "psk",
			Sealed: []sealedVector{
				{Direction: "i2r", Counter: 0, Envelope: padded},
				{Direction: "r2i", Counter: 0, Envelope: hi},
				{Direction: "r2i", Counter: 1<<32 + 5, Envelope: keepalive},
			},
		}},
		Cookies: []cookieVector{
			{Secret: seq(0xa0, 32), Source: "192.0.2.1:11000", ReceiverIndex: 0x11223344},
			{Secret: seq(0x00, 32), Source: "[2001:db8::1%eth0]:443", ReceiverIndex: 0xfffffffe},
		},
	}
}

// noiseVector is what this test reads of internal/noise's vectors.
type noiseVector struct {
	Name      string `json:"name"`
	Initiator struct {
		Index uint32 `json:"index"`
	} `json:"initiator"`
	Responder struct {
		Index uint32 `json:"index"`
	} `json:"responder"`
	KeyI2R hexed `json:"k_i2r"`
	KeyR2I hexed `json:"k_r2i"`
}

func readNoiseVectors(t testing.TB) map[string]noiseVector {
	js, err := os.ReadFile(noiseVectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Vectors []noiseVector `json:"vectors"`
	}
	if err := json.Unmarshal(js, &f); err != nil {
		t.Fatal(err)
	}
	m := map[string]noiseVector{}
	for _, v := range f.Vectors {
		m[v.Name] = v
	}
	return m
}

// --- the independent implementation, from the wire format only ---

func specSeal(key []byte, receiver uint32, counter uint64, env []byte) []byte {
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		panic(err)
	}
	hdr := []byte{0x04, 0x01, 0, 0}
	hdr = binary.BigEndian.AppendUint32(hdr, receiver)
	hdr = binary.BigEndian.AppendUint64(hdr, counter)
	nonce := make([]byte, 12)
	binary.BigEndian.PutUint64(nonce[4:], counter)
	return aead.Seal(bytes.Clone(hdr), nonce, env, hdr)
}

func specCookie(secret []byte, src netip.AddrPort) (input, cookie []byte) {
	ip := src.Addr().As16()
	input = binary.BigEndian.AppendUint16(ip[:], src.Port())
	h, err := blake2b.New(16, secret)
	if err != nil {
		panic(err)
	}
	h.Write(input)
	return input, h.Sum(nil)
}

// --- both implementations over one case ---

type vecFail func(format string, args ...any)

func computeSessionCase(c sessionCase, hs map[string]noiseVector, fail vecFail) sessionCase {
	v, ok := hs[c.Handshake]
	if !ok || len(v.KeyI2R) != keyLen || len(v.KeyR2I) != keyLen {
		fail("no handshake %q with keys in %s", c.Handshake, noiseVectorsFile)
		return c
	}
	c.InitiatorIndex, c.ResponderIndex = v.Initiator.Index, v.Responder.Index
	c.KeyI2R, c.KeyR2I = bytes.Clone(v.KeyI2R), bytes.Clone(v.KeyR2I)
	ik := &sessionKeys{localIndex: c.InitiatorIndex, remoteIndex: c.ResponderIndex, initiator: true}
	copy(ik.send[:], v.KeyI2R)
	copy(ik.recv[:], v.KeyR2I)
	rk := &sessionKeys{localIndex: c.ResponderIndex, remoteIndex: c.InitiatorIndex, send: ik.recv, recv: ik.send}
	is, _ := newSession(ik, 0)
	rs, _ := newSession(rk, 0)
	c.Sealed = append([]sealedVector(nil), c.Sealed...)
	for i := range c.Sealed {
		sv := &c.Sealed[i]
		from, to, key, receiver := is, rs, c.KeyI2R, c.ResponderIndex
		if sv.Direction == "r2i" {
			from, to, key, receiver = rs, is, c.KeyR2I, c.InitiatorIndex
		} else if sv.Direction != "i2r" {
			fail("direction %q", sv.Direction)
		}
		from.sendCounter.Store(sv.Counter)
		buf := append(make([]byte, sealedHeaderLen, sealedOverhead+len(sv.Envelope)), sv.Envelope...)
		dg, err := from.seal(buf)
		if err != nil {
			fail("seal: %v", err)
			continue
		}
		sv.Datagram = bytes.Clone(dg)
		if sd := specSeal(key, receiver, sv.Counter, sv.Envelope); !bytes.Equal(sd, dg) {
			fail("sealed %d: code\n%x\nspec\n%x", i, dg, sd)
		}
		env, err := to.open(bytes.Clone(dg))
		if err != nil || !bytes.Equal(env, sv.Envelope) {
			fail("sealed %d does not open on the other side: %v", i, err)
		}
	}
	return c
}

func computeCookieVector(v cookieVector, fail vecFail) cookieVector {
	src, err := netip.ParseAddrPort(v.Source)
	if err != nil {
		fail("source: %v", err)
		return v
	}
	var secret [32]byte
	copy(secret[:], v.Secret)
	c := cookieFor(&secret, src)
	v.Cookie = bytes.Clone(c[:])
	v.Message = noise.CookieMsg(v.ReceiverIndex, c[:])
	var in, sc []byte
	in, sc = specCookie(v.Secret, src)
	v.Input = in
	if !bytes.Equal(sc, v.Cookie) {
		fail("cookie: code %x, spec %x", v.Cookie, sc)
	}
	if sm := append(binary.BigEndian.AppendUint32([]byte{0x04, 0x06, 0, 0}, v.ReceiverIndex), sc...); !bytes.Equal(sm, v.Message) {
		fail("cookie datagram: code %x, spec %x", v.Message, sm)
	}
	return v
}

func computeVectors(in vectorFile, hs map[string]noiseVector, fail vecFail) vectorFile {
	out := in
	out.Sessions = nil
	for _, c := range in.Sessions {
		name := c.Handshake
		out.Sessions = append(out.Sessions, computeSessionCase(c, hs, func(f string, a ...any) {
			fail(name+": "+f, a...)
		}))
	}
	out.Cookies = nil
	for _, v := range in.Cookies {
		out.Cookies = append(out.Cookies, computeCookieVector(v, fail))
	}
	return out
}

// TestVectors recomputes every output of testdata/vectors/sealed_v4.json
// from its inputs and compares byte for byte.
func TestVectors(t *testing.T) {
	parallel(t)
	hs := readNoiseVectors(t)
	if *updateVectors {
		out := computeVectors(vectorInputs(), hs, t.Fatalf)
		js, err := json.MarshalIndent(out, "", "\t")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(vectorsFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vectorsFile, append(js, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", vectorsFile)
	}
	js, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var file vectorFile
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		t.Fatal(err)
	}
	if len(file.Sessions) < 2 || len(file.Cookies) < 1 {
		t.Fatalf("%s holds %d sessions and %d cookies", vectorsFile, len(file.Sessions), len(file.Cookies))
	}
	got := computeVectors(file, hs, t.Errorf)
	for i, want := range file.Sessions {
		g := got.Sessions[i]
		if !bytes.Equal(g.KeyI2R, want.KeyI2R) || !bytes.Equal(g.KeyR2I, want.KeyR2I) || g.InitiatorIndex != want.InitiatorIndex || g.ResponderIndex != want.ResponderIndex {
			t.Errorf("%s: keys or indexes differ from %s's; regenerate with -update", want.Handshake, noiseVectorsFile)
		}
		for j := range want.Sealed {
			if len(want.Sealed[j].Datagram) == 0 || !bytes.Equal(g.Sealed[j].Datagram, want.Sealed[j].Datagram) {
				t.Errorf("%s: sealed %d:\n got %x\nwant %x", want.Handshake, j, g.Sealed[j].Datagram, want.Sealed[j].Datagram)
			}
		}
	}
	for i, want := range file.Cookies {
		g := got.Cookies[i]
		if len(want.Cookie) == 0 || !bytes.Equal(g.Cookie, want.Cookie) || !bytes.Equal(g.Message, want.Message) || !bytes.Equal(g.Input, want.Input) {
			t.Errorf("cookie %d (%s): got %x / %x / %x, want %x / %x / %x", i, want.Source, g.Input, g.Cookie, g.Message, want.Input, want.Cookie, want.Message)
		}
	}
	// The file's inputs are the ones this test writes: nobody edited an
	// input without regenerating the outputs.
	in := vectorInputs()
	if len(in.Sessions) != len(file.Sessions) {
		t.Errorf("the file holds %d sessions, vectorInputs() %d; regenerate with -update", len(file.Sessions), len(in.Sessions))
	}
	for i := range min(len(in.Sessions), len(file.Sessions)) {
		a, b := in.Sessions[i], file.Sessions[i]
		if a.Handshake != b.Handshake || len(a.Sealed) != len(b.Sealed) {
			t.Errorf("case %d: the file's inputs differ from vectorInputs(); regenerate with -update", i)
			continue
		}
		for j := range a.Sealed {
			if a.Sealed[j].Counter != b.Sealed[j].Counter || !bytes.Equal(a.Sealed[j].Envelope, b.Sealed[j].Envelope) {
				t.Errorf("case %d, sealed %d: the file's inputs differ from vectorInputs(); regenerate with -update", i, j)
			}
		}
	}
}
