package v2

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/vaultudp/vaultudp/internal/errs"
	"golang.org/x/crypto/nacl/box"
)

// v2Vectors is testdata/v2/vectors.json: WIRE-V2.md §14, made by the
// reference's own code (../shared/pyseed/vectors.py) with pinned
// randomness and time.
type v2Vectors struct {
	Meta struct {
		Pinned struct {
			InnerNonce string  `json:"inner_nonce"`
			Timestamp  float64 `json:"timestamp"`
			BoxNonce   string  `json:"box_nonce"`
		} `json:"pinned"`
	} `json:"meta"`
	Identities map[string]struct {
		EncPrivate  string `json:"enc_private"`
		SignPrivate string `json:"sign_private"`
		EncPublic   string `json:"enc_public"`
		SignPublic  string `json:"sign_public"`
		RecvPort    int    `json:"recv_port"`
	} `json:"identities"`
	KxControlJSON      string `json:"kx_control_json"`
	KxSignedMessageHex string `json:"kx_signed_message_hex"`
	KxPlain            struct {
		Hex    string `json:"hex"`
		Len    int    `json:"len"`
		PadLen int    `json:"pad_len"`
	} `json:"kx_plain_mtu1500"`
	KxReceive struct {
		Src             string   `json:"src"`
		KeysStoredUnder []string `json:"keys_stored_under"`
		ReplyTo         []string `json:"reply_to"`
		ReplyLen        []int    `json:"reply_len"`
	} `json:"kx_receive"`
	ZstdHello          string `json:"zstd_hello_level16"`
	FrameHelloUnpadded string `json:"frame_hello_unpadded"`
	DataPlain          struct {
		Hex       string   `json:"hex"`
		Len       int      `json:"len"`
		PadLen    int      `json:"pad_len"`
		Delivered []string `json:"delivered_by_B_holding_keys_for_src"`
	} `json:"data_plain_hello_mtu200"`
	DataEnc struct {
		Hex             string   `json:"hex"`
		Len             int      `json:"len"`
		BoxNonce        string   `json:"box_nonce"`
		Mac             string   `json:"mac"`
		PlaintextHex    string   `json:"plaintext_hex"`
		InnerNonce      string   `json:"inner_nonce"`
		Timestamp       float64  `json:"timestamp"`
		TimestampHex    string   `json:"timestamp_hex"`
		InnerFrameHex   string   `json:"inner_frame_hex"`
		Delivered       []string `json:"delivered_by_B_from_src"`
		ReplayDelivered []string `json:"replay_delivered"`
	} `json:"data_enc_hello_mtu200"`
	KxEnc struct {
		Len    int    `json:"len"`
		Sha256 string `json:"sha256"`
		Hex    string `json:"hex"`
	} `json:"kx_enc_mtu1500"`
	DataEnc1500 struct {
		Len    int    `json:"len"`
		Sha256 string `json:"sha256"`
		Hex    string `json:"hex"`
	} `json:"data_enc_hello_mtu1500"`
	Sizes struct {
		Mtu1500 struct {
			Plain  int `json:"plain_any_small"`
			Sealed int `json:"sealed_any_small"`
		} `json:"mtu1500"`
		Mtu200 struct {
			Plain  int `json:"plain_hello"`
			Sealed int `json:"sealed_hello"`
		} `json:"mtu200"`
	} `json:"sizes"`
	Fallback struct {
		Hex    string `json:"hex"`
		Equals bool   `json:"equals_plain_vector"`
	} `json:"fallback_invalid_key_hello_mtu200"`
	Result string `json:"result"`
}

