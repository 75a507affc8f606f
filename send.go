package vaultudp

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"time"
)

// sendData sends a user datagram to a peer: sealed under s, or open if s
// is nil.
func (c *Conn) sendData(s *session, to netip.AddrPort, b []byte) error {
	var err error
	if s != nil {
		err = c.sendSealed(s, to, b, true)
	} else {
		err = c.sendOpen(to, &record{payload: b, hasPayload: true})
	}
	if err == nil {
		c.stats.datagramsOut.Add(1)
		c.stats.bytesOut.Add(uint64(len(b)))
	}
	return err
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
// otherwise) under s, padded as the Config says, and sends it.
func (c *Conn) sendSealed(s *session, to netip.AddrPort, b []byte, hasPayload bool) error {
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	out, err := c.appendSealed((*bp)[:0], s, b, hasPayload)
	if err != nil {
		return err
	}
	return c.sock.Load().writeTo(out, to)
}

// appendSealed appends to dst the sealed datagram carrying b. dst must
// have room for bufSize+tagLen more bytes, or the result is a new slice.
func (c *Conn) appendSealed(dst []byte, s *session, b []byte, hasPayload bool) ([]byte, error) {
	rec := record{payload: b, hasPayload: hasPayload}
	if hasPayload && len(b) >= minCompressLen && c.compressing() {
		zp := c.bufs.Get().(*[]byte)
		defer c.bufs.Put(zp)
		z := c.z.compress((*zp)[:0], b)
		if len(z)+extHeaderLen(len(z)) < len(b)+binHeaderLen(len(b)) {
			rec.payload, rec.compressed = z, true
		}
	}
	natural := sealedOverhead + rec.envelopeLen()
	size := c.cfg.Padding.wireSize(natural, c.datagram) - sealedOverhead
	off := len(dst)
	var hdr [sealedHeaderLen]byte
	dst = rec.appendTo(append(dst, hdr[:]...), size)
	out, err := s.seal(dst[off:])
	if err != nil {
		return dst[:off], err
	}
	return append(dst[:off], out...), nil // no copy when out is in place
}

// sendOpen sends an open (unencrypted) envelope. Open datagrams are not
// padded: there is nothing to hide.
func (c *Conn) sendOpen(to netip.AddrPort, rec *record) error {
	bp := c.bufs.Get().(*[]byte)
	defer c.bufs.Put(bp)
	buf := append((*bp)[:0], ProtocolVersion, typeOpen)
	buf = rec.appendTo(buf, 0)
	return c.sock.Load().writeTo(buf, to)
}

// sendControl sends a handshake message in an open envelope. Errors are
// logged, not returned: the handshake retries.
func (c *Conn) sendControl(to netip.AddrPort, msg []byte) {
	if err := c.sendOpen(to, &record{control: msg}); err != nil {
		c.log.Debug("vaultudp: sending handshake message", "peer", to, "err", err)
	}
}

// send is the write path: seal under the peer's session, or queue and
// start the handshake, or send in clear where the policy says so.
func (c *Conn) send(b []byte, addr netip.AddrPort) error {
	if c.isClosed() {
		return ErrClosed
	}
	if isClosed(c.writeDeadline.wait()) {
		return os.ErrDeadlineExceeded
	}
	if pp := c.protoAt(addr); pp != nil {
		return pp.send(b) // protocol v2 (proto_v2.go): the same size limit, its own path
	}
	if len(b) > c.maxPayload {
		c.stats.tooLarge.Add(1)
		return &tooLargeError{n: len(b), max: c.maxPayload}
	}
	if !addr.IsValid() || addr.Port() == 0 {
		return fmt.Errorf("%w: invalid destination %v", ErrNoSession, addr)
	}
	p, err := c.peerFor(addr, true)
	if err != nil {
		return err
	}
	if p.policy == Plaintext {
		p.mu.Lock()
		p.lastSeen = c.now()
		p.mu.Unlock()
		return c.sendData(nil, addr, b)
	}
	s, to, err := c.acquireSession(p)
	if err != nil {
		return err
	}
	if s != nil {
		return c.sendData(s, to, b)
	}
	now := c.now() // p.mu is held from here on
	backoff := p.init == nil && p.failErr != nil && time.Duration(now-p.failedAt) < c.cfg.HandshakeTimeout
	if p.policy == Opportunistic {
		// Opportunistic sends in clear while there is no session, also
		// after a failed handshake: a peer that refuses encryption is
		// not an error for it. It starts a new attempt once the backoff
		// after a failure has passed.
		var hello []byte
		if p.init == nil && !backoff && !p.removed {
			p.failErr = nil
			hello = c.initiateLocked(p)
		}
		to = p.addr
		p.mu.Unlock()
		// The datagram goes before the hello: once the hello is out, the
		// session (and the peer's "seen sealed" rule) may come before a
		// later open datagram, which the peer would then drop.
		err := c.sendData(nil, to, b)
		if hello != nil {
			c.sendControl(to, hello)
		}
		return err
	}
	if backoff {
		err := p.failErr
		p.mu.Unlock()
		return err
	}
	var hello []byte
	if p.init == nil && p.next == nil && !p.removed {
		// (With p.next set, the peer's confirmation is on its way: wait.)
		p.failErr = nil
		hello = c.initiateLocked(p)
	}
	to = p.addr
	if len(p.queue) >= maxQueued {
		p.mu.Unlock()
		return fmt.Errorf("%w: %v: handshake under way and %d datagrams already wait for it", ErrNoSession, to, maxQueued)
	}
	p.queue = append(p.queue, bytes.Clone(b))
	p.mu.Unlock()
	if hello != nil {
		c.sendControl(to, hello)
	}
	return nil
}

// acquireSession returns p's session to seal under now, starting a rekey
// when one is due, with p.mu released. With no session it returns nil and
// keeps p.mu held for the caller's no-session path, so that no session can
// come and flush the queue in between. Either way it first waits while
// datagrams that waited for the handshake are going out, so as not to
// overtake them (at most maxQueued sends, on the reader goroutine).
func (c *Conn) acquireSession(p *peer) (*session, netip.AddrPort, error) {
	p.mu.Lock()
	for p.flushed != nil {
		ch := p.flushed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-c.closed:
			return nil, netip.AddrPort{}, ErrClosed
		}
		p.mu.Lock()
	}
	now := c.now()
	p.lastSeen = now
	s := c.sendSessionLocked(p, now)
	if s == nil {
		return nil, p.addr, nil
	}
	var hello []byte
	if p.init == nil && p.next == nil && c.needsRekey(s, now) {
		hello = c.initiateLocked(p)
	}
	to := p.addr
	p.mu.Unlock()
	if hello != nil {
		c.sendControl(to, hello)
	}
	return s, to, nil
}

// Broadcast writes p to every peer, configured and learned, and returns
// how many sends succeeded. Failures are joined in the error, each naming
// its peer.
func (c *Conn) Broadcast(b []byte) (int, error) {
	if c.isClosed() {
		// Also with no peers to fail: calls after Close return errors.
		return 0, c.opError("write", nil, ErrClosed)
	}
	c.mu.RLock()
	addrs := make([]netip.AddrPort, 0, len(c.peers))
	for a := range c.peers {
		addrs = append(addrs, a)
	}
	c.mu.RUnlock()
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

// maxQueued is the number of datagrams that wait per peer for a
// handshake to complete.
const maxQueued = 32
