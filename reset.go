package vaultudp

import (
	"crypto/ed25519"
	"encoding/binary"
	"net/netip"

	"golang.org/x/crypto/blake2b"
	"golang.org/x/time/rate"
)

// Stateless resets (QUIC, RFC 9000 §10.3, adapted). A Conn that restarts
// loses its sessions; its peers' sealed datagrams then name a session
// index it does not know. It answers each (rate-limited) with a reset that
// carries a token only a holder of its identity key can compute for that
// index; the peer, which got the token sealed under the session, drops the
// session and handshakes at once, so it is reached again within a round
// trip instead of after SilenceTimeout. Hosts that share one identity (a
// fleet behind a load balancer) compute the same tokens, so a flow moved
// to another host recovers the same way.
//
//	token(i)  = BLAKE2b-128(key = resetKey, i as uint32 big endian)
//	resetKey  = BLAKE2b-256(key = the Ed25519 seed, resetLabel)
//
// Each side sends the token of its own index (the one its peer seals to)
// in its session parameters, encrypted inside the handshake (the reply,
// the final message: PROTOCOL.md 9.7).
//
// Reset datagram, 24 bytes, never answered, never larger than the
// shortest sealed datagram (32 bytes), so it amplifies nothing:
//
//	0 version = 4, 1 type = 3, 2 reserved = 0 0,
//	4 index uint32: the receiver index of the datagram that caused it
//	8 token(index)
//
// Anyone who sees only the traffic never sees a token: it travels sealed.
// A reset is honoured only from the peer's validated address and only for
// a session of that peer whose token it carries.

const (
	typeReset = 3

	tokenLen = 16
	resetLen = 8 + tokenLen

	// resetRate and resetBurst bound the resets a Conn sends, whatever
	// arrives: a restarted peer needs one.
	resetRate  = 50
	resetBurst = 10
)

var resetLabel = []byte("vaultudp/3 reset key\x00")

// resetter computes tokens and paces resets; it has no mutable state but
// the limiter, which is safe for concurrent use.
type resetter struct {
	key   [32]byte
	limit *rate.Limiter
}

func newResetter(identity ed25519.PrivateKey) *resetter {
	mac, err := blake2b.New256(identity.Seed())
	if err != nil {
		panic(err) // a 32-byte key: cannot happen
	}
	mac.Write(resetLabel)
	r := &resetter{limit: rate.NewLimiter(resetRate, resetBurst)}
	mac.Sum(r.key[:0])
	return r
}

// token returns the reset token of local session index i.
func (r *resetter) token(i uint32) (t [tokenLen]byte) {
	mac, err := blake2b.New(tokenLen, r.key[:])
	if err != nil {
		panic(err)
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], i)
	mac.Write(b[:])
	mac.Sum(t[:0])
	return t
}

// sendReset answers a sealed datagram for index, a session this Conn
// does not have, from from, that arrived at the local address local.
func (c *Conn) sendReset(index uint32, from netip.AddrPort, local netip.Addr) {
	if !c.resets.limit.Allow() {
		return
	}
	b := make([]byte, resetLen)
	b[0], b[1] = ProtocolVersion, typeReset
	binary.BigEndian.PutUint32(b[4:], index)
	t := c.resets.token(index)
	copy(b[8:], t[:])
	if err := c.sock.Load().WriteTo(b, from, local); err != nil {
		c.log.Debug("vaultudp: sending reset", "peer", from, "err", err)
		return
	}
	c.stats.resetsSent.Add(1)
}

// receiveReset handles a reset datagram: if it names a session of the
// peer at its source, with that session's token, the peer lost its state:
// its sessions go, and a handshake starts at once. A reset that names an
// older session (a late datagram under one the peer let expire) drops
// that one only.
func (c *Conn) receiveReset(p *packet) {
	b := p.data
	if len(b) != resetLen || b[2] != 0 || b[3] != 0 {
		c.stats.malformed.Add(1)
		return
	}
	index := binary.BigEndian.Uint32(b[4:])
	pr, _ := c.peerFor(p.from, lookupOnly)
	if pr == nil {
		c.stats.unknownSession.Add(1)
		return
	}
	pr.mu.Lock()
	reset := pr.kp.byReset(index, b[8:])
	if reset == nil || pr.addr != p.from {
		pr.mu.Unlock()
		c.stats.auth.Add(1)
		return
	}
	if reset != pr.kp.current() {
		// A session the peer let expire (a late datagram under it): that
		// one goes, the current one stays.
		pr.kp.discard(reset)
		c.index.remove(reset)
		pr.mu.Unlock()
		return
	}
	c.index.remove(pr.kp.clear()...)
	hello := c.wantHelloLocked(pr, helloReset, c.now())
	pr.notifyLocked()
	pr.mu.Unlock()
	c.stats.resetsReceived.Add(1)
	c.log.Debug("vaultudp: peer reset its session", "peer", p.from)
	if hello {
		c.sendHello(pr)
	}
}