func loadV2Vectors(t testing.TB) *v2Vectors {
	t.Helper()
	b, err := os.ReadFile("testdata/v2/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v v2Vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if v.Result != "ok" {
		t.Fatalf("vectors.json result %q", v.Result)
	}
	return &v
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// v2Identity builds the keys of a vector identity from its private keys
// (X25519 private scalar and Ed25519 seed, b64) and checks the public ones.
func v2Identity(t testing.TB, v *v2Vectors, name string) *Keys {
	t.Helper()
	id := v.Identities[name]
	encPriv, err1 := B64.DecodeString(id.EncPrivate)
	seed, err2 := B64.DecodeString(id.SignPrivate)
	if err1 != nil || err2 != nil || len(encPriv) != 32 || len(seed) != 32 {
		t.Fatalf("identity %s: bad private keys", name)
	}
	k := NewKeys((*[32]byte)(encPriv), ed25519.NewKeyFromSeed(seed))
	if k.EncKey != id.EncPublic || k.SignKey != id.SignPublic {
		t.Fatalf("identity %s: public keys %s %s, want %s %s", name, k.EncKey, k.SignKey, id.EncPublic, id.SignPublic)
	}
	return k
}

func mustV2Zstd(t testing.TB) *zstdCodec {
	t.Helper()
	z, err := newZstdCodec()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(z.close)
	return z
}

func eqHex(t testing.TB, what string, got []byte, want string) {
	t.Helper()
	if h := hex.EncodeToString(got); h != want {
		t.Fatalf("%s:\n got %s\nwant %s", what, h, want)
	}
}

// TestV2Vectors decodes and re-encodes every vector of WIRE-V2.md §14 byte
// for byte, with the pinned box nonce, inner nonce, timestamp and the
// padding taken from the vector itself.
func TestV2Vectors(t *testing.T) {
	v := loadV2Vectors(t)
	a, b := v2Identity(t, v, "A"), v2Identity(t, v, "B")
	portA := v.Identities["A"].RecvPort
	z := mustV2Zstd(t)
	boxNonce := (*[24]byte)(unhex(t, v.Meta.Pinned.BoxNonce))
	innerNonce := (*[16]byte)(unhex(t, v.Meta.Pinned.InnerNonce))
	ts := v.Meta.Pinned.Timestamp

	// The pinned time is 2026-01-01T00:00:00.25Z; UnixSeconds gives the
	// same double the reference's time.time() did.
	if got := UnixSeconds(time.Date(2026, 1, 1, 0, 0, 0, 250e6, time.UTC)); got != ts {
		t.Fatalf("UnixSeconds = %v, want %v", got, ts)
	}

	// V1: the key-exchange JSON, deterministic (Ed25519).
	kx := a.KeyExchange(portA)
	v1 := AppendKeyExchange(nil, kx)
	if string(v1) != v.KxControlJSON || len(v1) != 355 {
		t.Fatalf("V1:\n got %s\nwant %s", v1, v.KxControlJSON)
	}
	signed, _ := B64.DecodeString(kx.Signature)
	eqHex(t, "V1 signed message", signed, v.KxSignedMessageHex)
	dkx, err := DecodeKeyExchange([]byte(v.KxControlJSON))
	if err != nil {
		t.Fatal(err)
	}
	if dkx != *kx {
		t.Fatalf("V1 decoded as %+v, want %+v", dkx, *kx)
	}
	if re := AppendKeyExchange(nil, &dkx); !bytes.Equal(re, v1) {
		t.Fatalf("V1 re-encoded:\n%s", re)
	}
	pk, err := VerifyKeyExchange(&dkx)
	if err != nil {
		t.Fatalf("V1 does not verify: %v", err)
	}
	if pk.Box != a.BoxPublic || !pk.Sign.Equal(a.Sign.Public()) {
		t.Fatal("V1 verified to other keys than A's")
	}

	// V2: plaintext key exchange, MTU 1500, padding from the vector.
	v2 := unhex(t, v.KxPlain.Hex)
	f, err := DecodeFrame(v2)
	if err != nil {
		t.Fatal(err)
	}
	if f.Payload != nil || string(f.Control) != v.KxControlJSON {
		t.Fatalf("V2 decoded to p=%x c=%q", f.Payload, f.Control)
	}
	if n, _ := padLen(EffectiveMTU(1500), 0, len(v1)); n != v.KxPlain.PadLen {
		t.Fatalf("V2 padding %d, want %d", n, v.KxPlain.PadLen)
	}
	pad := v2[len(v2)-v.KxPlain.PadLen:]
	re, err := appendPaddedFrame(nil, nil, v1, EffectiveMTU(1500), bytes.NewReader(pad))
	if err != nil {
		t.Fatal(err)
	}
	eqHex(t, "V2", re, v.KxPlain.Hex)
	if len(re) != v.KxPlain.Len || len(re) != v.Sizes.Mtu1500.Plain {
		t.Fatalf("V2 length %d", len(re))
	}

	// V2 received from 127.0.0.1:40001: the reference files the keys under
	// the port field and replies there; our rule matches it to peer A.
	src := netip.MustParseAddrPort(v.KxReceive.Src)
	if got := referenceKeyAddress(src, &dkx).String(); got != v.KxReceive.KeysStoredUnder[0] || got != v.KxReceive.ReplyTo[0] {
		t.Fatalf("key address %s, vector %v", got, v.KxReceive.KeysStoredUnder)
	}
	if !keyExchangeMatchesPeer(src, &dkx, netip.MustParseAddrPort(v.KxReceive.KeysStoredUnder[0])) {
		t.Fatal("V2 from the ephemeral port does not match peer A")
	}
	if v.KxReceive.ReplyLen[0] != v.Sizes.Mtu1500.Sealed {
		t.Fatal("reply length")
	}

	// zstd("hello") and the unpadded frame.
	zh := z.compress(nil, []byte("hello"))
	eqHex(t, "zstd(hello)", zh, v.ZstdHello)
	eqHex(t, "unpadded hello frame", AppendFrame(nil, zh, nil, nil), v.FrameHelloUnpadded)

	// V3: plaintext data, MTU 200.
	v3 := unhex(t, v.DataPlain.Hex)
	f, err = DecodeFrame(v3)
	if err != nil {
		t.Fatal(err)
	}
	if f.Control != nil {
		t.Fatal("V3 has control")
	}
	text, err := z.decompress(nil, f.Payload)
	if err != nil || string(text) != v.DataPlain.Delivered[0] {
		t.Fatalf("V3 payload %q, %v", text, err)
	}
	if n, _ := padLen(EffectiveMTU(200), len(f.Payload), 0); n != v.DataPlain.PadLen {
		t.Fatalf("V3 padding %d, want %d", n, v.DataPlain.PadLen)
	}
	re, err = appendPaddedFrame(nil, zh, nil, EffectiveMTU(200), bytes.NewReader(v3[len(v3)-v.DataPlain.PadLen:]))
	if err != nil {
		t.Fatal(err)
	}
	eqHex(t, "V3", re, v.DataPlain.Hex)
	if len(re) != v.Sizes.Mtu200.Plain {
		t.Fatal("V3 length")
	}

	// V4: sealed data A → B, MTU 200. Both sides precompute the same key.
	sAB, err := a.SharedKey(&b.BoxPublic)
	if err != nil {
		t.Fatal(err)
	}
	sBA, err := b.SharedKey(&a.BoxPublic)
	if err != nil {
		t.Fatal(err)
	}
	if *sAB != *sBA {
		t.Fatal("shared keys differ")
	}
	v4 := Seal(nil, sAB, boxNonce, innerNonce, ts, v3)
	eqHex(t, "V4", v4, v.DataEnc.Hex)
	eqHex(t, "V4 box nonce", v4[:24], v.DataEnc.BoxNonce)
	eqHex(t, "V4 tag", v4[24:40], v.DataEnc.Mac)
	if len(v4) != v.Sizes.Mtu200.Sealed {
		t.Fatal("V4 length")
	}
	in, err := Open(nil, sBA, unhex(t, v.DataEnc.Hex))
	if err != nil {
		t.Fatal(err)
	}
	eqHex(t, "V4 inner nonce", in.Nonce[:], v.DataEnc.InnerNonce)
	if in.TS != v.DataEnc.Timestamp {
		t.Fatalf("V4 timestamp %v", in.TS)
	}
	eqHex(t, "V4 timestamp bytes", appendInnerPrefix(nil, &in.Nonce, in.TS)[16:], v.DataEnc.TimestampHex)
	eqHex(t, "V4 inner frame", in.Frame, v.DataEnc.InnerFrameHex)
	eqHex(t, "V4 box plaintext", append(appendInnerPrefix(nil, &in.Nonce, in.TS), in.Frame...), v.DataEnc.PlaintextHex)
	f, err = DecodeFrame(in.Frame)
	if err != nil {
		t.Fatal(err)
	}
	if text, err := z.decompress(nil, f.Payload); err != nil || string(text) != v.DataEnc.Delivered[0] {
		t.Fatalf("V4 payload %q, %v", text, err)
	}

	// V5: sealed key exchange (the V2 frame), MTU 1500.
	v5 := Seal(nil, sAB, boxNonce, innerNonce, ts, v2)
	eqHex(t, "V5", v5, v.KxEnc.Hex)
	if sum := sha256.Sum256(v5); hex.EncodeToString(sum[:]) != v.KxEnc.Sha256 || len(v5) != v.KxEnc.Len {
		t.Fatal("V5 sha256 or length")
	}
	if in, err := Open(nil, sBA, v5); err != nil || !bytes.Equal(in.Frame, v2) {
		t.Fatalf("V5 open: %v", err)
	}

	// V6: sealed "hello", MTU 1500: padding to 1394 (bin16 g).
	in6, err := Open(nil, sBA, unhex(t, v.DataEnc1500.Hex))
	if err != nil {
		t.Fatal(err)
	}
	f6, err := DecodeFrame(in6.Frame)
	if err != nil || !bytes.Equal(f6.Payload, zh) {
		t.Fatalf("V6 frame: %v", err)
	}
	pad6, _ := padLen(EffectiveMTU(1500), len(zh), 0)
	fr6, err := appendPaddedFrame(nil, zh, nil, EffectiveMTU(1500), bytes.NewReader(in6.Frame[len(in6.Frame)-pad6:]))
	if err != nil {
		t.Fatal(err)
	}
	v6 := Seal(nil, sAB, boxNonce, innerNonce, ts, fr6)
	eqHex(t, "V6", v6, v.DataEnc1500.Hex)
	if sum := sha256.Sum256(v6); hex.EncodeToString(sum[:]) != v.DataEnc1500.Sha256 || len(v6) != v.Sizes.Mtu1500.Sealed {
		t.Fatal("V6 sha256 or length")
	}

	// V7: the reference falls back to plaintext with an unusable enc_key;
	// the vector is V3, and we refuse such a key in the first place.
	if !v.Fallback.Equals || v.Fallback.Hex != v.DataPlain.Hex {
		t.Fatal("V7 is not V3")
	}
	probe, err := DecodeKeyExchange(AppendKeyProbe(nil, a.SignKey, portA))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyKeyExchange(&probe); !errors.Is(err, errs.ErrAuth) {
		t.Fatalf("unusable enc_key accepted: %v", err)
	}

	// The replay of V4 (the reference drops it, §14): our cache too.
	rc := newReplayCache(replayCapacity)
	now := time.Unix(1767225601, 0)
	if err := rc.check(&in.Nonce, in.TS, now); err != nil {
		t.Fatalf("V4 rejected: %v", err)
	}
	in2, _ := Open(nil, sBA, v4)
	if err := rc.check(&in2.Nonce, in2.TS, now.Add(time.Second)); !errors.Is(err, errs.ErrReplay) {
		t.Fatalf("replayed V4: %v", err)
	}
}

// v2Map builds a msgpack map from alternating raw key and value encodings.
func v2Map(parts ...string) []byte {
	out := []byte{byte(0x80 | len(parts)/2)}
	for _, p := range parts {
		out = append(out, unhexS(p)...)
	}
	return out
}

func unhexS(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

// TestV2FrameReceiveRules: the receive rules of §3 and the probe table of
// §11, datagram by datagram.
func TestV2FrameReceiveRules(t *testing.T) {
	z := mustV2Zstd(t)
	const (
		kV = "a176"
		kP = "a170"
		kC = "a163"
		kG = "a167"
		v2 = "02"
	)
	hello := "c40e 28b52ffd200529000068656c6c6f"
	ok := []struct {
		name    string
		frame   []byte
		payload string // decompressed; "-" for none
		control string
	}{
		{"unpadded", v2Map(kV, v2, kP, hello, kC, "c400", kG, "c400"), "hello", ""},
		{"padded bin16", append(v2Map(kV, v2, kP, hello, kC, "c400", kG, "c50100"), make([]byte, 256)...), "hello", ""},
		{"without g", v2Map(kV, v2, kP, hello), "hello", ""},
		{"extra key", v2Map(kV, v2, kP, hello, "a178", "92c0c3"), "hello", ""},
		{"other order", v2Map(kP, hello, kV, v2), "hello", ""},
		{"g of another type", v2Map(kV, v2, kP, hello, kG, "a3616263"), "hello", ""},
		{"bin key ignored", v2Map(kV, v2, kP, hello, "c40176", "01"), "hello", ""},
		{"v 2.0 float64", v2Map(kV, "cb4000000000000000", kP, hello), "hello", ""},
		{"v 2.0 float32", v2Map(kV, "ca40000000", kP, hello), "hello", ""},
		{"v uint8", v2Map(kV, "cc02", kP, hello), "hello", ""},
		{"v int64", v2Map(kV, "d30000000000000002", kP, hello), "hello", ""},
		{"str8 key", v2Map("d90176", v2, kP, hello), "hello", ""},
		{"map16", append([]byte{0xde, 0, 2}, unhexS(kV+v2+kP+hello)...), "hello", ""},
		{"p bin16", v2Map(kV, v2, kP, "c5000e 28b52ffd200529000068656c6c6f"), "hello", ""},
		{"two zstd frames", v2Map(kV, v2, kP, "c414 28b52ffd200109000061 28b52ffd200109000062"), "ab", ""},
		{"no content size", v2Map(kV, v2, kP, "c410 28b52ffd00003900006e6f2073697a65"), "no size", ""},
		{"zstd of empty", v2Map(kV, v2, kP, "c409 28b52ffd2000010000"), "", ""},
		{"empty p", v2Map(kV, v2, kP, "c400"), "-", ""},
		{"p nil", v2Map(kV, v2, kP, "c0"), "-", ""},
		{"p empty str", v2Map(kV, v2, kP, "a0"), "-", ""},
		{"p 0", v2Map(kV, v2, kP, "00"), "-", ""},
		{"p false", v2Map(kV, v2, kP, "c2"), "-", ""},
		{"p empty array", v2Map(kV, v2, kP, "90"), "-", ""},
		{"p and c", v2Map(kV, v2, kP, hello, kC, "c4027b7d"), "hello", "{}"},
	}
	for _, c := range ok {
		f, err := DecodeFrame(c.frame)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if string(f.Control) != c.control {
			t.Errorf("%s: control %q", c.name, f.Control)
		}
		if c.payload == "-" {
			if f.Payload != nil {
				t.Errorf("%s: payload %x, want none", c.name, f.Payload)
			}
			continue
		}
		got, err := z.decompress(nil, f.Payload)
		if err != nil || string(got) != c.payload {
			t.Errorf("%s: payload %q, %v; want %q", c.name, got, err, c.payload)
		}
	}

	bad := []struct {
		name  string
		frame []byte
	}{
		{"empty", nil},
		{"trailing byte", append(v2Map(kV, v2, kP, hello), 0)},
		{"v 1", v2Map(kV, "01", kP, hello)},
		{"v \"2\"", v2Map(kV, "a132", kP, hello)},
		{"v true", v2Map(kV, "c3", kP, hello)},
		{"v 3", v2Map(kV, "03", kP, hello)},
		{"no v", v2Map(kP, hello)},
		{"bin keys", v2Map("c40176", v2, "c40170", hello)},
		{"p as str", v2Map(kV, v2, kP, "a568656c6c6f")},
		{"c as str", v2Map(kV, v2, kC, "a27b7d")},
		{"p 1", v2Map(kV, v2, kP, "01")},
		{"p ext", v2Map(kV, v2, kP, "d40100")},
		{"v1 array layout", unhexS("93 02 c400 c400")},
		{"not a map", unhexS("c40100")},
		{"int key", v2Map(kV, v2, "01", "02")},
		{"duplicate v", v2Map(kV, v2, kV, v2, kP, hello)},
		{"duplicate p", v2Map(kV, v2, kP, hello, kP, hello)},
		{"non-UTF-8 str in g", v2Map(kV, v2, kG, "a2c328")},
		{"non-UTF-8 key", v2Map(kV, v2, "a1ff", "00")},
		{"nested int key", v2Map(kV, v2, "a178", "810102")},
		{"invalid byte c1", v2Map(kV, v2, kG, "c1")},
		{"bad timestamp ext", v2Map(kV, v2, kG, "c703ff000000")},
		{"truncated bin", v2Map(kV, v2, kP, "c40e28b5")},
		{"map claims 15 entries", unhexS("8f a176 02")},
		{"map32 huge", unhexS("dfffffffff a176 02")},
		{"deep nesting", v2Map(kV, v2, kG, strings.Repeat("91", 40)+"c0")},
	}
	for _, c := range bad {
		if f, err := DecodeFrame(c.frame); err == nil {
			t.Errorf("%s: accepted: %+v", c.name, f)
		} else if !errors.Is(err, errs.ErrMalformed) {
			t.Errorf("%s: error %v does not wrap errs.ErrMalformed", c.name, err)
		}
	}
}

// TestV2FrameEncoding: AppendFrame against the lengths it promises and
// the bin header boundaries of §3.
func TestV2FrameEncoding(t *testing.T) {
	for _, n := range []int{0, 1, 255, 256, 65535, 65536} {
		p := bytes.Repeat([]byte{7}, n)
		fr := AppendFrame(nil, p, []byte("c"), nil)
		if len(fr) != FrameLen(n, 1, 0) {
			t.Fatalf("payload %d: length %d, FrameLen %d", n, len(fr), FrameLen(n, 1, 0))
		}
		f, err := DecodeFrame(fr)
		if err != nil {
			t.Fatalf("payload %d: %v", n, err)
		}
		if n > 0 && !bytes.Equal(f.Payload, p) || n == 0 && f.Payload != nil || string(f.Control) != "c" {
			t.Fatalf("payload %d: decoded to %d bytes, control %q", n, len(f.Payload), f.Control)
		}
	}
}

// TestV2Padding: the sizes of §7, for small payloads and key exchanges.
func TestV2Padding(t *testing.T) {
	v := loadV2Vectors(t)
	z := mustV2Zstd(t)
	zh := z.compress(nil, []byte("hello"))
	kx := []byte(v.KxControlJSON)
	for _, m := range []int{1500, 1400, 9000, 576} {
		eff := EffectiveMTU(m)
		for _, c := range []struct{ p, c []byte }{{zh, nil}, {nil, kx}, {z.compress(nil, nil), nil}} {
			fr, err := appendPaddedFrame(nil, c.p, c.c, eff, rand.Reader)
			if err != nil {
				t.Fatalf("MTU %d: %v", m, err)
			}
			pad, _ := padLen(eff, len(c.p), len(c.c))
			want := eff
			if pad >= 256 {
				want = eff + 1
			}
			if len(fr) != want {
				t.Fatalf("MTU %d: frame %d bytes, want %d", m, len(fr), want)
			}
			if pad >= 256 && (len(fr) != m-106 || len(fr)+SealOverhead != m-42) {
				t.Fatalf("MTU %d: plaintext %d, sealed %d", m, len(fr), len(fr)+SealOverhead)
			}
			if _, err := DecodeFrame(fr); err != nil {
				t.Fatalf("MTU %d: padded frame does not decode: %v", m, err)
			}
		}
	}
	// Exactly full, one byte over, and a pad of 0.
	eff := FrameLen(100, 0, 0)
	if n, err := padLen(eff, 100, 0); err != nil || n != 0 {
		t.Fatalf("full frame: %d, %v", n, err)
	}
	if _, err := padLen(eff, 101, 0); !errors.Is(err, errFrameTooLarge) {
		t.Fatalf("over by one: %v", err)
	}
	dst := []byte("prefix")
	if out, err := appendPaddedFrame(dst, make([]byte, 101), nil, eff, nil); !errors.Is(err, errFrameTooLarge) || string(out) != "prefix" {
		t.Fatalf("too large: %q, %v", out, err)
	}
	if out, err := appendPaddedFrame(dst, nil, nil, 100, strings.NewReader("short")); err == nil || string(out) != "prefix" {
		t.Fatalf("short padding reader: %q, %v", out, err)
	}
}

// TestV2KeyExchangeDecode: the JSON forms of §5.2 the reference reads.
func TestV2KeyExchangeDecode(t *testing.T) {
	const e, s = "j0DFrbaPJWJK5bIU6nZ6bslNgp09e14a0bpvPiE4KF8=", "Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc="
	cases := []struct {
		json    string
		ok      bool
		port    int // -1: none
		sigNull bool
	}{
		{`{"enc_key":"` + e + `","sign_key":"` + s + `","signature":"AA==","port":21001}`, true, 21001, false},
		{`{"port": 7, "sign_key": "` + s + `", "enc_key": "` + e + `"}`, true, 7, true},
		{` {"enc_key": "` + e + `", "sign_key": "` + s + `", "signature": null} `, true, -1, true},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "signature": ""}`, true, -1, true},
		{`{"enc_key": "x", "enc_key": "` + e + `", "sign_key": "` + s + `"}`, true, -1, true},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "port": "21001"}`, true, -1, true},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "port": 21001.0}`, true, -1, true},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "port": true}`, true, -1, true},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "port": 1e3}`, true, -1, true},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "extra": [1, {"a": null}]}`, true, -1, true},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "port": 0}`, false, 0, false},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "port": 65536}`, false, 0, false},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "port": -1}`, false, 0, false},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "port": 99999999999999999999}`, false, 0, false},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `", "signature": 5}`, false, 0, false},
		{`{"enc_key": "` + e + `"}`, false, 0, false},
		{`{"enc_key": "", "sign_key": "` + s + `"}`, false, 0, false},
		{`{"enc_key": 5, "sign_key": "` + s + `"}`, false, 0, false},
		{`["enc_key", "sign_key"]`, false, 0, false},
		{`"enc_key sign_key"`, false, 0, false},
		{`null`, false, 0, false},
		{`{"enc_key": "` + e + `", "sign_key": "` + s + `"`, false, 0, false},
		{"{\"enc_key\": \"\xff\", \"sign_key\": \"" + s + "\"}", false, 0, false},
		{``, false, 0, false},
	}
	for _, c := range cases {
		kx, err := DecodeKeyExchange([]byte(c.json))
		if (err == nil) != c.ok {
			t.Errorf("%s: err %v, want ok=%v", c.json, err, c.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, errs.ErrMalformed) {
				t.Errorf("%s: %v does not wrap errs.ErrMalformed", c.json, err)
			}
			continue
		}
		if kx.EncKey != e || kx.SignKey != s {
			t.Errorf("%s: keys %q %q", c.json, kx.EncKey, kx.SignKey)
		}
		if (c.port < 0) == kx.HasPort || c.port >= 0 && kx.Port != c.port {
			t.Errorf("%s: port %d %v", c.json, kx.Port, kx.HasPort)
		}
		if c.sigNull != (kx.Signature == "") {
			t.Errorf("%s: signature %q", c.json, kx.Signature)
		}
	}
}

