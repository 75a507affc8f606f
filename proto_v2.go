package vaultudp

// Protocol v2 on a Conn: peers configured with ProtocolV2 are spoken to,
// and heard from, in the Python reference's format, on the same socket as
// native peers (internal/v2 holds the codec and the per-peer state;
// docs/WIRE-V2.md the facts). This file is the glue: the per-peer
// protocol interface the Conn reaches a v2 peer through, and the hooks of
// the native paths. The application does not see the difference: WriteTo
// seals (or queues, or sends in clear, as the policy says) and ReadFrom
// returns the peer's datagrams with its configured address as the source,
// under the native size rules (writes up to MaxPayload, reads through the
// native bounded decoder).
//
// Routing: a datagram is native first. It goes to v2 only when the native
// checks refuse it before authenticating it (notNative), or when it comes
// from a v2 peer's configured address, which speaks v2 only.

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"

	v2 "github.com/vaultudp/vaultudp/internal/v2"
)

// peerProto is a peer spoken to in another protocol than the native one:
// the Conn starts it when it is added, writes and Handshake go to it, it
// describes itself in PeerInfo, and it ends when the peer is removed. Its
// datagrams come in through notNative, its timers run in the protocol's
// tick.
type peerProto interface {
	start()
	send(b []byte) error
	handshake(ctx context.Context) error
	info(pi *PeerInfo)
	remove()
}

// v2Proto is a ProtocolV2 peer.
type v2Proto struct {
	c *Conn
	p *v2.Peer
}

func (vp v2Proto) start()              { vp.p.Start() }
func (vp v2Proto) send(b []byte) error { return vp.c.v2Err(vp.p.Send(b)) }
func (vp v2Proto) remove()             { vp.p.Remove() }
func (vp v2Proto) handshake(ctx context.Context) error {
	return vp.c.v2Err(vp.p.Handshake(ctx, vp.c.closed))
}

func (vp v2Proto) info(pi *PeerInfo) {
	in := vp.p.Info()
	pi.Protocol = ProtocolV2
	pi.PublicKey = in.PublicKey
	pi.Established = in.Established
	pi.LastHandshake = in.LastHandshake
}

// newV2Endpoint makes the Conn's protocol v2 side: its keys
// (Config.V2BoxPrivateKey, Config.V2SigningKey, else derived from
// Identity); peers come with AddPeer.
func newV2Endpoint(c *Conn) (*v2.Endpoint, error) {
	sign := c.cfg.V2SigningKey
	if sign == nil {
		sign = c.cfg.Identity
	}
	k := &c.stats
	e, err := v2.New(v2.Config{
		BoxPrivateKey: c.cfg.V2BoxPrivateKey,
		SigningKey:    sign,
		Probe:         c.cfg.V2KeyProbe,
		Padding:       int(c.cfg.Padding),
		MTU:           c.mtu,
		MaxPayload:    c.maxPayload,
		BufSize:       c.bufSize + tagLen,
		Write:         func(b []byte, to netip.AddrPort) error { return c.sock.Load().writeTo(b, to) },
		LocalPort:     c.v2LocalPort,
		Clock:         c.now,
		Now:           c.cfg.now,
		VerifyPeer:    c.cfg.VerifyPeer,
		Defer:         c.queueV2, // handshake_queue.go: off the reader
		Log:           c.log,
		Counters: v2.Counters{
			Malformed: &k.malformed, Replay: &k.replay, Auth: &k.auth, Policy: &k.policy,
			Rejected: &k.rejected, TooLarge: &k.tooLarge, Expired: &k.dropHandshakeTimeout,
			DatagramsOut: &k.datagramsOut, BytesOut: &k.bytesOut,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return e, nil
}

// v2LocalPort is the port we listen on, the one our key exchanges name.
func (c *Conn) v2LocalPort() int {
	if ua, ok := c.sock.Load().laddr.(*net.UDPAddr); ok {
		return ua.Port
	}
	return 0
}

// v2AddLocked makes p, just made by AddPeer, a v2 peer; Conn.mu is held.
func (c *Conn) v2AddLocked(p *peer, pc *PeerConfig) error {
	policy := v2.RequireEncryption
	switch p.policy() {
	case Opportunistic:
		policy = v2.Opportunistic
	case Plaintext:
		policy = v2.Plaintext
	}
	vp, err := c.v2.AddPeer(v2.PeerConfig{
		Addr: p.addr, PublicKey: pc.PublicKey, BoxKey: pc.BoxKey, Policy: policy,
		Queue:        v2Queue{c: c, p: p},
		DatagramsOut: &p.datagramsOut, BytesOut: &p.bytesOut,
	})
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return c.opError("add peer", nil, ErrClosed)
		}
		return c.v2Err(err)
	}
	p.proto = v2Proto{c: c, p: vp}
	return nil
}

// v2Queue is a v2 peer's wait for its box key in the Conn's write queue:
// the queue of the peer's native entry, under the native bounds (per peer
// and per Conn, in bytes); a full queue counts WriteQueueFull. The native
// timers leave it alone: a v2 peer has no native handshake.
type v2Queue struct {
	c *Conn
	p *peer
}

func (q v2Queue) Push(b []byte) bool {
	q.p.mu.Lock()
	ok := !q.p.removed && q.c.enqueueLocked(q.p, b)
	q.p.mu.Unlock()
	if !ok {
		q.c.stats.writeQueueFull.Add(1)
	}
	return ok
}

func (q v2Queue) Take() [][]byte {
	q.p.mu.Lock()
	defer q.p.mu.Unlock()
	return q.c.takeQueueLocked(q.p)
}

// v2Err wraps an error of the v2 side in the Conn's sentinel.
func (c *Conn) v2Err(err error) error {
	var tl *v2.TooLargeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tl):
		return &tooLargeError{n: tl.N, max: tl.Max}
	case errors.Is(err, v2.ErrRemoved):
		return fmt.Errorf("%w: %w", ErrUnknownPeer, err)
	case errors.Is(err, v2.ErrNoKey):
		return fmt.Errorf("%w: %w", ErrNoSession, err)
	case errors.Is(err, v2.ErrConfig):
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	case errors.Is(err, net.ErrClosed):
		return c.opError("handshake", nil, ErrClosed)
	}
	return err
}

