package vaultudp

import "sync/atomic"

// Stats is a snapshot of a Conn's state and counters.
type Stats struct {
	ProtocolVersion int // the native protocol version, 4
	MTU             int // the default path MTU (Config.MTU, or the host's smallest interface MTU); per peer, the route's may be larger (loopback's is)
	MaxPayload      int // the largest datagram WriteTo accepts
	Peers           int // configured and learned peers
	Sessions        int // live sessions (current, previous and unconfirmed)

	DatagramsIn  uint64 // datagrams delivered to the application
	BytesIn      uint64 // their payload bytes
	DatagramsOut uint64 // datagrams the application wrote that were sent
	BytesOut     uint64 // their payload bytes
	AbovePathMTU uint64 // sealed datagrams sent larger than the path MTU to their peer: IP fragments them

	Handshakes        uint64 // sessions established (either role)
	Rekeys            uint64 // of which replaced a live session
	HandshakeFailures uint64 // initiations that timed out
	CookiesSent       uint64 // cookie replies sent under load
	Verifications     uint64 // hellos answered with the handshake's costly step (Noise message 2)
	Silences          uint64 // handshakes started because a peer went silent (Config.SilenceTimeout)
	KeepalivesSent    uint64 // empty sealed datagrams sent (Config.KeepaliveTimeout, PeerConfig.Keepalive)
	KeepalivesIn      uint64 // ... received
	ResetsSent        uint64 // stateless resets sent for sealed datagrams of unknown sessions
	ResetsReceived    uint64 // valid resets received: the peer had lost the session
	Resent            uint64 // datagrams sent again under the session that followed a reset, having been sealed within a round trip before it under the lost one (PROTOCOL.md 5.15); counted again in DatagramsOut when sent
	V2KeyExchanges    uint64 // key exchanges accepted from ProtocolV2 peers

	Drops Drops
}

// Drops counts datagrams dropped, by reason. None of them reached the
// application. Received ones are never returned as an error; of written
// ones, those dropped for a passing reason (WriteQueueFull, WriteBackoff,
// WritePeerLimit, SendFailed, HandshakeTimeout) are not either, while
// TooLarge also counts the writes refused with ErrMessageTooLarge.
type Drops struct {
	Malformed          uint64 // not a well-formed vaultudp datagram
	Replay             uint64 // a counter seen before or older than the window
	Auth               uint64 // failed authentication: tag, signature, key exchange
	Truncated          uint64 // sealed datagrams cut short on the way (a relay or middlebox reading into a smaller buffer): they end inside their own padding; not counted in Auth
	Policy             uint64 // refused by policy: plaintext where encryption is required, a downgrade
	Rejected           uint64 // handshakes from keys the trust rules refuse
	Stale              uint64 // handshake messages that answer no handshake in progress (late, repeated or replayed)
	PresharedKey       uint64 // replies that decrypted up to the preshared key and not after it (ErrPresharedKey)
	RateLimit          uint64 // over Config.RateLimit
	QueueFull          uint64 // the read queue was full
	TooLarge           uint64 // larger than the MTU allows, or inflating past MaxPayload
	UnknownSession     uint64 // a session index we do not have (expired, or never existed)
	HandshakeTimeout   uint64 // written datagrams dropped when their handshake failed
	PeerLimit          uint64 // handshakes refused because Config.MaxPeers was reached
	HandshakeQueueFull uint64 // handshake messages dropped because the handshake queue was full (a flood)
	HelloReplaced      uint64 // hellos dropped unanswered for a newer one from the same source (a retry) that took their place in the handshake queue
	CookieLimit        uint64 // hellos under load from a source past its budget: of cookie messages, or of hellos with a valid cookie (a flood)
	V2SendLimit        uint64 // written to ProtocolV2 peers but not sent: over the reference's 100 a second
	Unvalidated        uint64 // authentic, but from an address the peer has not proved: held for path validation and dropped when it failed, or another peer holds the address

	// Written by the application, not sent, and not returned as an
	// error (as a UDP socket drops what its full buffer cannot take):
	WriteQueueFull uint64 // the queue of datagrams waiting for a handshake was full
	WriteBackoff   uint64 // the last handshake with the peer failed less than HandshakeTimeout ago
	WritePeerLimit uint64 // a write to a new address while Config.MaxPeers learned peers exist
	SendFailed     uint64 // sealed and queued behind a streaming writer's earlier datagrams, then refused by the socket (the write had returned)
	EventsDropped  uint64 // events not given to Config.Events, or log records not given to the Logger: their queue was full (the callback or handler is slow)
}