// TestV2KeyExchangeAttacks: §13a — a key exchange is accepted only if the
// signed content is exactly the keys it carries, signed by its sign_key.
func TestV2KeyExchangeAttacks(t *testing.T) {
	v := loadV2Vectors(t)
	witness := v2Identity(t, v, "B")
	attacker := DeriveKeys(generateIdentity())
	other := DeriveKeys(generateIdentity())
	wkx := witness.KeyExchange(21002)

	signedOver := func(k *Keys, msg string) string {
		return B64.EncodeToString(append(ed25519.Sign(k.Sign, []byte(msg)), msg...))
	}
	flip := func(s string) string { // one bit of the signature itself
		b, _ := B64.DecodeString(s)
		b[5] ^= 1
		return B64.EncodeToString(b)
	}
	lowOrder := B64.EncodeToString(make([]byte, 32))
	cases := []struct {
		name string
		kx   KeyExchange
	}{
		{"attacker enc_key with the witness's sign_key and signature (§13a)",
			KeyExchange{EncKey: attacker.EncKey, SignKey: witness.SignKey, Signature: wkx.Signature}},
		{"witness signature next to the attacker's own sign_key",
			KeyExchange{EncKey: attacker.EncKey, SignKey: attacker.SignKey, Signature: wkx.Signature}},
		{"self-signed over \"hello\"",
			KeyExchange{EncKey: attacker.EncKey, SignKey: attacker.SignKey, Signature: signedOver(attacker, "hello")}},
		{"self-signed over other keys of the right length",
			KeyExchange{EncKey: attacker.EncKey, SignKey: attacker.SignKey, Signature: signedOver(attacker, other.EncKey+attacker.SignKey)}},
		{"signed by one key, carrying another sign_key",
			KeyExchange{EncKey: attacker.EncKey, SignKey: other.SignKey, Signature: signedOver(attacker, attacker.EncKey+other.SignKey)}},
		{"no signature", KeyExchange{EncKey: attacker.EncKey, SignKey: attacker.SignKey}},
		{"one bit flipped", KeyExchange{EncKey: witness.EncKey, SignKey: witness.SignKey, Signature: flip(wkx.Signature)}},
		{"signature not b64", KeyExchange{EncKey: witness.EncKey, SignKey: witness.SignKey, Signature: "!" + wkx.Signature[1:]}},
		{"signature with non-alphabet bytes inside (the reference skips them)",
			KeyExchange{EncKey: witness.EncKey, SignKey: witness.SignKey, Signature: wkx.Signature[:100] + "\n" + wkx.Signature[100:]}},
		{"enc_key AAAA (§13h)", KeyExchange{EncKey: "AAAA", SignKey: attacker.SignKey, Signature: signedOver(attacker, "AAAA"+attacker.SignKey)}},
		{"enc_key not canonical b64", KeyExchange{EncKey: witness.EncKey[:42] + "9=", SignKey: witness.SignKey, Signature: wkx.Signature}},
		{"low-order enc_key, properly signed",
			KeyExchange{EncKey: lowOrder, SignKey: attacker.SignKey, Signature: signedOver(attacker, lowOrder+attacker.SignKey)}},
	}
	for _, c := range cases {
		if _, err := VerifyKeyExchange(&c.kx); !errors.Is(err, errs.ErrAuth) {
			t.Errorf("%s: %v, want errs.ErrAuth", c.name, err)
		}
	}
	for _, k := range []*Keys{witness, attacker, other} {
		kx := k.KeyExchange(4242)
		// Through the wire form, as a receiver sees it.
		d, err := DecodeKeyExchange(AppendKeyExchange(nil, kx))
		if err != nil {
			t.Fatal(err)
		}
		pk, err := VerifyKeyExchange(&d)
		if err != nil || pk.Box != k.BoxPublic || !pk.Sign.Equal(k.Sign.Public()) {
			t.Fatalf("genuine key exchange: %v", err)
		}
	}
	// A key exchange naming another port is not matched to that peer.
	peer := netip.MustParseAddrPort("192.0.2.1:21002")
	for _, c := range []struct {
		src  string
		port int
		has  bool
		want bool
	}{
		{"192.0.2.1:40001", 21002, true, true},
		{"[::ffff:192.0.2.1]:40001", 21002, true, true},
		{"192.0.2.1:40001", 21003, true, false},
		{"192.0.2.9:40001", 21002, true, false},
		{"192.0.2.1:21002", 0, false, true},
		{"192.0.2.1:40001", 0, false, false},
	} {
		kx := &KeyExchange{Port: c.port, HasPort: c.has}
		if got := keyExchangeMatchesPeer(netip.MustParseAddrPort(c.src), kx, peer); got != c.want {
			t.Errorf("match %s port %d: %v", c.src, c.port, got)
		}
	}
	if _, err := attacker.SharedKey(new([32]byte)); !errors.Is(err, errs.ErrAuth) {
		t.Errorf("low-order shared key: %v", err)
	}
}

