// Package vaultudp makes UDP private without changing the code that uses
// it: Listen returns a *Conn, an encrypting net.PacketConn, to hand to code
// that expects one (DNS servers, QUIC stacks, games, telemetry).
//
// # The Conn contract
//
// A *Conn behaves as a *net.UDPConn does. ReadFrom returns only datagrams
// that passed every check (authenticated, fresh, allowed by policy), as
// from the address their sender proved; anything else is dropped and
// counted in Stats, never returned as an error. WriteTo seals and sends at
// once when the peer has a session, and otherwise starts the handshake (one
// round trip) and queues the datagram; it fails only where a UDP socket
// would (closed, deadline passed, too large, bad address) or when the trust
// rules refused the peer's key (ErrPeerRejected). A datagram that cannot go
// for a passing reason is dropped and counted, as a full socket buffer drops
// it. Deadlines, Close and short reads are those of *net.UDPConn.
//
// # Trust and policies
//
// Each Conn has a long-term Ed25519 identity (Config.Identity). Whom it
// trusts is the caller's choice: a pinned key per peer (PeerConfig.PublicKey)
// stops a man in the middle; Config.VerifyPeer decides with a callback; with
// neither, any correctly signed key is accepted and remembered per address
// (trust on first use), which stops eavesdroppers and later impostors but not
// a man in the middle on the first exchange. Per peer, the policy
// (RequireEncryption, the default; Opportunistic; Plaintext) says whether
// plaintext may be sent or accepted.
//
// # Security model in brief
//
// Sessions come from protocol v4's handshake, the Noise pattern
// XXhfs+psk2 with X25519 and ML-KEM-768 (a hybrid, post-quantum key
// exchange; forward secrecy; both identities encrypted, each signed over a
// static key made for that handshake; an optional preshared key;
// downgrade-proof version negotiation); datagrams are sealed with
// ChaCha20-Poly1305, one key per direction, with a sliding replay window,
// and padded to the MTU by default. A datagram is delivered as from an
// address only if its sender is validated there; no address is sent more
// bytes than it sent until it has proved it receives; handshake floods meet
// cookies before any cryptography. Not protected: timing and volume,
// addresses, the responder's identity from whoever sends it a hello
// without the preshared key, authentication against a quantum attacker at
// handshake time, and anything against an attacker on the path who drops
// or delays packets. README.md's "Security
// model" lists every claim with the test that attacks it; PROTOCOL.md gives
// the wire format byte by byte.
package vaultudp
