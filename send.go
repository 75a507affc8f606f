package vaultudp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"
)

// sendData sends a user datagram to p at to: sealed under s, or open if s
// is nil. wd is the writer's deadline (nil: none, for what the Conn sends
// by itself), which bounds a wait for room in the send queue.
func (c *Conn) sendData(p *peer, s *session, to netip.AddrPort, b []byte, wd *deadline) error {
	var err error
	if s != nil {
		err = c.sendSealed(s, to, b, true, wd)
	} else {
		err = c.sendOpen(to, &record{payload: b, hasPayload: true})
	}
	if err == nil {
		c.countSent(p, len(b))
	}
	return err
}

// countSent counts a user datagram of n bytes written to p: the one place
// WriteTo, WriteBatch and Broadcast count what they send.
func (c *Conn) countSent(p *peer, n int) {
	c.stats.datagramsOut.Add(1)
	c.stats.bytesOut.Add(uint64(n))
	p.datagramsOut.Add(1)
	p.bytesOut.Add(uint64(n))
}

// compressing reports whether payloads are worth trying to compress.
func (c *Conn) compressing() bool {
	if c.maxPayload < minCompressMaxPayload {
		return false // the bounded decoder refuses frames on paths this small
	}
	switch c.cfg.Compression {
	case CompressAlways:
		return true
	case CompressAuto:
		return c.cfg.Padding != PadMTU
	}
	return false
}

// sendSealed seals an envelope carrying b (if hasPayload; a keepalive
// otherwise) under s, padded as the Config says, and sends it under the
// write deadline wd (nil: none).
func (c *Conn) sendSealed(s *session, to netip.AddrPort, b []byte, hasPayload bool, wd *deadline) error {
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	out, err := c.appendSealed((*bp)[:0], s, b, hasPayload)
	if err != nil {
		return err
	}
	return c.transmit(out, to, s.source(), wd) // sendqueue.go
}

// appendSealed appends to dst the sealed datagram carrying b. dst must
// have room for bufSize+tagLen more bytes, or the result is a new slice.
func (c *Conn) appendSealed(dst []byte, s *session, b []byte, hasPayload bool) ([]byte, error) {
	rec := record{payload: b, hasPayload: hasPayload}
	if hasPayload && len(b) >= minCompressLen && c.compressing() && s.zskip().try() {
		zp := c.bufs.Get().(*[]byte)
		defer c.bufs.Put(zp)
		z := c.z.compress((*zp)[:0], b)
		shrank := len(z)+extHeaderLen(len(z)) < len(b)+binHeaderLen(len(b))
		if shrank {
			rec.payload, rec.compressed = z, true
		}
		s.zskip().result(shrank)
	}
	out, err := c.appendSealedRecord(dst, s, &rec, true)
	if tl, ok := err.(*tooLargeError); ok {
		tl.n = len(b) // the caller's datagram, not what it compressed to
	}
	if err == nil && hasPayload {
		c.keepSent(s, b) // resend.go: what a restart of the peer would lose
	}
	return out, err
}

// zskip is the compression heuristic of s's peer, nil for a session with
// none (tests).
func (s *session) zskip() *compressSkip {
	if s.peer == nil {
		return nil
	}
	return &s.peer.zskip
}

// appendSealedRecord appends to dst rec sealed under s, padded as the
// Config says if pad is set.
func (c *Conn) appendSealedRecord(dst []byte, s *session, rec *record, pad bool) ([]byte, error) {
	size := rec.envelopeLen()
	limit := c.sendLimit(s)
	if natural := sealedOverhead + size; natural > limit {
		c.stats.tooLarge.Add(1)
		return dst, &tooLargeError{n: len(rec.payload), max: maxPayloadFor(limit)}
	} else if pad {
		size = c.cfg.Padding.paddedSize(natural, c.padTarget(s), limit) - sealedOverhead
	}
	if s.path != 0 && sealedOverhead+size > s.path {
		c.stats.abovePathMTU.Add(1)
	}
	off := len(dst)
	var hdr [sealedHeaderLen]byte
	dst = rec.appendTo(append(dst, hdr[:]...), size)
	out, err := s.seal(dst[off:])
	if err != nil {
		return dst[:off], err
	}
	if s.peer != nil {
		c.markSent(s.peer)
	}
	return append(dst[:off], out...), nil // no copy when out is in place
}