// TestV2SealOpen: round trips, tampering, and the freshness rules.
func TestV2SealOpen(t *testing.T) {
	a, b := DeriveKeys(generateIdentity()), DeriveKeys(generateIdentity())
	sab, _ := a.SharedKey(&b.BoxPublic)
	sba, _ := b.SharedKey(&a.BoxPublic)
	var bn [24]byte
	var in [16]byte
	rand.Read(bn[:])
	rand.Read(in[:])
	frame := AppendFrame(nil, []byte("payload"), nil, nil)
	ts := sendTimestamp(time.Now())
	d := Seal([]byte("x"), sab, &bn, &in, ts, frame)[1:]
	if len(d) != len(frame)+SealOverhead {
		t.Fatalf("sealed %d bytes", len(d))
	}
	got, err := Open(make([]byte, 0, 2048), sba, d)
	if err != nil || got.Nonce != in || got.TS != ts || !bytes.Equal(got.Frame, frame) {
		t.Fatalf("open: %+v %v", got, err)
	}
	for i := range d {
		c := bytes.Clone(d)
		c[i] ^= 0x80
		if _, err := Open(nil, sba, c); !errors.Is(err, errs.ErrAuth) {
			t.Fatalf("byte %d flipped: %v", i, err)
		}
	}
	other := DeriveKeys(generateIdentity())
	sox, _ := b.SharedKey(&other.BoxPublic)
	if _, err := Open(nil, sox, d); !errors.Is(err, errs.ErrAuth) {
		t.Fatalf("wrong key: %v", err)
	}
	// A box with fewer than 24 bytes inside.
	short := box24(sab, &bn, []byte("short"))
	if _, err := Open(nil, sba, short); !errors.Is(err, errs.ErrMalformed) {
		t.Fatalf("short content: %v", err)
	}
	for n := range BoxOverhead {
		if _, err := Open(nil, sba, d[:n]); err == nil {
			t.Fatalf("%d bytes opened", n)
		}
	}
}

