package vaultudp

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"

	"github.com/vaultudp/vaultudp/vaulttest"
)

// FuzzIngress attacks the receive path of a live Conn, the victim A, which
// has a session with a peer P (over an in-memory pipe) and a handshake
// pending with an address where nobody answers (the blackhole). Each input
// becomes one datagram handed to A's receive path exactly as its reader
// hands datagrams (c.receive), from one of four source addresses; A then
// must:
//
//   - not panic;
//   - deliver nothing to ReadFrom that P did not seal: every datagram read
//     is one of the payloads P sealed for the test, delivered at most once
//     over the whole run (the replay window), from the input's source;
//   - keep its per-source state bounded (peers, sessions, pending
//     initiations, remembered hellos) and start no goroutine.
//
// The Conns are made once per process, not per input, and closed at the
// end (goleak in TestMain checks that nothing leaked).
//
// An input is flags, selector, rest. The low two bits of flags pick the
// source: P's address, a stranger, the blackhole, an IPv6 stranger. Bits 2-3
// pick what rest is:
//
//	0 raw:      the datagram itself
//	1 live:     an XOR mask over live packet selector (captured from the real
//	            exchange when the Conns were made: hellos, replies, cookies,
//	            keepalives, sealed data; see ingressRig.live)
//	2 fresh:    an XOR mask over a genuine packet made now, of kind
//	            selector%8 (see ingressRig.fresh): data sealed by P, hellos
//	            signed now, with and without a valid cookie, a reply signed
//	            for A's pending hello, a cookie for it
//	3 envelope: an envelope that P seals as is: authentic, arbitrary
//	            content, for the paths behind the AEAD (envelope decoding,
//	            decompression)
//
// A mask longer than its packet extends it; flag bit 4 cuts the packet to
// the mask's length. Flag bit 5 sets a sealed datagram's receiver index to
// A's live session with P, bit 6 the receiver index of a reply or cookie
// message to A's pending initiation: so that mutations, and packets
// captured in another process (the corpus in testdata/fuzz/FuzzIngress),
// reach past the index lookups. Masks describe mutations of packets that
// are genuine in every process: keys and indexes differ from one run to
// the next, the masks do not.
func FuzzIngress(f *testing.F) {
	r := newIngressRig(f)
	f.Cleanup(r.close)
	// Seeds beside the corpus files: every live packet and fresh kind,
	// unchanged.
	for i := range r.live {
		f.Add([]byte{1 << 2, byte(i)})
	}
	for k := range 8 {
		f.Add([]byte{2 << 2, byte(k)})
	}
	f.Add([]byte{3 << 2, 0, 0x82, 0xa1, 'v', 3, 0xa1, 'p', 0xc4, 1, 'x'})
	f.Fuzz(func(t *testing.T, in []byte) {
		r.run(t, in)
	})
}

// ingressRig is the victim, its peer, and what FuzzIngress knows of them.
type ingressRig struct {
	a, p         *Conn
	aAddr, pAddr netip.AddrPort
	blackhole    netip.AddrPort
	sources      [4]netip.AddrPort
	aPeer        *peer // A's peer for P (it may roam)
	stranger     ed25519.PrivateKey
	pIdentity    ed25519.PrivateKey
	eph          *ecdh.PrivateKey
	live         [][]byte
	goroutines   int // at the first input

	mu        sync.Mutex
	setupN    int             // payloads "ingress-setup-<i>" P sealed
	heldN     int             // payloads "ingress-held-<i>" P sealed, not sent
	freshN    atomic.Int64    // payloads "ingress-fresh-<i>" P sealed
	delivered map[string]bool // payloads delivered so far
}

// captureConn records what a Conn writes while recording is on.
type captureConn struct {
	*vaulttest.PacketConn
	recording atomic.Bool
	mu        sync.Mutex
	out       [][]byte
}

func (c *captureConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if c.recording.Load() {
		c.mu.Lock()
		c.out = append(c.out, bytes.Clone(b))
		c.mu.Unlock()
	}
	return c.PacketConn.WriteTo(b, addr)
}

func (c *captureConn) captured() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.out...)
}

// ingressPayload is P's payload name i of kind; every third is long and
// compressible.
func ingressPayload(kind string, i int) []byte {
	p := []byte("ingress-" + kind + "-" + strconv.Itoa(i))
	if i%3 == 0 {
		p = append(p, '/')
		p = append(p, bytes.Repeat([]byte("compressible "), 20)...)
	}
	return p
}

