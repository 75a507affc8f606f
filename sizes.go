package vaultudp

import (
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"

	"golang.org/x/crypto/chacha20"
)

// Per-datagram overhead, in bytes. A sealed datagram on the wire is
//
//	IP header (20 or 40) | UDP header (8) | sealed header (16) |
//	envelope (payload framing + payload [+ padding]) | Poly1305 tag (16)
//
// so the largest payload is the path MTU minus all of it (MaxPayload,
// MaxPayloadTo).
const (
	ipv4HeaderLen   = 20
	ipv6HeaderLen   = 40
	udpHeaderLen    = 8
	sealedHeaderLen = 16
	tagLen          = 16
	sealedOverhead  = sealedHeaderLen + tagLen

	// envelopeFraming is the envelope's fixed part around a payload: the
	// map header (1), "v" and its value (3), the "p" key (2). The bin
	// header (2, 3 or 5 bytes) comes on top.
	envelopeFraming = 1 + 3 + 2

	// DefaultMTU is used when no up, non-loopback interface reports an
	// MTU (a container with only a loopback, say): the Ethernet MTU.
	DefaultMTU = 1500

	// MinMTU is the smallest MTU Config.MTU accepts: IPv4's minimum
	// datagram size that every host must accept.
	MinMTU = 576

	// MaxMTU is the largest MTU Config.MTU accepts (the IPv4 total length
	// field).
	MaxMTU = 65535
)

// Datagram sizes per peer (PROTOCOL.md section 6). Each side tells its
// peer, in the session parameters its handshake message carries encrypted
// (the reply, the final message; handshake.go), and again in a token
// message after a path change (reset.go), the largest datagram it
// receives. Padding to the MTU pads to the smaller of the path MTU to that
// peer (the route's, or Config.MTU) and what the peer receives, the target,
// but never beyond padSmall for a datagram that fits padSmall: datagrams to
// a peer have one of two lengths, padSmall (or the target, if smaller) and
// the target, whatever MTU either host has. A datagram above the target is
// still sent, up to what the peer receives (unless Config.StrictMTU),
// padded to a multiple of the target; IP fragments it where the path needs
// it, as it does a *net.UDPConn's.

const (
	// udpMaxDatagram is the largest UDP payload (over IPv4).
	udpMaxDatagram = 65507

	// minAccept is the largest datagram every Conn receives, assumed of a
	// peer until it says: receive buffers hold at least a DefaultMTU IPv4
	// datagram (recvBufSize).
	minAccept = DefaultMTU - ipv4HeaderLen - udpHeaderLen

	// The session parameters, each length 2, uint16 big endian:
	// extMaxDatagram, the largest datagram the sender receives without IP
	// fragmentation (its own MTU's; what padding may fill), and
	// extMaxReassembled, the largest it receives at all (fragmented).
	extMaxDatagram    = 1
	extMaxReassembled = 2

	// padSmall is the length PadMTU pads a datagram to when it fits in
	// it, and the target is larger: 1452 bytes, the largest UDP payload
	// of a 1500-byte path over IPv6 (and so over either family), and the
	// receive buffer that QUIC stacks and the relays built for them read
	// into (quic-go's MaxPacketBufferSize; QUIC's packets are sized to
	// fit it). Padding every datagram to the route's size instead (1472
	// on IPv4, 65,508 on loopback, then the peer's 1472) made every
	// sealed datagram 20 bytes too long for such a relay, which cut it,
	// and the session lost everything the application wrote, however
	// small (issue 25). What it costs: a datagram's length now tells
	// whether its natural length is above 1452, and nothing more.
	padSmall = 1452
)

// accept is the largest datagram this Conn receives without IP
// fragmentation, as it states it: its receive buffers (its MTU's IPv4
// datagram, at least 1472), less the byte that tells a datagram that did
// not fit.
func (c *Conn) accept() int { return c.bufSize - 1 }