// protoAt returns the other-protocol peer configured at addr, or nil (one
// atomic load while the Conn has no v2 peers).
func (c *Conn) protoAt(addr netip.AddrPort) peerProto {
	if vp := c.v2.Lookup(addr); vp != nil {
		return v2Proto{c: c, p: vp}
	}
	return nil
}

// notNativeAddr reports whether datagrams from addr are not native
// whatever they look like: addr is a ProtocolV2 peer's configured address,
// which speaks v2 only (a native hello from there must not make a native
// session for a v2 peer).
func (c *Conn) notNativeAddr(addr netip.AddrPort) bool {
	return c.v2.Lookup(addr) != nil
}

// notNative takes a datagram the native checks refused before trying to
// authenticate it (no native header, a session index we do not have, an
// open envelope that does not parse, or a v2 peer's address): it is a v2
// datagram if protocol v2 takes it, else drop counts it. It never keeps
// p.
//
// What tells a v2 datagram from a native one (WIRE-V2.md §2): none has a
// version byte. A native datagram starts with ProtocolVersion and its
// type; a plaintext v2 datagram with a msgpack map header (0x80–0x8f,
// 0xde, 0xdf), so it never looks native; a sealed v2 datagram with a
// random box nonce, so about one in 32768 of them starts like a native
// one, and the native checks then refuse it (a sealed header with an
// unknown session index, an unparsable envelope) before handing it here.
// A reset (ProtocolVersion, typeReset) has a fixed length no v2 datagram
// has. The one v2 datagram lost: a box nonce that starts with a sealed header
// and the index of a live native session (a chance of about 2^-64 per
// session): its tag fails and the native open, which decrypts in place,
// has overwritten it (counted as Auth).
func (c *Conn) notNative(p *packet, drop *atomic.Uint64) bool {
	if !c.receiveOther(p) {
		drop.Add(1)
	}
	return false
}

// receiveOther is notNative for a caller that counts and answers a
// datagram no other protocol takes itself: it reports whether protocol v2
// took p (and then handled it). It never keeps p.
func (c *Conn) receiveOther(p *packet) bool {
	if !c.v2.Active() || p.truncated {
		return false
	}
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	from, payload, took := c.v2.Receive(p.from, p.data, *bp)
	if took && payload != nil {
		// Decompressed into a new packet, under the native bound, with
		// the peer's configured address as the source.
		pr, _ := c.peerFor(from, lookupOnly)
		p.from = from
		c.deliver(p, pr, &record{payload: payload, hasPayload: true, compressed: true})
	}
	return took
}

// v2Tick runs protocol v2's timers from the Conn's housekeeping.
func (c *Conn) v2Tick(now int64) { c.v2.Tick(now) }

// V2PublicKeys returns the Conn's static protocol v2 public keys: its
// X25519 box key (the enc_key of its key exchanges) and its Ed25519
// signing key (sign_key). The reference shows both as standard base64.
func (c *Conn) V2PublicKeys() (boxKey []byte, signKey ed25519.PublicKey) {
	if !c.ok() {
		return nil, nil
	}
	k := c.v2.Keys()
	return slices.Clone(k.BoxPublic[:]), slices.Clone(k.Sign.Public().(ed25519.PublicKey))
}