// sendSealedRecord seals rec under s and sends it to to: the Conn's own
// control datagrams, under no write deadline.
func (c *Conn) sendSealedRecord(s *session, to netip.AddrPort, rec *record, pad bool) error {
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	out, err := c.appendSealedRecord((*bp)[:0], s, rec, pad)
	if err != nil {
		return err
	}
	return c.transmit(out, to, s.source(), nil) // sendqueue.go
}

// sendOpen sends an open (unencrypted) envelope. Open datagrams are not
// padded: there is nothing to hide.
func (c *Conn) sendOpen(to netip.AddrPort, rec *record) error {
	return c.sendOpenFrom(to, netip.Addr{}, rec)
}

// sendOpenFrom is sendOpen from the local address src (see
// udpio.Socket.WriteTo; the zero Addr: the system's choice).
func (c *Conn) sendOpenFrom(to netip.AddrPort, src netip.Addr, rec *record) error {
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	buf := append((*bp)[:0], ProtocolVersion, typeOpen)
	buf = rec.appendTo(buf, 0)
	return c.sock.Load().WriteTo(buf, to, src)
}

// sendRawFrom sends a handshake datagram (hello, reply, final, cookie),
// which is no envelope, from the local address src (the zero Addr: the
// system's choice).
func (c *Conn) sendRawFrom(to netip.AddrPort, src netip.Addr, b []byte) {
	if err := c.sock.Load().WriteTo(b, to, src); err != nil {
		c.log.Debug("vaultudp: sending handshake message", "peer", to, "err", err)
	}
}

// send is the write path: seal under the peer's session, or queue and
// start the handshake, or send in clear where the policy says so.
//
// It follows *net.UDPConn's contract: it fails only where a UDP socket
// would (closed, deadline passed, too large, bad address) or for a refusal
// that lasts (the trust rules refused the peer's key). A datagram that
// cannot go for a passing reason (the handshake queue is full, the last
// handshake failed a moment ago, the peer table is full) is dropped and
// counted in Stats.Drops, as a full socket buffer drops it.
//
// wd is the writer's deadline: the Conn's, or a ConnTo net.Conn's.
func (c *Conn) send(b []byte, addr netip.AddrPort, wd *deadline) error {
	if c.isClosed() {
		return ErrClosed
	}
	if isClosed(wd.wait()) {
		return os.ErrDeadlineExceeded
	}
	if pp := c.protoAt(addr); pp != nil {
		return pp.send(b) // protocol v2 (proto_v2.go): the same size limit, its own path
	}
	if max := maxPayloadFor(udpMaxDatagram); len(b) > max {
		c.stats.tooLarge.Add(1)
		return &tooLargeError{n: len(b), max: max}
	}
	if !addr.IsValid() || addr.Port() == 0 {
		return &net.AddrError{Err: "invalid destination", Addr: addr.String()}
	}
	if c.isSelf(addr) {
		return c.sendSelf(b, addr)
	}
	p, err := c.peerFor(addr, originWrite)
	if err != nil {
		c.stats.writePeerLimit.Add(1) // MaxPeers learned peers: until one is forgotten
		return nil
	}
	if p.policy() == Plaintext {
		if now := c.now(); p.lastSeen.Load() != now {
			p.lastSeen.Store(now)
		}
		return c.sendData(p, nil, addr, b, wd)
	}
	s, to, err := c.acquireSession(p)
	if err != nil {
		return err
	}
	if s != nil {
		return c.sendData(p, s, to, b, wd)
	}
	now := c.now() // p.mu is held from here on
	backoff := !p.handshakingLocked() && p.hs.failErr != nil && time.Duration(now-p.hs.failedAt) < c.cfg.HandshakeTimeout
	// Opportunistic is sticky: a peer that has had a session, or been
	// seen sealed, is written to sealed only, as under RequireEncryption.
	if p.policy() == Opportunistic && !p.established && !p.seenSealed.Load() {
		// Opportunistic sends in clear while there is no session, also
		// after a failed handshake: a peer that refuses encryption is
		// not an error for it. It starts a new attempt once the backoff
		// after a failure has passed.
		hello := c.wantHelloLocked(p, helloOffer, now)
		to = p.addr
		p.mu.Unlock()
		// The datagram goes before the hello: once the hello is out, the
		// session (and the peer's "seen sealed" rule) may come before a
		// later open datagram, which the peer would then drop.
		err := c.sendData(p, nil, to, b, wd)
		if hello {
			c.sendHello(p)
		}
		return err
	}
	if backoff {
		err := p.hs.failErr
		p.mu.Unlock()
		if errors.Is(err, ErrPeerRejected) {
			return err // lasting: the key is refused until the configuration changes
		}
		c.stats.writeBackoff.Add(1)
		return nil
	}
	if max := c.queueLimit(); len(b) > max {
		// Until the session says what the peer receives, no more than
		// every Conn receives waits for it.
		p.mu.Unlock()
		c.stats.tooLarge.Add(1)
		return &tooLargeError{n: len(b), max: max}
	}
	hello := c.wantHelloLocked(p, helloWrite, now)
	if !c.enqueueLocked(p, b) {
		c.stats.writeQueueFull.Add(1)
	}
	p.mu.Unlock()
	if hello {
		c.sendHello(p)
	}
	return nil
}