// acceptWhole is the largest datagram this Conn receives at all: the UDP
// maximum on a socket that reads with UDP GRO (its 64 KiB buffers take any
// datagram whole, and one larger than a packet's buffer gets one of its
// own), accept otherwise.
func (c *Conn) acceptWhole() int {
	if c.sock.Load().Caps().GRO {
		return udpMaxDatagram
	}
	return c.accept()
}

// pathDatagram returns the largest datagram that reaches addr without IP
// fragmentation: Config.MTU's if set, else the route's MTU (loopback's on
// loopback), else the Conn's default.
func (c *Conn) pathDatagram(addr netip.AddrPort) int {
	if c.cfg.MTU != 0 {
		return c.datagram
	}
	mtu, ok := c.routes.mtu(addr)
	if !ok {
		return c.datagram
	}
	return min(datagramSize(min(mtu, MaxMTU), !addr.Addr().Unmap().Is4()), udpMaxDatagram)
}

// peerAcceptOr is what s's peer receives: what it said, or minAccept.
func (s *session) peerAcceptOr() int {
	if n := int(s.peerAccept.Load()); n > 0 {
		return n
	}
	return minAccept
}

// padTarget is the length PadMTU gives datagrams under s that do not fit
// padSmall (paddedSize).
func (c *Conn) padTarget(s *session) int {
	path := s.path
	if path == 0 {
		path = c.datagram
	}
	return min(path, s.peerAcceptOr())
}

// sendLimit is the largest datagram sent under s.
func (c *Conn) sendLimit(s *session) int {
	if c.cfg.StrictMTU {
		return c.padTarget(s)
	}
	whole := int(s.peerWhole.Load())
	return min(max(whole, s.peerAcceptOr()), udpMaxDatagram)
}

// paddedSize is the length of a sealed datagram whose natural length is
// n, padded by p towards target t without passing limit.
func (p Padding) paddedSize(n, t, limit int) int {
	switch {
	case p == PadMTU && n <= min(t, padSmall):
		return min(t, padSmall)
	case n <= t:
		return p.wireSize(n, t)
	case p == PadMTU:
		// Above the target: a multiple of it, so that the length says
		// little more than "large".
		return min((n+t-1)/t*t, limit)
	}
	return p.wireSize(n, limit)
}

// cutShort reports whether b, a sealed datagram under s that failed
// authentication, is the start of a longer sealed datagram that was cut
// short on the way, as a relay or middlebox reading into a smaller buffer
// cuts it (recvfrom drops what does not fit). head is the first 16 bytes
// of b's ciphertext as it came: the open that failed overwrote them. Two
// ways to tell, one ChaCha20 block each, on the failure path only:
//
//   - the envelope's start, decrypted without authenticating, is this
//     implementation's (map, "v" 3, then "p" or "c"), and its first field
//     alone runs past what arrived: the datagram is shorter than its own
//     header says. A random forgery decrypts to such a start with
//     probability about 2^-40.
//   - b ends inside the sender's padding (PROTOCOL.md 3.4: zeros at the
//     end of the envelope, so their ciphertext is the bare keystream): the
//     last 16 bytes, which open took for the tag and left as they came,
//     are the keystream at their offset under s's key and b's counter. A
//     forgery matches with probability 2^-128.
//
// A datagram cut within a few bytes after its payload, or inside a second
// field, is not recognised and counts as failed authentication. A
// datagram damaged on the way in its first field's length may show as cut,
// and anyone who saw a genuine datagram can make a forgery look cut (the
// cipher is malleable): the counter is a diagnostic, and nothing but the
// counter depends on it.
func (s *session) cutShort(b []byte, head *[16]byte) bool {
	return s.cutInHeader(b, head) || s.cutInPadding(b)
}