// box24 is a box whose content is shorter than the 24-byte inner prefix.
func box24(shared *[32]byte, nonce *[24]byte, plain []byte) []byte {
	return box.SealAfterPrecomputation(append([]byte(nil), nonce[:]...), plain, nonce, shared)
}

// runtimeMem samples the bytes allocated so far.
type runtimeMem struct{ total uint64 }

func (m *runtimeMem) read() {
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	m.total = s.TotalAlloc
}

// TestV2Timestamps: the send rule against the reference's window (§6, §12.1).
func TestV2Timestamps(t *testing.T) {
	now := time.Unix(1767225600, 250e6)
	ts := sendTimestamp(now)
	for _, c := range []struct {
		skew time.Duration // reference clock minus ours
		want bool
	}{
		{0, true}, {-29 * time.Second, true}, {29 * time.Second, true},
		{-30 * time.Second, true}, {30 * time.Second, true},
		{-31 * time.Second, false}, {31 * time.Second, false},
	} {
		if got := referenceAcceptsTimestamp(ts, now.Add(c.skew)); got != c.want {
			t.Errorf("reference clock %v off: accepted=%v", c.skew, got)
		}
	}
	// The reference's own measured cases (§6): −59, −30, −1, 0 s accepted;
	// +0.05 s, +1 s, −61 s rejected (signs as in WIRE-V2.md: age negated).
	for _, c := range []struct {
		age  float64
		want bool
	}{{59, true}, {30, true}, {1, true}, {0, true}, {-0.05, false}, {-1, false}, {61, false}} {
		if got := referenceAcceptsTimestamp(UnixSeconds(now)-c.age, now); got != c.want {
			t.Errorf("age %v: %v", c.age, got)
		}
	}
	if ReferenceClampPort(80) != 1500 || ReferenceClampPort(65535) != 65000 || ReferenceClampPort(21001) != 21001 {
		t.Error("port clamp")
	}
	if !referenceDelivers([]byte("\x00\x01\x02\x7fé")) || referenceDelivers([]byte{0xff, 0xfe, 0, 1}) ||
		referenceDelivers([]byte{0x80}) || referenceDelivers([]byte{0xc3}) || referenceDelivers([]byte{0xed, 0xa0, 0x80}) {
		t.Error("UTF-8 rule (§13f)")
	}
}

