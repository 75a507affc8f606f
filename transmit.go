package vaultudp

import (
	"net/netip"
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