// keystream writes into dst the ChaCha20 keystream of s's receive key for
// counter from envelope offset off on (the AEAD encrypts the envelope from
// block 1; block 0 keys Poly1305). len(dst) is at most 16.
func (s *session) keystream(dst []byte, counter uint64, off int) bool {
	nonce := nonceFor(counter)
	ks, err := chacha20.NewUnauthenticatedCipher(s.recvKey[:], nonce[:])
	if err != nil {
		return false
	}
	ks.SetCounter(1 + uint32(off/64))
	var stream [64 + 16]byte
	k := off % 64
	ks.XORKeyStream(stream[:k+len(dst)], stream[:k+len(dst)])
	copy(dst, stream[k:])
	return true
}

// cutInHeader: see cutShort.
func (s *session) cutInHeader(b []byte, head *[16]byte) bool {
	if len(b) < sealedOverhead+8 {
		return false
	}
	var env [16]byte
	if !s.keystream(env[:], binary.BigEndian.Uint64(b[8:]), 0) {
		return false
	}
	for i := range env {
		env[i] ^= head[i]
	}
	// map header, then "v" 3 in one of the writer's three encodings.
	if env[0] < 0x81 || env[0] > 0x8f || env[1] != 0xa1 || env[2] != 'v' {
		return false
	}
	i := 3
	switch {
	case env[3] == 3:
		i += 1
	case env[3] == 0xcc && env[4] == 3:
		i += 2
	case env[3] == 0xcd && env[4] == 0 && env[5] == 3:
		i += 3
	default:
		return false
	}
	// The first field, "p" or "c", and its bin or ext header.
	if env[i] != 0xa1 || (env[i+1] != 'p' && env[i+1] != 'c') {
		return false
	}
	i += 2
	var n, hdr int
	switch env[i] {
	case 0xc4, 0xc7:
		n, hdr = int(env[i+1]), 2
	case 0xc5, 0xc8:
		n, hdr = int(binary.BigEndian.Uint16(env[i+1:])), 3
	case 0xc6, 0xc9:
		n, hdr = int(binary.BigEndian.Uint32(env[i+1:])), 5
	default:
		return false
	}
	if env[i] >= 0xc7 { // ext: the type byte follows the length
		hdr++
	}
	return sealedOverhead+i+hdr+n > len(b)
}

// cutInPadding: see cutShort.
func (s *session) cutInPadding(b []byte) bool {
	off := len(b) - sealedOverhead // the envelope offset of b's last 16 bytes
	if off < 0 {
		return false
	}
	var stream [16]byte
	if !s.keystream(stream[:], binary.BigEndian.Uint64(b[8:]), off) {
		return false
	}
	return subtle.ConstantTimeCompare(stream[:], b[len(b)-16:]) == 1
}

// appendParams appends the session parameters this Conn states.
func (c *Conn) appendParams(b []byte) []byte {
	b = binary.BigEndian.AppendUint16(append(b, extMaxDatagram, 2), uint16(min(c.accept(), 65535)))
	return binary.BigEndian.AppendUint16(append(b, extMaxReassembled, 2), uint16(min(c.acceptWhole(), 65535)))
}

// readParams reads session parameters from the peer into s. Unknown
// types are skipped; a parameter that runs past the end ends the list.
func readParams(s *session, b []byte) {
	for len(b) >= 2 {
		typ, n := b[0], int(b[1])
		if len(b) < 2+n {
			return
		}
		v := b[2 : 2+n]
		if n == 2 {
			m := int(binary.BigEndian.Uint16(v))
			switch {
			case typ == extMaxDatagram && m >= minAccept:
				s.peerAccept.Store(int32(m))
			case typ == extMaxReassembled && m >= minAccept:
				s.peerWhole.Store(int32(m))
			}
		}
		b = b[2+n:]
	}
}