// isSelf reports whether addr is the Conn's own address: its bound
// address, or, on a wildcard bind, a loopback address with its port.
func (c *Conn) isSelf(addr netip.AddrPort) bool {
	local := c.sock.Load().self
	if addr.Port() != local.Port() {
		return false
	}
	if local.Addr().IsUnspecified() {
		return addr.Addr().IsLoopback()
	}
	return addr.Addr() == local.Addr()
}

// sendSelf delivers b to the Conn's own readers, as from addr, as a UDP
// socket delivers what it writes to itself: nothing crosses the network,
// so nothing is sealed. A full read queue drops it (counted).
func (c *Conn) sendSelf(b []byte, addr netip.AddrPort) error {
	q := c.getPacket()
	if len(b) > len(q.buf) {
		q.buf = make([]byte, len(b))
	}
	q.data, q.from = q.buf[:copy(q.buf, b)], addr
	c.stats.datagramsOut.Add(1)
	c.stats.bytesOut.Add(uint64(len(b)))
	if !c.queueRead(q, nil) {
		c.putPacket(q)
		return nil
	}
	// A reader may be blocked in the socket (reader.go), where nothing
	// will arrive: it must return what was queued now, as a *net.UDPConn
	// delivers a datagram to itself at once.
	c.kickDirectReader()
	return nil
}

// acquireSession returns p's session to seal under now, starting a rekey
// when one is due, with p.mu released. With no session it returns nil and
// keeps p.mu held for the caller's no-session path, so that no session can
// come and flush the queue in between. Either way it first waits while
// datagrams that waited for the handshake are going out, so as not to
// overtake them (at most a queue's worth of sends, on the goroutine that
// completed the handshake).
//
// The steady state takes no lock: a current session, usable and not due
// for renewal, with nothing being flushed. flushQueueLocked sets
// p.flushing before it makes a session current, so a writer that sees
// the new session sees the flag too.
func (c *Conn) acquireSession(p *peer) (*session, netip.AddrPort, error) {
	if s := p.kp.current(); s != nil && p.flushing.Load() == nil {
		now := c.now()
		if c.usable(s, now) && !c.needsRekey(s, now) {
			// A current session means the peer proved itself
			// (established): its writes keep it.
			if p.lastSeen.Load() != now {
				p.lastSeen.Store(now)
			}
			return c.sendable(p, s, now), *p.at.Load(), nil
		}
	}
	p.mu.Lock()
	for f := p.flushing.Load(); f != nil; f = p.flushing.Load() {
		ch := *f
		p.mu.Unlock()
		select {
		case <-ch:
		case <-c.closed:
			return nil, netip.AddrPort{}, ErrClosed
		}
		p.mu.Lock()
	}
	now := c.now()
	if p.established {
		// Writes keep a peer that has proved itself; they do not keep a
		// learned peer that never confirmed a session (a spoofed hello).
		if p.lastSeen.Load() != now { // the coarse clock: most writes change nothing
			p.lastSeen.Store(now)
		}
	}
	s := p.kp.current()
	if !c.usable(s, now) {
		return nil, p.addr, nil
	}
	hello := c.needsRekey(s, now) && c.wantHelloLocked(p, helloRekey, now)
	to := p.addr
	p.mu.Unlock()
	if hello {
		c.sendHello(p)
	}
	return c.sendable(p, s, now), to, nil
}