// counters are the Conn's atomic counters behind Stats.
type counters struct {
	datagramsIn, bytesIn, datagramsOut, bytesOut       atomic.Uint64
	handshakes, rekeys, handshakeFailures, cookiesSent atomic.Uint64
	verifications                                      atomic.Uint64
	malformed, replay, auth, policy, rejected, stale   atomic.Uint64
	rateLimit, queueFull, tooLarge, unknownSession     atomic.Uint64
	dropHandshakeTimeout, peerLimit                    atomic.Uint64
	writeQueueFull, writeBackoff, writePeerLimit       atomic.Uint64
	sendFailed, truncated, eventsDropped               atomic.Uint64
	unvalidated, abovePathMTU                          atomic.Uint64
	silences, keepalivesSent, keepalivesReceived       atomic.Uint64
	handshakeQueueFull, helloReplaced                  atomic.Uint64
	cookieLimit                                        atomic.Uint64
	resetsSent, resetsReceived, resent                 atomic.Uint64
	pskMismatch                                        atomic.Uint64
}

// Stats returns a snapshot of the Conn's counters.
func (c *Conn) Stats() Stats {
	if !c.ok() {
		return Stats{}
	}
	peers := c.peers.count()
	sessions, _ := c.index.counts()
	k := &c.stats
	return Stats{
		ProtocolVersion:   ProtocolVersion,
		MTU:               c.mtu,
		MaxPayload:        c.maxPayload,
		Peers:             peers,
		Sessions:          sessions,
		DatagramsIn:       k.datagramsIn.Load(),
		BytesIn:           k.bytesIn.Load(),
		DatagramsOut:      k.datagramsOut.Load(),
		AbovePathMTU:      k.abovePathMTU.Load(),
		BytesOut:          k.bytesOut.Load(),
		Handshakes:        k.handshakes.Load(),
		Rekeys:            k.rekeys.Load(),
		HandshakeFailures: k.handshakeFailures.Load(),
		CookiesSent:       k.cookiesSent.Load(),
		Verifications:     k.verifications.Load(),
		Silences:          k.silences.Load(),
		KeepalivesSent:    k.keepalivesSent.Load(),
		KeepalivesIn:      k.keepalivesReceived.Load(),
		ResetsSent:        k.resetsSent.Load(),
		ResetsReceived:    k.resetsReceived.Load(),
		Resent:            k.resent.Load(),
		V2KeyExchanges:    c.v2.KeyExchanges(), // protocol v2 (proto_v2.go)
		Drops: Drops{
			Malformed:          k.malformed.Load(),
			Replay:             k.replay.Load(),
			Auth:               k.auth.Load(),
			Truncated:          k.truncated.Load(),
			Policy:             k.policy.Load(),
			Rejected:           k.rejected.Load(),
			Stale:              k.stale.Load(),
			PresharedKey:       k.pskMismatch.Load(),
			RateLimit:          k.rateLimit.Load(),
			QueueFull:          k.queueFull.Load(),
			TooLarge:           k.tooLarge.Load(),
			UnknownSession:     k.unknownSession.Load(),
			HandshakeTimeout:   k.dropHandshakeTimeout.Load(),
			PeerLimit:          k.peerLimit.Load(),
			HandshakeQueueFull: k.handshakeQueueFull.Load(),
			HelloReplaced:      k.helloReplaced.Load(),
			CookieLimit:        k.cookieLimit.Load(),
			Unvalidated:        k.unvalidated.Load(),
			WriteQueueFull:     k.writeQueueFull.Load(),
			WriteBackoff:       k.writeBackoff.Load(),
			WritePeerLimit:     k.writePeerLimit.Load(),
			SendFailed:         k.sendFailed.Load(),
			EventsDropped:      k.eventsDropped.Load(),
			V2SendLimit:        c.v2.SendLimited(),
		},
	}
}