// MaxPayloadTo returns the largest datagram WriteTo sends to addr now:
// what the peer receives (or, without a session yet, what every Conn
// receives), less vaultudp's overhead; with Config.StrictMTU, what fits
// the path MTU to it.
func (c *Conn) MaxPayloadTo(addr netip.AddrPort) int {
	if !c.ok() {
		return 0
	}
	addr = normAddr(addr)
	if p, _ := c.peerFor(addr, lookupOnly); p != nil {
		if s := p.kp.current(); s != nil {
			return maxPayloadFor(c.sendLimit(s))
		}
	}
	if c.cfg.StrictMTU {
		return maxPayloadFor(min(c.pathDatagram(addr), minAccept))
	}
	return maxPayloadFor(minAccept)
}

// queueLimit is the largest datagram that may wait for a handshake.
func (c *Conn) queueLimit() int {
	if c.cfg.StrictMTU {
		return maxPayloadFor(min(c.datagram, minAccept))
	}
	return maxPayloadFor(minAccept)
}

// recvBufSize is the size of receive (and seal) buffers: the largest
// datagram a peer with the same MTU sends, which is its IPv4 size even when
// this socket is IPv6 (a dual-stack peer pads to its own family's size), and
// never less than a default Ethernet path's. One spare byte tells a
// datagram that did not fit.
func recvBufSize(mtu int) int {
	return max(datagramSize(mtu, false), datagramSize(DefaultMTU, false)) + 1
}

// datagramSize is the largest UDP payload (the whole sealed datagram) that
// fits the MTU without fragmentation.
func datagramSize(mtu int, ipv6 bool) int {
	if ipv6 {
		return mtu - ipv6HeaderLen - udpHeaderLen
	}
	return mtu - ipv4HeaderLen - udpHeaderLen
}

// maxPayloadFor is the largest user datagram that seals into at most
// datagram bytes: the exact inverse of the sealed length arithmetic.
func maxPayloadFor(datagram int) int {
	room := datagram - sealedOverhead - envelopeFraming
	// A longer payload may need a wider bin header: step down at most
	// three times.
	n := room - 2
	for n >= 0 && n+binHeaderLen(n) > room {
		n--
	}
	return max(n, -1)
}

// Padding says how sealed datagrams are padded, to hide the length of
// what they carry. Padding bytes are zeros inside the encryption, so they
// are indistinguishable from data on the wire and cost nothing to make.
// Open (unencrypted) datagrams are never padded: there is nothing to hide.
type Padding int

const (
	// PadMTU, the zero value, pads every sealed datagram that fits in
	// 1452 bytes to 1452 (or to the path's size, if smaller), and a larger
	// one to the largest size the path MTU and the peer allow: sealed
	// datagrams have one of two lengths, and a relay or middlebox sized
	// for QUIC (1452-byte buffers) passes the first (README, "Datagram
	// sizes").
	PadMTU Padding = 0
	// PadNone sends sealed datagrams at their natural length.
	PadNone Padding = -1
)

// PadBlock pads every sealed datagram to a multiple of n bytes (but never
// past the MTU). n must be in [1, 65535].
func PadBlock(n int) Padding { return Padding(n) }

func (p Padding) String() string {
	switch {
	case p == PadMTU:
		return "mtu"
	case p == PadNone:
		return "none"
	case p > 0:
		return fmt.Sprintf("block(%d)", int(p))
	}
	return fmt.Sprintf("Padding(%d)", int(p))
}

func (p Padding) check() error {
	if p < PadNone || p > math.MaxUint16 {
		return fmt.Errorf("%w: padding %d: want PadMTU, PadNone or PadBlock(1..65535)", ErrInvalidConfig, int(p))
	}
	return nil
}

// wireSize is the length on the wire that a sealed datagram of natural
// length n (sealed overhead included) is padded to, for a maximum
// datagram size of max.
func (p Padding) wireSize(n, max int) int {
	switch {
	case p == PadMTU:
		return max
	case p > 0:
		b := int(p)
		return min((n+b-1)/b*b, max)
	}
	return n
}
