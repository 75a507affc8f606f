package vaultudp

// Anti-replay protection for the counters of sealed packets: the sliding
// bitmap window of RFC 6479, laid out as a ring of 64-bit blocks like
// wireguard-go's replay package.

const (
	replayBlockBitLog = 6                      // log2 of the counters per block
	replayBlockBits   = 1 << replayBlockBitLog // counters tracked by one uint64 block
	replayRingBlocks  = 1 << 6                 // blocks in the ring; a power of two so an index is reduced by masking
	replayBlockMask   = replayRingBlocks - 1
	replayBitMask     = replayBlockBits - 1

	// replayWindowSize is the width of the window in counters: 4032, that is
	// (replayRingBlocks-1)*replayBlockBits. With h the highest counter
	// accepted so far, a counter c <= h is judged on its own merits (accepted
	// once, then a duplicate) iff h-c < replayWindowSize, i.e. c lies in
	// [h-replayWindowSize+1, h]; any older counter is rejected as too old.
	//
	// The window is one block narrower than the ring (4096 bits) because its
	// ends need not be block-aligned: 63 blocks' worth of counters can
	// straddle 64 blocks, and all of them must stay in the ring.
	//
	// wireguard-go's ring is twice as wide (8128 counters). Half of it is
	// still a reordering of 4032 datagrams, some 40 ms of a gigabit of
	// 1200-byte datagrams, against DTLS's 64 and IPsec's usual 64 to 1024;
	// and it is half of every session's memory: a session is 704 bytes with
	// it, 1,216 with WireGuard's, and a server's peers each hold one or two.
	replayWindowSize = (replayRingBlocks - 1) * replayBlockBits

	// counterLimit is the hard limit on counters: a counter >= counterLimit
	// is always rejected, by any window, so a sender must rekey before its
	// 64-bit counter (the AEAD nonce) could wrap and repeat. Its value,
	// 2^64 - 2^13 - 1, is WireGuard's REJECT_AFTER_MESSAGES: the 2^13 margin
	// keeps counter+replayWindowSize and the block arithmetic of
	// checkAndUpdate clear of overflow.
	counterLimit uint64 = (1 << 64) - (1 << 13) - 1
)

// Compile-time guards: the window holds at least 2048 counters (PROTOCOL.md),
// and the window must leave one ring block spare (see replayWindowSize).
const (
	_ uint = replayWindowSize - 2048
	_ uint = (replayRingBlocks-1)*replayBlockBits - replayWindowSize
)

// replayWindow is a sliding anti-replay window over the 64-bit counters
// received in one direction of one session. It remembers which of the last
// replayWindowSize counters (up to the highest accepted) have been seen, in a
// fixed ring of bitmap blocks: 512 bytes, and O(1) time per check.
//
// The zero value is an empty window ready to use: every counter below
// counterLimit is fresh.
//
// A replayWindow does no locking; the caller serialises access (it lives in
// a session and is used under that session's lock).
type replayWindow struct {
	last uint64                   // highest counter accepted so far; 0 while none has been
	ring [replayRingBlocks]uint64 // bit c%64 of block (c/64)%replayRingBlocks marks counter c
}

// checkAndUpdate reports whether counter is fresh and, if it is, marks it as
// seen, so that it is accepted exactly once. It returns false, changing
// nothing, if counter has already been accepted, is too old (at least
// replayWindowSize below the highest counter accepted so far, where the
// window can no longer tell), or is >= counterLimit. Counters that arrive out
// of order within the window are each accepted once. A counter above the
// highest slides the window forward to end at it; the counters that this
// pushes out of the window become too old. The cost is O(1) even for a
// far-future jump: at most the whole ring is cleared.
//
// Call checkAndUpdate only AFTER the packet's AEAD open has succeeded, and
// drop the packet if it returns false. Checking and marking are one step so
// that only authenticated counters ever move the window: if a forged packet
// could mark its counter, one with a far-future counter would slide the
// window past the genuine traffic, which would then all be rejected as too
// old.
func (w *replayWindow) checkAndUpdate(counter uint64) bool {
	if counter >= counterLimit {
		return false
	}
	block := counter >> replayBlockBitLog
	if counter > w.last {
		// Slide forward: the blocks after last's, up to and including
		// counter's, now stand for counters never seen; clear them. A jump
		// of a full lap or more clears the whole ring, and no more.
		cur := w.last >> replayBlockBitLog
		if n := block - cur; n >= replayRingBlocks {
			clear(w.ring[:])
		} else {
			for i := cur + 1; i <= block; i++ {
				w.ring[i&replayBlockMask] = 0
			}
		}
		w.last = counter
	} else if w.last-counter >= replayWindowSize {
		return false // too old: its bit may already stand for a newer counter
	}
	bit := uint64(1) << (counter & replayBitMask)
	b := &w.ring[block&replayBlockMask]
	if *b&bit != 0 {
		return false
	}
	*b |= bit
	return true
}