func newIngressRig(t testing.TB) *ingressRig {
	nw := vaulttest.NewNetwork()
	listen := func(s string) *captureConn {
		pc, err := nw.Listen(netip.MustParseAddrPort(s))
		if err != nil {
			t.Fatal(err)
		}
		c := &captureConn{PacketConn: pc}
		c.recording.Store(true)
		return c
	}
	ca, cp := listen("10.1.0.1:1000"), listen("10.1.0.2:2000")
	r := &ingressRig{
		aAddr: memAddr(ca), pAddr: memAddr(cp),
		blackhole: netip.MustParseAddrPort("10.1.0.4:4000"),
		stranger:  hsIdentity(0x57), pIdentity: hsIdentity(0x50),
		delivered: make(map[string]bool),
	}
	r.sources = [4]netip.AddrPort{r.pAddr, netip.MustParseAddrPort("10.1.0.3:3000"), r.blackhole, netip.MustParseAddrPort("[2001:db8::5]:5000")}
	var err error
	if r.eph, err = ecdh.X25519().GenerateKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	// Sessions for a day, a pending handshake for an hour (retried every
	// second); P compresses whatever it can.
	cfg := Config{MTU: 1500, KeyLifetime: 24 * time.Hour, HandshakeTimeout: time.Hour, Padding: PadNone}
	if r.a, err = Wrap(ca, &cfg); err != nil {
		t.Fatal(err)
	}
	pcfg := cfg
	pcfg.Identity, pcfg.Compression = r.pIdentity, CompressAlways
	if r.p, err = Wrap(cp, &pcfg); err != nil {
		r.a.Close()
		t.Fatal(err)
	}
	handshakeT(t, r.p, r.aAddr)
	handshakeT(t, r.a, r.pAddr)
	for i := range 8 {
		if _, err := r.p.WriteToUDPAddrPort(ingressPayload("setup", i), r.aAddr); err != nil {
			t.Fatal(err)
		}
		got, _ := readWithin(t, r.a, waitLong)
		r.delivered[string(got)] = true
		r.setupN++
	}
	if _, err := r.a.WriteToUDPAddrPort([]byte("to P"), r.pAddr); err != nil {
		t.Fatal(err)
	}
	readWithin(t, r.p, waitLong)
	if err := r.a.AddPeer(PeerConfig{Addr: r.blackhole}); err != nil {
		t.Fatal(err)
	}
	ca.recording.Store(false)
	cp.recording.Store(false)
	r.aPeer = peerOf(r.a, r.pAddr)

	// The live packets, in a fixed order.
	find := func(from []([]byte), what string, ok func([]byte) bool) []byte {
		for _, d := range from {
			if ok(d) {
				return d
			}
		}
		t.Fatalf("FuzzIngress setup: no %s captured", what)
		return nil
	}
	isType := func(typ byte) func([]byte) bool {
		return func(d []byte) bool { return len(d) > 8 && d[0] == ProtocolVersion && d[1] == typ }
	}
	aOut, pOut := ca.captured(), cp.captured()
	var pData [][]byte
	for _, d := range pOut {
		if isSealedData(d) {
			pData = append(pData, d)
		}
	}
	if len(pData) != 8 {
		lens := []int{}
		for _, d := range pData {
			lens = append(lens, len(d))
		}
		t.Fatalf("FuzzIngress setup: %d sealed data datagrams from P (lengths %v), want 8", len(pData), lens)
	}
	pHello := find(pOut, "hello from P", isType(typeHello))
	r.live = append(r.live,
		pHello,
		find(aOut, "reply from A", isType(typeReply)),
		find(pOut, "final message from P", isType(typeFinal)),
	)
	r.live = append(r.live, pData...)
	r.live = append(r.live,
		find(aOut, "sealed data from A", isSealedData),
		find(aOut, "hello to the blackhole", isType(typeHello)),
	)
	// A's cookie for P, as A would send it under load; P's hello with it.
	cookie := r.a.cookies.make(r.pAddr, r.a.cfg.now())
	r.live = append(r.live, noise.CookieMsg(1, cookie[:]))
	withCookie := bytes.Clone(pHello)
	copy(withCookie[len(withCookie)-cookieLen:], cookie[:]) // the cookie ends the hello
	r.live = append(r.live, withCookie)
	r.live = append(r.live, helloDatagramFrom(r.stranger, time.Now(), 7, r.eph))
	// Two datagrams P sealed and nobody sent: delivered once, when first
	// fed in.
	for i := range 2 {
		r.live = append(r.live, r.seal(ingressPayload("held", i), i == 0))
		r.heldN++
	}
	return r
}