// TestV2TimingRules: the constants the Conn integration schedules by
// (§9, §10) keep their promises.
func TestV2TimingRules(t *testing.T) {
	// Three refreshes per lifetime of the reference's stored keys: two in
	// a row may be lost before it forgets us.
	if 3*KeyRefreshInterval > referenceKeyLifetime-5*time.Second {
		t.Errorf("refresh every %v, the reference forgets after %v", KeyRefreshInterval, referenceKeyLifetime)
	}
	// The backdated stamp sits inside the reference's window with equal
	// room both ways, and our own window accepts what the reference's
	// clock, 30 s either way, stamps.
	if SendBackdate <= 0 || SendBackdate >= MaxAge || maxFuture < MaxAge-SendBackdate {
		t.Errorf("backdate %v, max age %v, max future %v", SendBackdate, MaxAge, maxFuture)
	}
	// Whatever the MTU, a padded sealed frame is one the reference reads
	// whole; below the cap the reference's own arithmetic holds.
	for _, m := range []int{576, 1500, 9000, 48042, 48043, 65535} { // the Conn's MinMTU to MaxMTU
		eff := EffectiveMTU(m)
		fr, err := appendPaddedFrame(nil, []byte("p"), nil, eff, nil)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(fr) + SealOverhead; n > MaxDatagram {
			t.Errorf("MTU %d: sealed frame of %d bytes > %d", m, n, MaxDatagram)
		}
		if m <= 48042 && eff != m-107 {
			t.Errorf("MTU %d: effective MTU %d", m, eff)
		}
	}
	if ReferenceRateLimit != 100 || refMaxPayload > MaxDatagram {
		t.Error("§9 rate limit or payload cap")
	}
}

// TestV2Replay: the window, the nonce set and the floor.
func TestV2Replay(t *testing.T) {
	now := time.Unix(1767225600, 0)
	t0 := UnixSeconds(now)
	c := newReplayCache(8)
	n := func(i int) *[16]byte { var b [16]byte; b[0], b[1] = byte(i), byte(i>>8); return &b }
	for _, bad := range []float64{t0 - 60.5, t0 + 30.5, math.NaN(), math.Inf(1), math.Inf(-1)} {
		if err := c.check(n(1), bad, now); !errors.Is(err, errs.ErrReplay) {
			t.Errorf("ts %v: %v", bad-t0, err)
		}
	}
	if c.len() != 0 {
		t.Fatal("rejected timestamps were remembered")
	}
	if err := c.check(n(1), t0-59, now); err != nil {
		t.Fatal(err)
	}
	if err := c.check(n(1), t0-59, now); !errors.Is(err, errs.ErrReplay) {
		t.Fatalf("replay: %v", err)
	}
	if err := c.check(n(1), t0, now); !errors.Is(err, errs.ErrReplay) {
		t.Fatalf("same nonce, other timestamp: %v", err)
	}
	if err := c.check(n(2), t0+0.05, now); err != nil {
		t.Fatalf("peer clock 50 ms ahead: %v", err)
	}
	// Two seconds later the first entry has aged out of the window and is
	// dropped; its datagram is then refused by the window, not the set.
	later := now.Add(2 * time.Second)
	if err := c.check(n(3), t0+1, later); err != nil {
		t.Fatal(err)
	}
	if c.len() != 2 {
		t.Fatalf("len %d after expiry, want 2", c.len())
	}
	if err := c.check(n(1), t0-59, later); !errors.Is(err, errStale) {
		t.Fatalf("aged-out replay: %v", err)
	}
}

// TestV2ReplayBounded: 1e5 distinct nonces inside one window keep the cache
// at its capacity, and no nonce ever accepted is accepted again.
func TestV2ReplayBounded(t *testing.T) {
	const total, capacity = 100000, 4096
	now := time.Unix(1767225600, 0)
	t0 := UnixSeconds(now)
	c := newReplayCache(capacity)
	rng := mrand.New(mrand.NewPCG(1, 2))
	nonces := make([][16]byte, total)
	stamps := make([]float64, total)
	for i := range total {
		for j := range nonces[i] {
			nonces[i][j] = byte(rng.Uint32())
		}
		// Mostly increasing, some reordering, all within the window.
		stamps[i] = t0 - 50 + 40*float64(i)/total - rng.Float64()*0.001
		err := c.check(&nonces[i], stamps[i], now)
		if err != nil && !errors.Is(err, errs.ErrReplay) {
			t.Fatal(err)
		}
		if c.len() > capacity || len(c.seen) > capacity || len(c.ring) > capacity {
			t.Fatalf("after %d: len %d, map %d, ring %d", i, c.len(), len(c.seen), len(c.ring))
		}
	}
	if c.len() != capacity {
		t.Fatalf("len %d, want %d", c.len(), capacity)
	}
	for i := range total {
		if err := c.check(&nonces[i], stamps[i], now); !errors.Is(err, errs.ErrReplay) {
			t.Fatalf("nonce %d accepted again: %v", i, err)
		}
	}
	var fresh [16]byte
	fresh[0] = 0xee
	if err := c.check(&fresh, t0, now); err != nil {
		t.Fatalf("fresh datagram after the flood: %v", err)
	}
	// Check is O(1): time 1e5 more checks at full capacity.
	start := time.Now()
	for i := range total {
		var nn [16]byte
		nn[0], nn[1], nn[2], nn[15] = byte(i), byte(i>>8), byte(i>>16), 0xaa
		c.check(&nn, t0+float64(i)/total, now)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("1e5 checks took %v", d)
	}
}

