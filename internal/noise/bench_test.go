package noise

import (
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/rand"
	"testing"
)

// The handshake's CPU per side, everything each side computes (keys,
// encapsulation, DH, signatures, the symmetric state), with the other
// side's work untimed. Compare with the root package's
// BenchmarkHandshakeInitiator and BenchmarkHandshakeResponder (v3),
// run in the same invocation:
//
//	go test -run X -bench 'Handshake' -cpu 1 . ./internal/noise

// cpuMeter sums the benchmark thread's CPU over the timed sections.
type cpuMeter struct {
	ns int64
	ok bool
}

func newCPUMeter() *cpuMeter {
	lockThread()
	return &cpuMeter{ok: true}
}

func (m *cpuMeter) start() { t, ok := threadCPU(); m.ns -= t; m.ok = m.ok && ok }
func (m *cpuMeter) stop()  { t, ok := threadCPU(); m.ns += t; m.ok = m.ok && ok }

// report adds the thread's CPU per operation, and the rate one core
// sustains at that cost: unlike the wall-clock ns/op, other load on the
// machine affects it little.
func (m *cpuMeter) report(b *testing.B) {
	unlockThread()
	if m.ok && m.ns > 0 {
		b.ReportMetric(float64(m.ns)/float64(b.N)/1e3, "cpu-µs/op")
		b.ReportMetric(float64(b.N)/(float64(m.ns)/1e9), "handshakes/cpu-s")
	}
}

func benchInitiator(b *testing.B, a, r side) {
	b.ReportAllocs()
	rs, _ := NewStatic(r.id, nil)
	m := newCPUMeter()
	defer m.report(b)
	for b.Loop() {
		m.start()
		st, err := NewStatic(a.id, nil)
		if err != nil {
			b.Fatal(err)
		}
		init, err := NewInitiation(InitiatorConfig{Static: st, Index: a.index, PSK: a.psk})
		if err != nil {
			b.Fatal(err)
		}
		m.stop()
		b.StopTimer()
		h, _ := ParseHello(init.Hello())
		_, reply, err := Respond(h, ResponderConfig{Static: rs, Index: r.index, PSK: r.psk, Params: r.param})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		m.start()
		if _, err := init.ReadReply(reply); err != nil {
			b.Fatal(err)
		}
		if _, _, err := init.WriteFinal(&a.param); err != nil {
			b.Fatal(err)
		}
		m.stop()
	}
}

// BenchmarkHandshakeInitiator: static key and its signature, ephemeral
// X25519 and ML-KEM-768 keys, message 1; reading the reply (ee, es, two
// AEADs, decapsulation, a signature verification); message 3 (se).
func BenchmarkHandshakeInitiator(b *testing.B) {
	a, r := stdSides("bench")
	benchInitiator(b, a, r)
}

func benchResponder(b *testing.B, cached bool) {
	a, r := stdSides("bench")
	b.ReportAllocs()
	ist, _ := NewStatic(a.id, nil)
	rst, _ := NewStatic(r.id, nil)
	m := newCPUMeter()
	defer m.report(b)
	for b.Loop() {
		b.StopTimer()
		init, err := NewInitiation(InitiatorConfig{Static: ist, Index: a.index})
		if err != nil {
			b.Fatal(err)
		}
		hello := init.Hello()
		b.StartTimer()
		m.start()
		h, err := ParseHello(hello)
		if err != nil {
			b.Fatal(err)
		}
		st := rst
		if !cached {
			if st, err = NewStatic(r.id, nil); err != nil {
				b.Fatal(err)
			}
		}
		resp, reply, err := Respond(h, ResponderConfig{Static: st, Index: r.index, Params: r.param})
		if err != nil {
			b.Fatal(err)
		}
		m.stop()
		b.StopTimer()
		if _, err := init.ReadReply(reply); err != nil {
			b.Fatal(err)
		}
		final, _, err := init.WriteFinal(&a.param)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		m.start()
		f, err := ParseFinal(final)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := resp.ReadFinal(f); err != nil {
			b.Fatal(err)
		}
		m.stop()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

// BenchmarkHandshakeBothSides is a whole handshake, both sides' work in
// sequence (static keys and signatures included): the CPU on the way
// from nothing to the first datagram delivered, the network aside.
func BenchmarkHandshakeBothSides(b *testing.B) {
	a, r := stdSides("bench")
	b.ReportAllocs()
	m := newCPUMeter()
	defer m.report(b)
	for b.Loop() {
		m.start()
		if _, err := tryHandshake(side{id: a.id, index: a.index, param: a.param}, side{id: r.id, index: r.index, param: r.param}); err != nil {
			b.Fatal(err)
		}
		m.stop()
	}
}

// BenchmarkHandshakeResponder: parse the hello, a fresh static key and
// its signature, message 1 (two AEADs), an ephemeral X25519 key, ee, an
// ML-KEM-768 encapsulation, es, the reply; then the final message (se,
// two AEADs, a signature verification) and Split. handshakes/s is one
// core's rate, b.N over the timed CPU.
func BenchmarkHandshakeResponder(b *testing.B) { benchResponder(b, false) }

// BenchmarkHandshakeResponderCachedStatic is the same with one static
// key (and signature) reused across handshakes: what a per-Conn static
// rotated every few minutes would save (PROTOCOL.md 9.5 says why it is
// not the choice).
func BenchmarkHandshakeResponderCachedStatic(b *testing.B) { benchResponder(b, true) }

// BenchmarkPrimitives is each primitive alone, for the sums in
// PROTOCOL.md.
func BenchmarkPrimitives(b *testing.B) {
	x1, _ := ecdh.X25519().GenerateKey(rand.Reader)
	x2, _ := ecdh.X25519().GenerateKey(rand.Reader)
	dk, _ := mlkem.GenerateKey768()
	ek := dk.EncapsulationKey()
	_, ct := ek.Encapsulate()
	_, id, _ := ed25519.GenerateKey(rand.Reader)
	msg := make([]byte, 54)
	sig := ed25519.Sign(id, msg)
	pub := id.Public().(ed25519.PublicKey)
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"X25519Keygen", func() { ecdh.X25519().GenerateKey(rand.Reader) }},
		{"X25519DH", func() { x1.ECDH(x2.PublicKey()) }},
		{"MLKEM768Keygen", func() { k, _ := mlkem.GenerateKey768(); k.EncapsulationKey() }},
		{"MLKEM768Encapsulate", func() { e, _ := mlkem.NewEncapsulationKey768(ek.Bytes()); e.Encapsulate() }},
		{"MLKEM768Decapsulate", func() { dk.Decapsulate(ct) }},
		{"Ed25519Sign", func() { ed25519.Sign(id, msg) }},
		{"Ed25519Verify", func() { ed25519.Verify(pub, msg, sig) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c.f()
			}
		})
	}
}
