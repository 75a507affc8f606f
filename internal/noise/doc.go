// Package noise is vaultudp's protocol v4 handshake: the Noise pattern
// XXhfs+psk2 with X25519 and ML-KEM-768 (the protocol name is
// ProtocolName), written against the standard library (crypto/ecdh,
// crypto/mlkem, crypto/sha256, crypto/hmac) and x/crypto's
// ChaCha20-Poly1305, and the handshake datagrams that carry it
// (PROTOCOL.md, section 9, gives every byte).
//
// The package has two layers. The lower one is Noise's own objects,
// named as in the specification (revision 34) so that the two can be
// read side by side: CipherState, SymmetricState (MixKey, MixHash,
// MixKeyAndHash, EncryptAndHash, DecryptAndHash, Split) and
// HandshakeState, which runs a message pattern of the tokens e, e1
// (hfs: the initiator's ephemeral ML-KEM key), ee, ekem1 (hfs: the
// responder's encapsulation to it, whose secret is mixed into the
// chaining key), s, es, se and psk. The upper one maps the three Noise
// messages onto vaultudp's three flights (hello, reply, and the
// initiator's final message, which may carry its first sealed datagram)
// and carries, encrypted, what Noise leaves to the application: each
// side's Ed25519 identity, signed over its Noise static key as libp2p's
// Noise handshake does, and its session parameters.
//
// The package is called noise, not after the protocol version, because
// most of it is the Noise framework, testable on its own (its XX and
// XXpsk2 messages were checked against flynn/noise's byte for byte while
// it was written; the committed tests check the v4 vectors against a
// second, straight-line implementation); the vaultudp framing is one
// file on top.
//
// Nothing here touches the network, a clock or a lock: the Conn calls
// NewInitiation, ReadReply and WriteFinal as initiator, ParseHello,
// Respond, ParseFinal and ReadFinal as responder, and applies its trust
// rules, cookies and timers around them. Errors for received bytes wrap
// the sentinels of internal/errs, so the Conn counts them by reason.
package noise