// TestV2ZipBomb: decompression stops at refMaxPayload bytes without
// allocating for the claimed size.
func TestV2ZipBomb(t *testing.T) {
	z := mustV2Zstd(t)
	big := make([]byte, 1<<20)
	bomb := z.compress(nil, big)
	if len(bomb) > 200 {
		t.Fatalf("bomb of %d bytes", len(bomb))
	}
	// A streaming frame without a content size, window 8 MiB.
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(8<<20), zstd.WithSingleSegment(false))
	var buf bytes.Buffer
	enc.Reset(&buf)
	enc.Write(big)
	enc.Close()
	// Many small frames adding up past the cap.
	var many []byte
	for range 3 {
		many = z.compress(many, make([]byte, 20000))
	}
	// A small window, no content size, 1 MiB of output.
	enc2, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<10), zstd.WithSingleSegment(false))
	var buf2 bytes.Buffer
	enc2.Reset(&buf2)
	enc2.Write(big)
	enc2.Close()
	for name, p := range map[string][]byte{
		"1 MiB, content size": bomb, "no content size, 8 MiB window": buf.Bytes(),
		"3 frames of 20000": many, "no content size, 1 KiB window": buf2.Bytes(),
		"48001 bytes": z.compress(nil, make([]byte, refMaxPayload+1)),
	} {
		var m0, m1 runtimeMem
		m0.read()
		out, err := z.decompress(make([]byte, 0, refMaxPayload), p)
		m1.read()
		if !errors.Is(err, errs.ErrTooLarge) || out != nil {
			t.Errorf("%s: %d bytes, %v", name, len(out), err)
		}
		if a := m1.total - m0.total; a > 4<<20 {
			t.Errorf("%s: %d bytes allocated", name, a)
		}
	}
	out, err := z.decompress(nil, z.compress(nil, bytes.Repeat([]byte("a"), refMaxPayload)))
	if err != nil || len(out) != refMaxPayload {
		t.Fatalf("payload of exactly the cap: %d, %v", len(out), err)
	}
	for _, p := range [][]byte{nil, {1, 2, 3}, unhexS("28b52ffd2005290000"), unhexS("28b52ffd200529000068656c6c")} {
		if _, err := z.decompress(nil, p); !errors.Is(err, errs.ErrMalformed) {
			t.Errorf("%x: %v", p, err)
		}
	}
}

// TestV2NoPanic: every prefix and every single-bit flip of the vectors,
// and random bytes, through every decoder.
func TestV2NoPanic(t *testing.T) {
	v := loadV2Vectors(t)
	z := mustV2Zstd(t)
	a, b := v2Identity(t, v, "A"), v2Identity(t, v, "B")
	shared, _ := b.SharedKey(&a.BoxPublic)
	inputs := [][]byte{
		unhex(t, v.KxPlain.Hex), unhex(t, v.DataPlain.Hex), unhex(t, v.DataEnc.Hex),
		unhex(t, v.DataEnc.PlaintextHex), []byte(v.KxControlJSON), unhex(t, v.ZstdHello),
	}
	buf := make([]byte, 0, refMaxPayload)
	try := func(in []byte) {
		if f, err := DecodeFrame(in); err == nil {
			if f.Payload != nil {
				z.decompress(buf, f.Payload)
			}
			if f.Control != nil {
				if kx, err := DecodeKeyExchange(f.Control); err == nil {
					VerifyKeyExchange(&kx)
				}
			}
		}
		if kx, err := DecodeKeyExchange(in); err == nil {
			VerifyKeyExchange(&kx)
		}
		if o, err := Open(nil, shared, in); err == nil {
			DecodeFrame(o.Frame)
		}
		z.decompress(buf, in)
	}
	for _, in := range inputs {
		for n := range len(in) + 1 {
			try(in[:n])
		}
		// Every bit of the short inputs, one bit per byte of the long ones.
		for i := range len(in) * 8 {
			if len(in) > 200 && i%8 != (i/8)%8 {
				continue
			}
			c := bytes.Clone(in)
			c[i/8] ^= 1 << (i % 8)
			try(c)
		}
	}
	rng := mrand.New(mrand.NewPCG(3, 4))
	for range 20000 {
		n := rng.IntN(64)
		in := make([]byte, n)
		for i := range in {
			in[i] = byte(rng.Uint32())
		}
		if n > 0 && rng.IntN(2) == 0 {
			in[0] = 0x80 | byte(rng.IntN(16)) // a map, to go deeper
		}
		try(in)
	}
}

// TestV2KeyDerivation: the box key derived from an Ed25519 identity is the
// standard conversion: clamped SHA-512(seed)[:32], whose public key is the
// Montgomery u = (1+y)/(1−y) of the Ed25519 public key.
func TestV2KeyDerivation(t *testing.T) {
	for range 20 {
		id := generateIdentity()
		k := DeriveKeys(id)
		if k.BoxPrivate[0]&7 != 0 || k.BoxPrivate[31]&0xc0 != 0x40 {
			t.Fatal("not clamped")
		}
		if want := edwardsToMontgomery(t, id.Public().(ed25519.PublicKey)); k.BoxPublic != want {
			t.Fatalf("box public %x, Montgomery form of the identity %x", k.BoxPublic, want)
		}
		if k2 := DeriveKeys(id); k2.BoxPrivate != k.BoxPrivate || k2.EncKey != k.EncKey || k2.SignKey != k.SignKey {
			t.Fatal("not deterministic")
		}
		if !bytes.Equal(k.Sign, id) {
			t.Fatal("the signing key is not the identity")
		}
	}
}

