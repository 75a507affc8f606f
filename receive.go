package vaultudp

import (
	"errors"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// Receive processing: one datagram, from the socket's bytes to the read
// queue. receive sorts it by type; a sealed one is found by its session
// index, opened and parsed (receiveSealed), its path checked (path.go),
// and its payload handed to the application (deliver, queueRead).
// Handshake messages leave for the handshake queue (handshake_queue.go),
// resets for reset.go, datagrams of protocol v2 for proto_v2.go.

// receive handles one datagram. It returns true if it kept p (queued it
// for ReadFrom).
func (c *Conn) receive(p *packet) bool {
	b := p.data
	if p.truncated {
		c.stats.tooLarge.Add(1)
		return false
	}
	if p.pre.s != nil {
		// Decrypted ahead, in place: the checks that sent it there
		// passed (openAhead), and it is not what came any more.
		return c.receiveSealed(p)
	}
	if len(b) < openHeaderLen || b[0] != ProtocolVersion || c.notNativeAddr(p.from) {
		return c.notNative(p, &c.stats.malformed)
	}
	switch b[1] {
	case typeSealed:
		return c.receiveSealed(p)
	case typeOpen:
		return c.receiveOpen(p)
	case typeReset:
		if len(b) == resetLen { // never a v2 datagram's length (64 bytes or more)
			c.receiveReset(p) // reset.go
			return false
		}
	case typeHello, typeReply, typeFinal:
		// Raw datagrams, not envelopes: off the data path
		// (handshake_queue.go). Their own checks refuse what is not
		// one (a v2 datagram that starts alike is then lost).
		c.queueHandshake(b, p.from, p.local)
		return false
	case typeCookie:
		if len(b) == noise.CookieMsgLen {
			c.handleCookie(b, p.from)
			return false
		}
	}
	return c.notNative(p, &c.stats.malformed)
}

// receiveSealed handles a sealed datagram: opened here, or, when p.pre is
// set, decrypted ahead by an open worker, whose result it takes in the
// datagram's turn (the replay window sees the counters in the order read,
// as wireguard-go's sequential receiver does after parallel decryption).
func (c *Conn) receiveSealed(p *packet) bool {
	var (
		env  []byte
		err  error
		head [16]byte // for cutShort: a failed open overwrites the datagram
	)
	now := c.now()
	s := p.pre.s
	if s != nil {
		if idx := s.localIndex; c.index.lookup(idx) != s {
			// Retired by a datagram handled since the worker looked
			// (one of the same read): what the reader would have found
			// had it opened this one itself. It is no longer what came
			// (decrypted in place), so not protocol v2's either.
			c.stats.unknownSession.Add(1)
			c.sendReset(idx, p.from, p.local)
			return false
		}
		if !c.receivable(s, now) {
			c.stats.unknownSession.Add(1) // expired since the worker looked
			return false
		}
		env, err, head = p.pre.env, p.pre.err, p.pre.head
		if err == nil && !s.accept(p.pre.counter) {
			err = errReplay
		}
	} else {
		idx, ok := sealedIndex(p.data)
		if !ok {
			return c.notNative(p, &c.stats.malformed)
		}
		s = c.index.lookup(idx) // keypairs.go: no lock
		if s == nil {
			if c.receiveOther(p) { // protocol v2 (proto_v2.go)
				return false
			}
			if kept, ours := c.holdForResponse(idx, p); ours {
				return kept // handshake_responder.go: its final message is on its way
			}
			c.stats.unknownSession.Add(1)
			c.sendReset(idx, p.from, p.local) // reset.go: we may have restarted
			return false
		}
		if !c.receivable(s, now) {
			return c.notNative(p, &c.stats.unknownSession)
		}
		copy(head[:], p.data[sealedHeaderLen:])
		env, err = s.open(p.data)
	}
	switch {
	case errors.Is(err, errReplay):
		c.stats.replay.Add(1)
		return false
	case err != nil && s.cutShort(p.data, &head): // sizes.go
		c.stats.truncated.Add(1)
		return false
	case err != nil:
		c.stats.auth.Add(1) // open decrypted in place: p is no longer what came
		return false
	}
	rec, err := parseRecord(env)
	if err != nil {
		// Authentic but malformed: a peer's bug, not an attack.
		c.stats.malformed.Add(1)
		return false
	}
	pr := s.peer
	if !pr.seenSealed.Load() {
		pr.seenSealed.Store(true)
	}
	if s.final.Load() != nil {
		// The responder confirmed our final message: it is not sent
		// again (timers.go), and Handshake may return.
		pr.mu.Lock()
		if s.final.Swap(nil) != nil {
			pr.notifyLocked()
		}
		pr.mu.Unlock()
	}
	to := *pr.at.Load()
	validated := to == p.from
	if validated {
		if pr.lastSeen.Load() != now {
			pr.lastSeen.Store(now)
		}
		c.markReceived(pr, rec.hasPayload)
		pr.setLocal(p.local) // answers leave from where it arrived
	}
	if rec.control != nil {
		c.handleSealedControl(pr, s, rec.control, p.from)
	}
	if !validated {
		return c.onNewPath(pr, s, p, &rec) // path.go
	}
	if !rec.hasPayload {
		if rec.control == nil {
			c.stats.keepalivesReceived.Add(1)
		}
		return false // a keepalive: it confirmed the session, nothing to deliver
	}
	return c.deliver(p, pr, &rec)
}

// deliver queues the payload of rec (from p.data) for ReadFrom,
// decompressing it into a new packet if it is compressed. It returns true
// if it kept p.
func (c *Conn) deliver(p *packet, pr *peer, rec *record) bool {
	q, kept, ok := c.payloadPacket(p, pr, rec)
	if !ok {
		return false
	}
	if c.queueRead(q, pr) {
		return kept
	}
	if !kept {
		c.putPacket(q)
	}
	return false
}

// payloadPacket applies the peer's rate limit and returns the packet that
// holds rec's payload as the application will read it: p itself, or a new
// packet with the payload decompressed (kept is then false). ok is false
// if the datagram is dropped (and counted).
func (c *Conn) payloadPacket(p *packet, pr *peer, rec *record) (q *packet, kept, ok bool) {
	if pr != nil && pr.limiter != nil && !pr.limiter.Allow() {
		c.stats.rateLimit.Add(1)
		return nil, false, false
	}
	if !rec.compressed {
		p.data = rec.payload
		return p, true, true
	}
	q = c.getPacket()
	out, err := c.z.decompress(q.buf, rec.payload)
	if err != nil {
		c.putPacket(q)
		if errors.Is(err, errTooLarge) {
			c.stats.tooLarge.Add(1)
		} else {
			c.stats.malformed.Add(1)
		}
		return nil, false, false
	}
	q.data, q.from = out, p.from
	return q, false, true
}

// queueRead hands q to ReadFrom, counting it, or drops it (and counts
// that) if the read queue is full. It reports whether q was queued.
func (c *Conn) queueRead(q *packet, pr *peer) bool {
	// Count before queueing: once queued, q belongs to the reader, and
	// ReadFrom may return it before this goroutine runs again; Stats must
	// not lag behind what the application has read. A full queue takes
	// the count back.
	n := uint64(len(q.data))
	c.stats.datagramsIn.Add(1)
	c.stats.bytesIn.Add(n)
	if pr != nil {
		pr.datagramsIn.Add(1)
		pr.bytesIn.Add(n)
	}
	queued := false
	if pq := pr.connToQueue(); pq != nil {
		queued = c.toPeerQueue(pr, pq, q) // a net.Conn from ConnTo reads this peer (dial.go)
	} else {
		select {
		case c.recvQ <- q:
			queued = true
		default:
		}
	}
	if queued {
		return true
	}
	c.stats.datagramsIn.Add(^uint64(0))
	c.stats.bytesIn.Add(-n)
	if pr != nil {
		pr.datagramsIn.Add(^uint64(0))
		pr.bytesIn.Add(-n)
	}
	c.stats.queueFull.Add(1)
	return false
}

// policyFor returns the policy for datagrams from p (nil: a stranger).
func (c *Conn) policyFor(p *peer) Policy {
	if p == nil {
		return c.cfg.Policy
	}
	return p.policy()
}

func (c *Conn) receiveOpen(p *packet) bool {
	rec, err := parseRecord(p.data[openHeaderLen:])
	if err != nil {
		return c.notNative(p, &c.stats.malformed)
	}
	if rec.control != nil {
		// Handshakes travel in datagrams of their own since version 4:
		// an open envelope carries no control message.
		c.stats.malformed.Add(1)
		return false
	}
	if !rec.hasPayload {
		return false
	}
	pr, _ := c.peerFor(p.from, lookupOnly)
	switch c.policyFor(pr) {
	case RequireEncryption:
		c.stats.policy.Add(1)
		return false
	case Opportunistic:
		if pr != nil && pr.seenSealed.Load() {
			c.stats.policy.Add(1) // a downgrade: this peer has spoken sealed
			return false
		}
	}
	if pr == nil {
		// Plaintext from a new address under a permissive policy: it
		// becomes a learned peer, so that rate limits apply to it.
		if pr, err = c.peerFor(p.from, originPlaintext); err != nil {
			c.stats.peerLimit.Add(1)
			return false
		}
	}
	pr.mu.Lock()
	pr.lastSeen.Store(c.now())
	if !pr.established {
		pr.credit += len(p.data) // what the Conn may send of its own accord (mayInitiateLocked)
	}
	pr.mu.Unlock()
	return c.deliver(p, pr, &rec)
}

// receivable reports whether s still takes datagrams (receiveLimit): the one
// rule, for datagrams opened here and those opened ahead by a worker.
func (c *Conn) receivable(s *session, now int64) bool {
	return time.Duration(now-s.created) < c.receiveLimit()
}
