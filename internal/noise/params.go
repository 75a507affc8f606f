package noise

import (
	"encoding/binary"
	"fmt"
)

// Session parameters travel encrypted in the reply (the responder's) and
// in the final message (the initiator's), after the identity block, as a
// list of entries: type (1 byte), length (1 byte), value. Unknown types
// are skipped, so a later parameter needs no new version; a known type
// with another length, or any type twice, makes the message malformed.
// Type 0 is padding: it and everything after it is ignored, so a run of
// zero bytes is valid padding (the hello's payload is only that).
const (
	paramPadding         = 0x00
	paramMaxUnfragmented = 0x01 // uint16: largest datagram received without IP fragmentation
	paramMaxDatagram     = 0x02 // uint16: largest datagram received at all
	paramResetToken      = 0x03 // 16 bytes: the reset token of the sender's session index
	paramVersions        = 0x04 // 1..8 bytes: the versions the sender speaks (reply)

	// TokenLen is the length of a reset token.
	TokenLen    = 16
	maxVersions = 8
)

// Params are one side's session parameters. A zero field is absent.
type Params struct {
	// MaxUnfragmented is the largest datagram (UDP payload) the sender
	// receives without IP fragmentation (PROTOCOL.md section 6, A).
	MaxUnfragmented uint16
	// MaxDatagram is the largest datagram it receives at all (R).
	MaxDatagram uint16
	// ResetToken is the sender's reset token for its own session index
	// (PROTOCOL.md 2.5); HasToken says whether it was sent.
	ResetToken [TokenLen]byte
	HasToken   bool
	// Versions is the list of versions the sender speaks. The responder
	// sends its own; Respond fills it in.
	Versions []byte
}

// appendParams appends the encoding of p.
func appendParams(dst []byte, p *Params) []byte {
	if p.MaxUnfragmented != 0 {
		dst = append(dst, paramMaxUnfragmented, 2)
		dst = binary.BigEndian.AppendUint16(dst, p.MaxUnfragmented)
	}
	if p.MaxDatagram != 0 {
		dst = append(dst, paramMaxDatagram, 2)
		dst = binary.BigEndian.AppendUint16(dst, p.MaxDatagram)
	}
	if p.HasToken {
		dst = append(dst, paramResetToken, TokenLen)
		dst = append(dst, p.ResetToken[:]...)
	}
	if len(p.Versions) > 0 {
		dst = append(dst, paramVersions, byte(len(p.Versions)))
		dst = append(dst, p.Versions...)
	}
	return dst
}

// paramsLen is the length of p's encoding.
func paramsLen(p *Params) int { return len(appendParams(nil, p)) }

// parseParams decodes a parameter list. The returned Versions is a copy.
func parseParams(b []byte) (Params, error) {
	var p Params
	var seen uint32
	for len(b) > 0 {
		t := b[0]
		if t == paramPadding {
			break
		}
		if len(b) < 2 || len(b) < 2+int(b[1]) {
			return Params{}, fmt.Errorf("%w: parameter %d truncated", ErrMalformed, t)
		}
		v := b[2 : 2+int(b[1])]
		b = b[2+len(v):]
		if t < 32 {
			if seen&(1<<t) != 0 {
				return Params{}, fmt.Errorf("%w: parameter %d twice", ErrMalformed, t)
			}
			seen |= 1 << t
		}
		switch t {
		case paramMaxUnfragmented, paramMaxDatagram:
			if len(v) != 2 {
				return Params{}, fmt.Errorf("%w: parameter %d of %d bytes", ErrMalformed, t, len(v))
			}
			x := binary.BigEndian.Uint16(v)
			if x == 0 {
				return Params{}, fmt.Errorf("%w: parameter %d is zero", ErrMalformed, t)
			}
			if t == paramMaxUnfragmented {
				p.MaxUnfragmented = x
			} else {
				p.MaxDatagram = x
			}
		case paramResetToken:
			if len(v) != TokenLen {
				return Params{}, fmt.Errorf("%w: reset token of %d bytes", ErrMalformed, len(v))
			}
			copy(p.ResetToken[:], v)
			p.HasToken = true
		case paramVersions:
			if len(v) == 0 || len(v) > maxVersions {
				return Params{}, fmt.Errorf("%w: %d versions", ErrMalformed, len(v))
			}
			p.Versions = append([]byte(nil), v...)
		}
	}
	return p, nil
}