// edwardsToMontgomery maps an Ed25519 public key to its X25519 form.
func edwardsToMontgomery(t testing.TB, pub ed25519.PublicKey) [32]byte {
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
	var out [32]byte
	u.FillBytes(out[:])
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// TestV2PythonCrossCheck feeds frames, sealed datagrams and key exchanges
// made here to PyNaCl, msgpack-python and zstandard (libzstd), decoding
// them the way the reference does (msgpack.unpackb with its defaults,
// pyzstd-style decompression of concatenated frames, Box.decrypt,
// VerifyKey.verify, libsodium's Ed25519→Curve25519 conversion). It skips
// when no python3 with those modules is installed (Debian:
// python3-nacl python3-msgpack python3-zstandard).
func TestV2PythonCrossCheck(t *testing.T) {
	py := ""
	for _, c := range []string{"python3", "/usr/bin/python3"} {
		if exec.Command(c, "-c", "import nacl.public, nacl.signing, msgpack, zstandard").Run() == nil {
			py = c
			break
		}
	}
	if py == "" {
		t.Skip("skipped: no python3 with the modules nacl, msgpack and zstandard (apt-get install python3-nacl python3-msgpack python3-zstandard)")
	}
	z := mustV2Zstd(t)
	a, b := DeriveKeys(generateIdentity()), DeriveKeys(generateIdentity())
	shared, _ := a.SharedKey(&b.BoxPublic)
	rng := mrand.New(mrand.NewPCG(5, 6))
	var lines []string
	lines = append(lines, fmt.Sprintf("keys %x %x %x %x", a.Sign.Seed(), a.BoxPrivate, a.BoxPublic, b.BoxPrivate))
	lines = append(lines, "kx "+hex.EncodeToString(AppendKeyExchange(nil, a.KeyExchange(21001))))
	payloads := [][]byte{nil, []byte("hello"), []byte("é ünïcode ☃"), bytes.Repeat([]byte("abc "), 300)}
	for _, n := range []int{1, 100, 1000, 1200} {
		p := make([]byte, n)
		for i := range p {
			p[i] = 'a' + byte(rng.IntN(26))
		}
		payloads = append(payloads, p)
	}
	bin := make([]byte, 1250)
	rand.Read(bin)
	payloads = append(payloads, bin)
	for _, p := range payloads {
		fr, err := appendPaddedFrame(nil, z.compress(nil, p), nil, EffectiveMTU(1500), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var bn [24]byte
		var in [16]byte
		rand.Read(bn[:])
		rand.Read(in[:])
		sealed := Seal(nil, shared, &bn, &in, sendTimestamp(time.Now()), fr)
		lines = append(lines, fmt.Sprintf("data h%x h%x h%x", p, fr, sealed))
	}
	script := `
import sys, time, struct, msgpack, zstandard, nacl.public, nacl.signing, nacl.bindings, base64, json
def decompress(data):  # as pyzstd.decompress (shims/pyzstd.py)
    out, rest = [], data
    while rest:
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(rest))
        if not d.eof: raise ValueError("truncated")
        rest = d.unused_data
    return b"".join(out)
for line in sys.stdin:
    f = line.split()
    if f[0] == "keys":
        seed, apriv, apub, bpriv = (bytes.fromhex(x) for x in f[1:])
        sk = nacl.signing.SigningKey(seed)
        assert nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(bytes(sk) + bytes(sk.verify_key)) == apriv, "sk_to_curve25519"
        assert nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(bytes(sk.verify_key)) == apub, "pk_to_curve25519"
        assert bytes(nacl.public.PrivateKey(apriv).public_key) == apub
        box = nacl.public.Box(nacl.public.PrivateKey(bpriv), nacl.public.PublicKey(apub))
    elif f[0] == "kx":
        raw = bytes.fromhex(f[1])
        m = json.loads(raw.decode("utf-8"))
        assert json.dumps(m).encode() == raw, "not json.dumps form"
        msg = nacl.signing.VerifyKey(base64.b64decode(m["sign_key"])).verify(base64.b64decode(m["signature"]))
        assert msg == (m["enc_key"] + m["sign_key"]).encode()
        assert base64.b64decode(m["enc_key"]) == apub
    else:
        p, fr, sealed = (bytes.fromhex(x[1:]) for x in f[1:])
        for data, is_sealed in ((fr, False), (sealed, True)):
            if is_sealed:
                data = box.decrypt(data)
                age = time.time() - struct.unpack("!d", data[16:24])[0]
                assert 0 <= age <= 60, age
                data = data[24:]
            obj = msgpack.unpackb(data)
            assert isinstance(obj, dict) and obj.get("v", 0) == 2
            assert not obj.get("c", b"")
            got = decompress(obj["p"])
            assert got == p, (got[:20], p[:20])
print("ok")
`
	cmd := exec.Command(py, "-c", script)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("python: %v\n%s", err, out)
	}
}

// fuzzSetup is the setup of FuzzV2Decode (fuzz_test.go): a zstd codec,
// a shared key of a fixed identity with itself, and seed inputs.
func fuzzSetup(f *testing.F) (*zstdCodec, *[32]byte, [][]byte) {
	z := mustV2Zstd(f)
	keys := DeriveKeys(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)))
	shared, err := keys.SharedKey(&keys.BoxPublic)
	if err != nil {
		f.Fatal(err)
	}
	hello := z.compress(nil, []byte("hello"))
	kx := AppendKeyExchange(nil, keys.KeyExchange(21001))
	var bn [24]byte
	var in [16]byte
	return z, shared, [][]byte{
		AppendFrame(nil, hello, nil, nil),
		AppendFrame(nil, nil, kx, make([]byte, 300)),
		kx,
		hello,
		Seal(nil, shared, &bn, &in, 1767225600.25, AppendFrame(nil, hello, kx, nil)),
		{0x83, 0xa1, 'v', 0xcb, 0x40, 0, 0, 0, 0, 0, 0, 0, 0xa1, 'g', 0x91, 0xc0, 0xa1, 'p', 0xc4, 0},
	}
}

// fuzzCheckReplay: an opened datagram is accepted at most once.
func fuzzCheckReplay(t *testing.T, o *Inner) {
	c := newReplayCache(4)
	now := time.Unix(1767225600, 0)
	if c.check(&o.Nonce, o.TS, now) != nil {
		return
	}
	if c.check(&o.Nonce, o.TS, now) == nil {
		t.Fatal("nonce accepted twice")
	}
}

// FuzzV2Decode: the protocol v2 decoders (wire.go) never panic on any
// input; a frame they accept re-encodes (as the reference writes it) to a
// frame that decodes to the same channels; a decompressed payload never
// exceeds refMaxPayload; the replay cache never accepts a nonce twice.
// Its setup and seeds are fuzzSetup below.
func FuzzV2Decode(f *testing.F) {
	z, shared, seeds := fuzzSetup(f)
	for _, s := range seeds {
		f.Add(s)
	}
	buf := make([]byte, 0, refMaxPayload)
	f.Fuzz(func(t *testing.T, data []byte) {
		if fr, err := DecodeFrame(data); err == nil {
			re := AppendFrame(nil, fr.Payload, fr.Control, nil)
			fr2, err := DecodeFrame(re)
			if err != nil || !bytes.Equal(fr2.Payload, fr.Payload) || !bytes.Equal(fr2.Control, fr.Control) {
				t.Fatalf("re-encoded frame %x: %v", re, err)
			}
		}
		if k, err := DecodeKeyExchange(data); err == nil {
			VerifyKeyExchange(&k)
		}
		if o, err := Open(nil, shared, data); err == nil {
			fuzzCheckReplay(t, &o)
			DecodeFrame(o.Frame)
		}
		if out, err := z.decompress(buf, data); err == nil && len(out) > refMaxPayload {
			t.Fatalf("decompressed %d bytes", len(out))
		}
	})
}

// len is the number of nonces remembered.
func (c *replayCache) len() int { return c.n }
