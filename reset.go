package vaultudp

import (
	"crypto/ed25519"
	"encoding/binary"
	"net/netip"

	"golang.org/x/crypto/blake2b"
)

// Stateless resets (QUIC, RFC 9000 §10.3, adapted). A Conn that restarts
// loses its sessions; its peers' sealed datagrams then name a session
// index it does not know. It answers each (within a per-source budget)
// with a reset that carries a token only a holder of its identity key can
// compute for that index and that path; the peer, which got the token
// sealed under the session, drops the session and handshakes at once, so
// it is reached again within a round trip instead of after SilenceTimeout.
// What it sealed to the peer in the round trip before the reset goes
// again under the new session (resend.go).
//
//	token(i, a, p) = BLAKE2b-128(key = resetKey,
//	                 i as uint32 big endian || a's IP (16 bytes, IPv4 as
//	                 IPv4-mapped IPv6) || a's port || p), 24 bytes in all
//	resetKey       = BLAKE2b-256(key = the Ed25519 seed, resetLabel)
//
// where i is the local session index, a the peer's address as this Conn
// sees it, and p this Conn's own UDP port (both ports uint16 big endian).
//
// The rule for Conns that share an identity (RFC 9000 §10.3.2, §21.11).
// A token must never be minted for a session that is alive elsewhere and
// sent where an attacker can read it. So a token is bound to the path, the
// two things a junk datagram cannot choose if its sender wants the answer:
// the source address the reset goes back to, and the port it arrived at.
// A junk datagram that names another Conn's index from the attacker's own
// address gets a token bound to the attacker's address, worth nothing
// against the real peer; one forged from the real peer's address gets its
// reset sent to the real peer, where the attacker does not read it, from
// an address the peer does not accept resets from (a sibling on another
// port, or another host). A fleet behind a load balancer recovers as a
// restarted host does, provided its hosts serve on the same port and the
// balancer routes by the client's address and port, which is all a
// balancer sees: a flow moved to a host that never saw it gets, from that
// host, the same token its old host gave (same identity, same client
// address, same port), and handshakes again within a round trip. Within a
// Conn, a reset is sent only for an index it has not issued to a live
// session or a pending hello (sessionIndex.issued): a hello's index travels
// in clear, and its session takes that index.
//
// A path change keeps the token true where it can: the side that moves
// its peer to a validated address (NAT rebinding, roaming) sends the
// token for the new address. A Rebind to another port makes the tokens
// this Conn gave stale until the next rekey: a restart in between is
// found by the peers' silence timers instead.
//
// Each side's first token travels in its session parameters, encrypted
// inside the handshake (the reply, the final message: PROTOCOL.md 9.7),
// bound to the path the handshake took. After a path change, a token
// message, in the "c" field of a sealed envelope, padded as data: the
// token of the sender's own index, the one its peer seals to, for the new
// path, then the sender's session parameters (sizes.go).
//
//	0 type = 6, 1 token, 16 bytes, 17 parameters
//
// Reset datagram, 24 bytes, never answered, never larger than the
// shortest sealed datagram (32 bytes), so it amplifies nothing:
//
//	0 version = 4, 1 type = 3, 2 reserved = 0 0,
//	4 index uint32: the receiver index of the datagram that caused it
//	8 token(index, the datagram's source, the local port)
//
// Anyone who sees only the traffic never sees a token: it travels sealed.
// A reset is honoured only from the peer's validated address and only for
// a session of that peer whose token it carries.
//
// Budget: resets are paced per source (an address and port), in a fixed
// table of budgetSlots token buckets found by a keyed hash (sourceBudget,
// cookie.go), not by one limiter for all sources: a flood of junk from
// forged sources
// spends the budgets of the sources it forges, not those of the real
// clients of a restarted Conn. A reset is smaller than the datagram that
// caused it, so the total needs no cap for amplification; a source (the
// victim of a forged flood) gets at most resetRate a second, in bursts of
// resetBurst.

