package vaultudp

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net/netip"
	"time"
)

// Policy says whether a peer's traffic must be encrypted.
type Policy int

const (
	// PolicyDefault, the zero value, takes the Conn's policy
	// (Config.Policy), which itself defaults to RequireEncryption.
	PolicyDefault Policy = iota
	// RequireEncryption never sends or accepts plaintext: datagrams wait
	// for the handshake, and open datagrams from the peer are dropped.
	RequireEncryption
	// Opportunistic sends plaintext until a session exists, then only
	// sealed datagrams. It accepts plaintext from the peer only until a
	// sealed datagram from it has been seen: after that, plaintext is a
	// downgrade attempt and is dropped. An attacker on the path can keep
	// a peer in plaintext by blocking its handshake: use it only where
	// that is acceptable.
	Opportunistic
	// Plaintext never encrypts: datagrams go out open and open datagrams
	// are accepted; handshakes from the peer are refused.
	Plaintext
)

func (p Policy) String() string {
	switch p {
	case PolicyDefault:
		return "default"
	case RequireEncryption:
		return "require-encryption"
	case Opportunistic:
		return "opportunistic"
	case Plaintext:
		return "plaintext"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// ParsePolicy parses the String form of a Policy.
func ParsePolicy(s string) (Policy, error) {
	for p := PolicyDefault; p <= Plaintext; p++ {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("%w: policy %q: want require-encryption, opportunistic or plaintext", ErrInvalidConfig, s)
}

// Protocol is the wire protocol spoken with a peer.
type Protocol int

const (
	// ProtocolNative, the zero value, is vaultudp's native protocol
	// (PROTOCOL.md): version 4 since the hybrid, identity-hiding
	// handshake.
	ProtocolNative Protocol = 0
	// ProtocolV3 is the old name of ProtocolNative. Version 3's
	// handshake is gone: a peer configured with it speaks version 4.
	ProtocolV3 = ProtocolNative
	// ProtocolV2 is the Python reference's format, for interoperation
	// with py-vault-udp peers. It is weaker than v3 and never chosen
	// automatically.
	ProtocolV2 Protocol = 2
)

// Config configures a Conn. The zero value (and a nil *Config) is valid:
// every field documents its default.
type Config struct {
	// Identity is the Conn's long-term Ed25519 key. nil: a fresh key for
	// this Conn (peers that pin keys then cannot pin it in advance).
	Identity ed25519.PrivateKey

	// Policy applies to peers whose PeerConfig.Policy is PolicyDefault
	// and to peers not configured. Zero: RequireEncryption.
	Policy Policy

	// Peers are added when the Conn starts, as by AddPeer.
	Peers []PeerConfig

	// VerifyPeer decides whether to trust a peer whose key is not pinned
	// in its PeerConfig. A nil error accepts. nil VerifyPeer: any
	// correctly signed key is accepted and remembered for the address
	// (trust on first use); another key from that address is then
	// refused until the peer is removed. An unpinned key protects against
	// eavesdroppers, not against a man in the middle on the first
	// exchange. It runs on a goroutine of its own with no lock of the
	// Conn held: it may call any method of the Conn, Close included.
	VerifyPeer func(addr netip.AddrPort, key ed25519.PublicKey) error

	// KeyLifetime is the age after which a session is renewed by a new
	// handshake; a session is refused at 1.5 times this age. Zero: 120 s.
	KeyLifetime time.Duration

	// HandshakeTimeout is how long a handshake may take, retries
	// included, before datagrams waiting for it are dropped (and
	// counted) and Handshake fails with ErrHandshakeTimeout; writes in
	// the same time after the failure are dropped and counted too. Zero:
	// 5 s.
	HandshakeTimeout time.Duration

	// KeepaliveTimeout: when a peer has sent the application a datagram
	// and the application sends it nothing back within KeepaliveTimeout,
	// the Conn sends it an empty sealed datagram, so that the peer knows
	// the session still works (a passive keepalive, as WireGuard's
	// 10 s). Zero: DefaultKeepaliveTimeout. Negative: never.
	KeepaliveTimeout time.Duration

	// SilenceTimeout: when the Conn has sent a peer sealed datagrams and
	// received nothing authenticated from it for SilenceTimeout, it starts
	// a new handshake, while the session goes on: the peer may have
	// restarted, or lost its state. A peer that only receives answers
	// with passive keepalives, so a live peer is not disturbed. Zero:
	// KeepaliveTimeout + HandshakeTimeout (15 s by default, as
	// WireGuard's). Negative: never.
	SilenceTimeout time.Duration

	// FreshnessWindow is ignored: version 4's handshake carries no
	// clock reading (a replayed hello creates nothing usable,
	// PROTOCOL.md 9.9). Kept so that configurations that set it still
	// compile.
	FreshnessWindow time.Duration

	// PresharedKey, if set, is mixed into every handshake's keys (the
	// Noise psk modifier, as WireGuard's PresharedKey) with a peer that
	// has no PeerConfig.PresharedKey of its own: both sides must hold
	// the same key, or the handshake fails (ErrPresharedKey at the side
	// that dialed; the other cannot tell and sees nothing). As
	// responder, the Conn picks the key by the hello's source address:
	// the configured peer's there, else this one. nil: none (32 zero
	// bytes, which a peer without a key uses too).
	PresharedKey *[32]byte

	// RateLimit is the number of datagrams per second accepted from each
	// peer (a token bucket with a burst of RateBurst); the excess is
	// dropped and counted. Zero: unlimited.
	RateLimit float64

	// RateBurst is the token bucket's size. Zero: RateLimit rounded up
	// (one second's worth), and at least 1.
	RateBurst int

	// Padding pads sealed datagrams to hide their length. Zero: PadMTU,
	// which pads what fits in 1452 bytes to 1452, and the rest to the
	// path's size (PROTOCOL.md section 6).
	Padding Padding

	// Compression says when payloads are zstd-compressed. Zero:
	// CompressAuto.
	Compression Compression

	// MTU is the path MTU in bytes, in [MinMTU, MaxMTU], for every peer.
	// Zero: per peer, the MTU of the route to it (loopback's on
	// loopback); MaxPayload and the receive buffers use the smallest MTU
	// of the host's up, non-loopback interfaces, or DefaultMTU when there
	// is none. The two ends need not agree: each tells the other the
	// largest datagram it receives, and padding follows the smaller.
	MTU int

	// StrictMTU refuses writes that do not fit the path MTU to the peer
	// (with an error matching ErrMessageTooLarge and syscall.EMSGSIZE),
	// for programs that size their own datagrams and want to know. false:
	// a larger datagram is sent, up to what the peer receives, and IP
	// fragments it, as it does a *net.UDPConn's (Stats.AbovePathMTU
	// counts them).
	StrictMTU bool

	// ReadQueue is the number of received datagrams that wait for
	// ReadFrom; when it is full, further datagrams are dropped and
	// counted, as a full socket buffer does. Zero: 1024.
	ReadQueue int

	// MaxPeers bounds the peers learned from the network (handshakes and
	// writes to unconfigured addresses); configured peers do not count.
	// Zero: 10,000.
	MaxPeers int

	// CookieThreshold is the number of hellos per second above which the
	// Conn requires cookies before verifying signatures. Zero:
	// DefaultCookieThreshold.
	CookieThreshold int

	// Logger receives the Conn's events (peers up, down, refused, failed,
	// roamed, reset: Info and Warn) and diagnostics (Debug), never one
	// per datagram above Debug. Its handler is called on a goroutine of
	// the Conn's own, in order, with no lock held, so it may call any
	// method of the Conn, Close included; only its Enabled runs where the
	// Conn logs. Records logged before Close reach the handler before
	// Close returns (unless Close is called from the handler itself, or
	// the handler blocks for more than a second: then after).
	// Records beyond a queue of 256 (a slow handler) are dropped and
	// counted (Stats.Drops.EventsDropped). nil: no logging.
	Logger *slog.Logger

	// Events, if set, is called for each Event (a peer up, down, refused,
	// failed, roamed, reset or forgotten), in order, on a goroutine of
	// the Conn's own and with no lock held: it may call any method of the
	// Conn, Close included (Close then does not wait for the callback to
	// return). Events queued before Close reach it before Close returns,
	// unless it blocks for more than a second (then after). Events wait
	// for it in a queue of 256; when that is full,
	// further ones are dropped and counted (Stats.Drops.EventsDropped).
	// nil: none.
	Events func(Event)

	// V2BoxPrivateKey and V2SigningKey are the static keys spoken to
	// ProtocolV2 peers (the Python reference's enc_private, as 32 raw
	// bytes, and its signing key), for a Conn that must keep keys a
	// reference deployment already knows. nil V2SigningKey: Identity.
	// nil V2BoxPrivateKey: derived from the signing key (the Ed25519 to
	// X25519 conversion of libsodium), so one key file serves both
	// protocols. Unused when no peer speaks ProtocolV2.
	V2BoxPrivateKey []byte
	V2SigningKey    ed25519.PrivateKey

	// V2KeyProbe makes the Conn ask a ProtocolV2 peer whose box key it
	// does not know for its key exchange at once, instead of waiting up
	// to 20 s for the reference's periodic one. Its cost: a reference
	// that already holds this Conn's keys then sends to it in plaintext
	// until its next periodic key exchange (README, "Talking to Python
	// peers"). false: wait. PeerConfig.BoxKey makes both unnecessary.
	V2KeyProbe bool

	// now is the wall clock; tests replace it. nil: time.Now.
	now func() time.Time
	// clock is every timed rule's clock (clock.go); tests replace it.
	// nil: the system's, with now as its wall clock.
	clock clock
	// interfaces lists interfaces for MTU discovery; nil: the system's.
	interfaces interfaceLister
}

// PeerConfig describes a peer.
type PeerConfig struct {
	// Addr is the peer's address. An IPv4-mapped IPv6 address is the
	// same peer as its IPv4 address.
	Addr netip.AddrPort

	// PublicKey pins the peer's identity: a handshake with any other key
	// is refused. nil: Config.VerifyPeer decides.
	PublicKey ed25519.PublicKey

	// Policy overrides Config.Policy for this peer. Zero: Config.Policy.
	Policy Policy

	// Keepalive, if positive, sends the peer an empty sealed datagram
	// whenever nothing was sent to it for that long (a persistent
	// keepalive, as WireGuard's PersistentKeepalive), to keep the mapping
	// of a NAT or stateful firewall between the two open; NATs often
	// forget an idle UDP flow after 30 s, so 25 s suits most. Zero: off.
	Keepalive time.Duration

	// PresharedKey overrides Config.PresharedKey for this peer, as
	// initiator and for hellos from Addr. nil: Config.PresharedKey.
	PresharedKey *[32]byte

	// Protocol is the wire protocol spoken with this peer. Zero:
	// ProtocolNative. ProtocolV2 speaks the Python reference's format to an
	// IPv4 peer (see README, "Migrating from py-vault-udp"); for such a
	// peer PublicKey pins the reference's Ed25519 sign_key, and
	// Config.VerifyPeer, when set, is given that sign_key.
	Protocol Protocol

	// BoxKey, for a ProtocolV2 peer only, is the reference's X25519
	// public key (its enc_key, 32 raw bytes) when known out of band: it
	// is pinned (a key exchange carrying another is refused), and the
	// Conn sends sealed at once instead of waiting to learn it. nil:
	// learned from the peer's key exchange.
	BoxKey []byte
}

// Defaults of the Config fields.
const (
	DefaultKeyLifetime      = 120 * time.Second
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultFreshnessWindow  = 60 * time.Second
	DefaultReadQueue        = 1024
	DefaultMaxPeers         = 10000
	DefaultKeepaliveTimeout = 10 * time.Second
)

// resolve returns a copy of c with every default filled in, or an error
// naming the first field out of range.
func (c *Config) resolve() (Config, error) {
	var r Config
	if c != nil {
		r = *c
		r.Peers = append([]PeerConfig(nil), c.Peers...)
	}
	if r.Identity == nil {
		r.Identity = GenerateIdentity()
	} else if len(r.Identity) != ed25519.PrivateKeySize {
		return r, fmt.Errorf("%w: Identity of %d bytes, want %d", ErrInvalidConfig, len(r.Identity), ed25519.PrivateKeySize)
	}
	if r.Policy == PolicyDefault {
		r.Policy = RequireEncryption
	}
	if r.Policy < PolicyDefault || r.Policy > Plaintext {
		return r, fmt.Errorf("%w: Policy %d", ErrInvalidConfig, int(r.Policy))
	}
	durations := []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"KeyLifetime", &r.KeyLifetime, DefaultKeyLifetime},
		{"HandshakeTimeout", &r.HandshakeTimeout, DefaultHandshakeTimeout},
		{"FreshnessWindow", &r.FreshnessWindow, DefaultFreshnessWindow},
	}
	for _, f := range durations {
		if *f.d < 0 {
			return r, fmt.Errorf("%w: %s %v is negative", ErrInvalidConfig, f.name, *f.d)
		}
		if *f.d == 0 {
			*f.d = f.def
		}
	}
	if r.KeepaliveTimeout == 0 {
		r.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if r.SilenceTimeout == 0 {
		r.SilenceTimeout = max(r.KeepaliveTimeout, 0) + r.HandshakeTimeout
	}
	if r.RateLimit < 0 || r.RateBurst < 0 {
		return r, fmt.Errorf("%w: RateLimit %v, RateBurst %d: want >= 0", ErrInvalidConfig, r.RateLimit, r.RateBurst)
	}
	if r.RateLimit > 0 && r.RateBurst == 0 {
		r.RateBurst = max(1, int(r.RateLimit+0.999999))
	}
	if err := r.Padding.check(); err != nil {
		return r, err
	}
	if r.Compression < CompressAuto || r.Compression > CompressAlways {
		return r, fmt.Errorf("%w: Compression %d", ErrInvalidConfig, int(r.Compression))
	}
	if err := checkMTU(r.MTU); err != nil {
		return r, err
	}
	ints := []struct {
		name string
		v    *int
		def  int
	}{
		{"ReadQueue", &r.ReadQueue, DefaultReadQueue},
		{"MaxPeers", &r.MaxPeers, DefaultMaxPeers},
		{"CookieThreshold", &r.CookieThreshold, DefaultCookieThreshold},
	}
	for _, f := range ints {
		if *f.v < 0 {
			return r, fmt.Errorf("%w: %s %d is negative", ErrInvalidConfig, f.name, *f.v)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.clock == nil {
		r.clock = sysClock{start: time.Now(), wallNow: r.now}
	} else {
		r.now = r.clock.wall
	}
	if r.interfaces == nil {
		r.interfaces = systemInterfaces
	}
	return r, nil
}

// check validates a PeerConfig.
func (p *PeerConfig) check() error {
	if !p.Addr.IsValid() || p.Addr.Port() == 0 {
		return fmt.Errorf("%w: peer address %v: want an IP and a non-zero port", ErrInvalidConfig, p.Addr)
	}
	if p.PublicKey != nil && len(p.PublicKey) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: peer %v: PublicKey of %d bytes, want %d", ErrInvalidConfig, p.Addr, len(p.PublicKey), ed25519.PublicKeySize)
	}
	if p.Policy < PolicyDefault || p.Policy > Plaintext {
		return fmt.Errorf("%w: peer %v: Policy %d", ErrInvalidConfig, p.Addr, int(p.Policy))
	}
	if p.Keepalive < 0 {
		return fmt.Errorf("%w: peer %v: Keepalive %v is negative", ErrInvalidConfig, p.Addr, p.Keepalive)
	}
	switch p.Protocol {
	case ProtocolNative:
	case ProtocolV2:
		// Protocol v2 (proto_v2.go): the reference's sockets are IPv4 only.
		if !p.Addr.Addr().Unmap().Is4() {
			return fmt.Errorf("%w: peer %v: ProtocolV2 peers are IPv4 only", ErrInvalidConfig, p.Addr)
		}
	default:
		return fmt.Errorf("%w: peer %v: Protocol %d", ErrInvalidConfig, p.Addr, int(p.Protocol))
	}
	if p.BoxKey != nil && (p.Protocol != ProtocolV2 || len(p.BoxKey) != 32) {
		return fmt.Errorf("%w: peer %v: BoxKey of %d bytes: want 32, and ProtocolV2", ErrInvalidConfig, p.Addr, len(p.BoxKey))
	}
	return nil
}

// normAddr is the key of a peer: IPv4-mapped addresses unmapped, zones
// kept.
func normAddr(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