// sendable returns the session to seal under when cur is p's current
// session: cur, unless it is a rekey the responder has not confirmed yet
// (its final message may be lost, and until it arrives the responder
// cannot open what is sealed under it) while the session it renews is
// still usable: then that one, which the responder still opens. The
// first sealed datagram from the responder under cur confirms it
// (receive.go), and writes move to it.
func (c *Conn) sendable(p *peer, cur *session, now int64) *session {
	if cur.final.Load() == nil {
		return cur
	}
	if old := p.kp.previous(); old != nil && c.usable(old, now) {
		return old
	}
	return cur
}

// Broadcast writes b to every configured peer and to every learned peer
// that has had a confirmed session (a learned peer that never proved
// itself, say from a spoofed hello, gets nothing), and returns how many
// writes were accepted, as WriteTo accepts them: a datagram dropped for a
// passing reason counts (see Stats.Drops). Errors are joined, each naming
// its peer.
func (c *Conn) Broadcast(b []byte) (int, error) {
	if !c.ok() {
		return 0, errZeroConn("write")
	}
	if c.isClosed() {
		// Also with no peers to fail: calls after Close return errors.
		return 0, c.opError("write", nil, ErrClosed)
	}
	var addrs []netip.AddrPort
	for _, p := range c.peers.snapshot() {
		p.mu.Lock()
		proved, a := p.configured || p.established, p.addr
		p.mu.Unlock()
		if proved {
			addrs = append(addrs, a)
		}
	}
	slices.SortFunc(addrs, netip.AddrPort.Compare)
	var errs []error
	n := 0
	for _, a := range addrs {
		if _, err := c.WriteToUDPAddrPort(b, a); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// The queue of datagrams written before a handshake completes is bounded
// in bytes, per peer and per Conn, whatever the number of peers.
const (
	maxQueuedBytesPerPeer = 128 << 10
	maxQueuedBytesPerConn = 4 << 20
)

// enqueueLocked keeps a copy of b until p's handshake completes, if the
// bounds allow; p.mu is held.
func (c *Conn) enqueueLocked(p *peer, b []byte) bool {
	if !c.reserveQueueLocked(p, len(b)) {
		return false
	}
	p.queue = append(p.queue, bytes.Clone(b))
	return true
}

// reserveQueueLocked counts n more bytes in p's queue if the bounds, per
// peer and per Conn, allow them, and reports whether they did; p.mu is
// held.
func (c *Conn) reserveQueueLocked(p *peer, n int) bool {
	l := int64(n)
	if p.queuedBytes+l > maxQueuedBytesPerPeer {
		return false
	}
	if c.queuedBytes.Add(l) > maxQueuedBytesPerConn {
		c.queuedBytes.Add(-l)
		return false
	}
	p.queuedBytes += l
	return true
}

// requeueLocked puts bs, datagrams a reset took to go again (resend.go),
// at the front of p's queue, in order, as many as the bounds allow, and
// returns how many; p.mu is held.
func (c *Conn) requeueLocked(p *peer, bs [][]byte) int {
	n := 0
	for n < len(bs) && c.reserveQueueLocked(p, len(bs[n])) {
		n++
	}
	p.queue = append(bs[:n:n], p.queue...)
	return n
}

// unqueueLocked gives back the bytes of b, taken out of p's queue; p.mu
// is held.
func (c *Conn) unqueueLocked(p *peer, b []byte) {
	p.queuedBytes -= int64(len(b))
	c.queuedBytes.Add(-int64(len(b)))
}

// takeQueueLocked empties p's queue and returns what was written to it:
// not the datagrams a reset took to go again that no session decided on
// (resend.go), which were sent once already. p.mu is held.
func (c *Conn) takeQueueLocked(p *peer) [][]byte {
	q := p.queue[p.takenLocked():]
	c.queuedBytes.Add(-p.queuedBytes)
	p.queue, p.queuedBytes = nil, 0
	p.resend.taken, p.resend.oldKey = 0, nil
	return q
}