func (r *ingressRig) close() {
	r.a.Close()
	r.p.Close()
}

// pSession is P's session with A.
func (r *ingressRig) pSession() *session {
	return currentSession(r.p, r.aAddr)
}

// seal seals payload as P's next datagram to A, compressed if asked and
// it helps.
func (r *ingressRig) seal(payload []byte, compress bool) []byte {
	rec := record{payload: payload, hasPayload: true}
	if compress {
		if z := r.p.z.compress(nil, payload); len(z) < len(payload) {
			rec.payload, rec.compressed = z, true
		}
	}
	return r.sealEnvelope(rec.appendTo(nil, 0))
}

// sealEnvelope seals env, whatever it holds, under P's session with A.
func (r *ingressRig) sealEnvelope(env []byte) []byte {
	buf := make([]byte, sealedHeaderLen, sealedHeaderLen+len(env)+tagLen)
	out, err := r.pSession().seal(append(buf, env...))
	if err != nil {
		panic(err)
	}
	return out
}

// pendingInit returns A's pending initiation to the blackhole, starting a
// new one if it has none (a reply may have completed it).
func (r *ingressRig) pendingInit() *initiation {
	for range 2 {
		bp := peerOf(r.a, r.blackhole)
		if bp != nil {
			bp.mu.Lock()
			init := bp.hs.init
			bp.mu.Unlock()
			if init != nil {
				return init
			}
			r.a.RemovePeer(r.blackhole)
		}
		r.a.AddPeer(PeerConfig{Addr: r.blackhole})
	}
	return nil
}

// fresh returns a genuine packet of kind k, made now.
func (r *ingressRig) fresh(k byte, src netip.AddrPort) []byte {
	now := time.Now()
	switch k % 8 {
	case 0, 1: // data sealed by P, plain or compressed
		n := int(r.freshN.Add(1) - 1)
		return r.seal(ingressPayload("fresh", n), k%8 == 1)
	case 2: // a hello from the stranger
		return helloDatagramFrom(r.stranger, now, uint32(now.UnixNano()), r.eph)
	case 3: // a hello from P's identity (not from P's Conn)
		return helloDatagramFrom(r.pIdentity, now, uint32(now.UnixNano()), r.eph)
	case 4: // a hello from the stranger with a valid cookie for src
		d := helloDatagramFrom(r.stranger, now, uint32(now.UnixNano()), r.eph)
		cookie := r.a.cookies.make(src, r.a.cfg.now())
		copy(d[len(d)-cookieLen:], cookie[:])
		return d
	case 5: // the stranger's reply to A's pending hello
		init := r.pendingInit()
		if init == nil {
			return nil
		}
		h, err := noise.ParseHello(bytes.Clone(init.hello))
		if err != nil {
			panic(err)
		}
		st, err := noise.NewStatic(r.stranger, nil)
		if err != nil {
			panic(err)
		}
		_, reply, err := noise.Respond(h, noise.ResponderConfig{Static: st, Index: uint32(now.UnixNano()) | 1, Params: noise.Params{MaxUnfragmented: 1472, MaxDatagram: 1472}})
		if err != nil {
			panic(err)
		}
		return reply
	case 6: // a keepalive sealed by P
		return r.sealEnvelope((&record{}).appendTo(nil, 0))
	default: // a cookie for A's pending hello
		init := r.pendingInit()
		if init == nil {
			return nil
		}
		var cookie [cookieLen]byte
		binary.BigEndian.PutUint64(cookie[:], uint64(now.UnixNano()))
		return noise.CookieMsg(init.localIndex, cookie[:])
	}
}

// xorMask applies mask to a copy of base, extending it with the mask's
// tail, and cuts it to the mask's length if cut.
func xorMask(base, mask []byte, cut bool) []byte {
	out := bytes.Clone(base)
	for i, m := range mask {
		if i < len(out) {
			out[i] ^= m
		} else {
			out = append(out, m)
		}
	}
	if cut && len(out) > len(mask) {
		out = out[:len(mask)]
	}
	return out
}