const (
	typeReset = 3
	// ctlToken is the token message. Since v4 the handshake carries each
	// side's first token (PROTOCOL.md 9.7); the message is sent only
	// after a path change, for the new path.
	ctlToken = 6

	tokenLen    = 16
	tokenMsgLen = 1 + tokenLen
	resetLen    = 8 + tokenLen

	// resetRate and resetBurst bound the resets one source (address and
	// port) gets: a client of a restarted Conn needs one per session.
	resetRate  = 20
	resetBurst = 20
)

var resetLabel = []byte("vaultudp/3 reset key\x00")

// resetter computes tokens and paces resets per source.
type resetter struct {
	key    [32]byte
	budget sourceBudget // cookie.go
	pool   resendPool   // the stores of what a peer's reset would have its datagrams sent again from (resend.go)
}

func newResetter(identity ed25519.PrivateKey) *resetter {
	mac, err := blake2b.New256(identity.Seed())
	if err != nil {
		panic(err) // a 32-byte key: cannot happen
	}
	mac.Write(resetLabel)
	r := &resetter{budget: newSourceBudget(resetRate, resetBurst)}
	mac.Sum(r.key[:0])
	return r
}

// token returns the reset token of local session index i on the path
// from the local port to peer.
func (r *resetter) token(i uint32, peer netip.AddrPort, localPort uint16) (t [tokenLen]byte) {
	mac, err := blake2b.New(tokenLen, r.key[:])
	if err != nil {
		panic(err)
	}
	var b [4 + 16 + 2 + 2]byte
	binary.BigEndian.PutUint32(b[:], i)
	ip := peer.Addr().Unmap().As16()
	copy(b[4:], ip[:])
	binary.BigEndian.PutUint16(b[20:], peer.Port())
	binary.BigEndian.PutUint16(b[22:], localPort)
	mac.Write(b[:])
	mac.Sum(t[:0])
	return t
}

// issued reports whether idx is one this Conn has handed out and still
// uses: a session's (or one being made), or a pending hello's.
func (x *sessionIndex) issued(idx uint32) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.sessions[idx]; ok {
		return true
	}
	_, ok := x.initiated[idx]
	return ok
}

// localPort is the UDP port of the Conn's socket (zero if the PacketConn
// beneath it has none).
func (c *Conn) localPort() uint16 { return c.sock.Load().self.Port() }

// sendToken sends the token of s's local index, on the path to to, to
// the peer there, sealed.
func (c *Conn) sendToken(s *session, to netip.AddrPort) {
	t := c.resets.token(s.localIndex, to, c.localPort())
	msg := c.appendParams(append([]byte{ctlToken}, t[:]...)) // sizes.go
	if err := c.sendSealedRecord(s, to, &record{control: msg}, true); err != nil {
		c.log.Debug("vaultudp: sending reset token", "peer", to, "err", err)
	}
}

// sendReset answers a sealed datagram for index, a session this Conn
// does not have, from from, that arrived at the local address local.
// It sends nothing for an index it issued (a hello's index is seen in
// clear, and the session it makes takes it), nor beyond from's budget.
func (c *Conn) sendReset(index uint32, from netip.AddrPort, local netip.Addr) {
	if c.index.issued(index) || !c.resets.budget.allow(from, c.now()) {
		return
	}
	b := make([]byte, resetLen)
	b[0], b[1] = ProtocolVersion, typeReset
	binary.BigEndian.PutUint32(b[4:], index)
	t := c.resets.token(index, from, c.localPort())
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
	dead := pr.kp.clear()
	c.index.remove(dead...)
	c.takeForResendLocked(pr, reset, dead) // resend.go: what it lost goes again under the next session
	hello := c.wantHelloLocked(pr, helloReset, c.now())
	pr.notifyLocked()
	pr.mu.Unlock()
	c.stats.resetsReceived.Add(1)
	c.event(Event{Kind: EventReset, Addr: p.from})
	if hello {
		c.sendHello(pr)
	}
}