func (r *ingressRig) run(t *testing.T, in []byte) {
	var flags, sel byte
	rest := in
	if len(in) >= 2 {
		flags, sel, rest = in[0], in[1], in[2:]
	}
	src := r.sources[flags&3]
	var data, envelope []byte
	switch flags >> 2 & 3 {
	case 0:
		data = bytes.Clone(rest)
	case 1:
		data = xorMask(r.live[int(sel)%len(r.live)], rest, flags&16 != 0)
	case 2:
		data = xorMask(r.fresh(sel, src), rest, flags&16 != 0)
	case 3:
		envelope = rest
		data = r.sealEnvelope(rest)
	}
	if flags&32 != 0 && len(data) >= sealedHeaderLen && data[1] == typeSealed {
		r.aPeer.mu.Lock()
		if s := r.aPeer.kp.current(); s != nil {
			binary.BigEndian.PutUint32(data[4:], s.localIndex)
		}
		r.aPeer.mu.Unlock()
	}
	if flags&64 != 0 && len(data) >= 8 && (data[1] == typeReply || data[1] == typeCookie) {
		if init := r.pendingInit(); init != nil {
			binary.BigEndian.PutUint32(data[4:], init.localIndex) // the receiver index: A's pending hello
		}
	}

	r.drain(t, nil, netip.AddrPort{}) // anything A's own reader delivered
	p := r.a.getPacket()
	n := copy(p.buf, data)
	p.data, p.from, p.truncated = p.buf[:n], src, n == len(p.buf)
	if !r.a.receive(p) {
		r.a.putPacket(p)
	}
	r.drain(t, envelope, src)

	s := stateOf(r.a)
	// At most two replies wait for their final message per source
	// address (a peer's, or a stranger's outside the table).
	if s.peers > 8 || s.sessions > 40 || s.initiated > 4 || s.responding > 2*len(r.sources) {
		t.Fatalf("A's state grows: %+v", s)
	}
	// The fuzzing machinery starts goroutines of its own after the setup:
	// the count is taken at the first input.
	g := runtime.NumGoroutine()
	if r.goroutines == 0 {
		r.goroutines = g
	}
	if g > r.goroutines+4 {
		t.Fatalf("%d goroutines, %d at the first input", g, r.goroutines)
	}
}

// drain reads what A delivered and fails unless each is a payload P
// sealed, delivered for the first time, from src. envelope, if not nil,
// is the envelope P sealed for this input, whose payload (if any) may
// also be delivered.
func (r *ingressRig) drain(t *testing.T, envelope []byte, src netip.AddrPort) {
	for {
		var p *packet
		select {
		case p = <-r.a.recvQ:
		default:
			return
		}
		got, from := string(p.data), p.from
		r.a.putPacket(p)
		if envelope != nil {
			// P sealed this envelope: its payload is authentic.
			rec, err := parseRecord(envelope)
			switch {
			case err != nil || !rec.hasPayload:
				t.Fatalf("delivered %q from an envelope that has no payload (%v): %x", trunc([]byte(got)), err, envelope)
			case from != src:
				t.Fatalf("delivered from %v, the datagram came from %v", from, src)
			case len(got) > r.a.MaxPayload():
				t.Fatalf("delivered %d bytes, MaxPayload is %d", len(got), r.a.MaxPayload())
			case !rec.compressed && got != string(rec.payload):
				t.Fatalf("delivered %q, the envelope's payload is %q", trunc([]byte(got)), trunc(rec.payload))
			}
			envelope = nil // at most one datagram per envelope
			continue
		}
		if !r.sealedByP(got) {
			t.Fatalf("delivered %q from %v: P never sealed it", trunc([]byte(got)), from)
		}
		r.mu.Lock()
		again := r.delivered[got]
		r.delivered[got] = true
		r.mu.Unlock()
		if again {
			t.Fatalf("delivered %q twice", trunc([]byte(got)))
		}
		if src.IsValid() && from != src {
			t.Fatalf("delivered from %v, the datagram came from %v", from, src)
		}
	}
}

// sealedByP reports whether s is one of the payloads P sealed.
func (r *ingressRig) sealedByP(s string) bool {
	for _, k := range []struct {
		kind string
		n    int
	}{{"setup", r.setupN}, {"held", r.heldN}, {"fresh", int(r.freshN.Load())}} {
		rest, ok := strings.CutPrefix(s, "ingress-"+k.kind+"-")
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, "/")
		i, err := strconv.Atoi(num)
		return err == nil && i >= 0 && i < k.n && s == string(ingressPayload(k.kind, i))
	}
	return false
}
