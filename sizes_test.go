package vaultudp

import (
	"bytes"
	"errors"
	"net/netip"
	"sync"
	"syscall"
	"testing"
)

// TestSizesAsUDP: a Conn on 127.0.0.1 takes and delivers a 1,400-byte
// datagram (kcp-go's default) as a *net.UDPConn does, whatever the host's
// other interfaces' MTUs; beyond what the peer receives, the write fails
// with an error matching ErrMessageTooLarge and EMSGSIZE.
func TestSizesAsUDP(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	handshakeT(t, a, addrOf(b))
	msg := bytes.Repeat([]byte{0xa5}, 1400)
	if n, err := a.WriteToUDPAddrPort(msg, addrOf(b)); n != len(msg) || err != nil {
		t.Fatalf("write of 1400 bytes: %d, %v", n, err)
	}
	if got, _ := readWithin(t, b, waitLong); !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, want the 1400 written", len(got))
	}
	limit := a.MaxPayloadTo(addrOf(b))
	if limit < 1400 {
		t.Errorf("MaxPayloadTo(b) %d, want at least 1400", limit)
	}
	_, err := a.WriteToUDPAddrPort(make([]byte, limit+1), addrOf(b))
	if !errors.Is(err, ErrMessageTooLarge) || !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("write of MaxPayloadTo+1 bytes: %v, want ErrMessageTooLarge and EMSGSIZE", err)
	}
}

// TestSizesMixedMTU: one Conn with MTU 9000, one with 1500. Each tells
// the other what it receives; every datagram arrives both ways, padded
// (PadMTU) to 1452 if it fits, else to the smaller of the path's datagram
// and what the receiver takes, and larger ones to a multiple of that.
func TestSizesMixedMTU(t *testing.T) {
	parallel(t)
	tap := &wireTap{}
	n := newMemNet()
	lengths := map[netip.AddrPort]map[int]int{}
	var mu sync.Mutex
	n.tap = func(from, to netip.AddrPort, b []byte) {
		tap.record(from, to, b)
		if len(b) > 1 && b[1] == typeSealed {
			mu.Lock()
			if lengths[to] == nil {
				lengths[to] = map[int]int{}
			}
			lengths[to][len(b)]++
			mu.Unlock()
		}
	}
	mj, ms := n.listen(t, "10.0.0.1:1000"), n.listen(t, "10.0.0.2:2000")
	jumbo := wrapT(t, mj, &Config{MTU: 9000})
	small := wrapT(t, ms, &Config{MTU: 1500})
	handshakeT(t, jumbo, ms.addr)
	handshakeT(t, small, mj.addr)
	for _, size := range []int{11, 1000, 1431} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := jumbo.WriteToUDPAddrPort(msg, ms.addr); err != nil {
			t.Fatalf("jumbo -> small, %d bytes: %v", size, err)
		}
		if got, _ := readWithin(t, small, waitLong); !bytes.Equal(got, msg) {
			t.Fatalf("jumbo -> small, %d bytes: read %d", size, len(got))
		}
	}
	// The jumbo side's sizes reach the small one before it writes 5000.
	if took, ok := waitFor(waitLong, func() bool { return small.MaxPayloadTo(mj.addr) >= 5000 }); !ok {
		t.Fatalf("small's MaxPayloadTo(jumbo) still %d after %v", small.MaxPayloadTo(mj.addr), took)
	}
	for _, size := range []int{11, 1000, 1431, 5000} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		if _, err := small.WriteToUDPAddrPort(msg, mj.addr); err != nil {
			t.Fatalf("small -> jumbo, %d bytes: %v", size, err)
		}
		if got, _ := readWithin(t, jumbo, waitLong); !bytes.Equal(got, msg) {
			t.Fatalf("small -> jumbo, %d bytes: read %d", size, len(got))
		}
	}
	// The small side takes 1472-byte datagrams: more is refused, not lost.
	if _, err := jumbo.WriteToUDPAddrPort(make([]byte, 5000), ms.addr); !errors.Is(err, syscall.EMSGSIZE) {
		t.Errorf("jumbo -> small, 5000 bytes: %v, want EMSGSIZE", err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("sealed lengths to small: %v; to jumbo: %v", lengths[ms.addr], lengths[mj.addr])
	// PadMTU: 1452 (padSmall) for what fits it, else 1472 (the target).
	for l := range lengths[ms.addr] {
		if l != padSmall && l != 1472 {
			t.Errorf("a %d-byte sealed datagram to the 1500 side, want 1452 or 1472 only", l)
		}
	}
	for l := range lengths[mj.addr] {
		if l != padSmall && l != 1472 && l != 4*1472 {
			t.Errorf("a %d-byte sealed datagram to the 9000 side, want 1452, 1472 (and 4 x 1472 for 5000 bytes)", l)
		}
	}
}

// TestSizesLargeDatagram: on loopback (a socket that reads with UDP GRO),
// a 60,000-byte datagram is sealed, sent and delivered whole, as a
// *net.UDPConn sends and receives it; padding still pads small datagrams
// to the MTU's size, not to the 64 KiB loopback route.
func TestSizesLargeDatagram(t *testing.T) {
	parallel(t)
	a, b := pair(t, "udp4", "127.0.0.1", nil, nil)
	if !b.sock.Load().Caps().GRO {
		t.Skip("no UDP GRO on this kernel: datagrams above the MTU's size are refused with EMSGSIZE instead")
	}
	handshakeT(t, a, addrOf(b))
	// b's token message, with its sizes, reaches a.
	if took, ok := waitFor(waitLong, func() bool { return a.MaxPayloadTo(addrOf(b)) >= 60000 }); !ok {
		t.Fatalf("MaxPayloadTo(b) still %d after %v", a.MaxPayloadTo(addrOf(b)), took)
	}
	msg := make([]byte, 60000)
	for i := range msg {
		msg[i] = byte(i * 13)
	}
	if n, err := a.WriteToUDPAddrPort(msg, addrOf(b)); n != len(msg) || err != nil {
		t.Fatalf("write of 60,000 bytes: %d, %v (MaxPayloadTo %d)", n, err, a.MaxPayloadTo(addrOf(b)))
	}
	got, _ := readWithin(t, b, waitLong)
	if !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, want the 60,000 written", len(got))
	}
}

// TestSizesMixedMTUSockets: the mixed-MTU case over real loopback sockets,
// as two programs would meet it: a Conn with MTU 9000 and one with 1500
// exchange datagrams of every size both ways, and every one arrives (the
// padded lengths on the wire are TestSizesMixedMTU's).
func TestSizesMixedMTUSockets(t *testing.T) {
	parallel(t)
	jumbo := listenT(t, "udp4", "127.0.0.1:0", &Config{MTU: 9000})
	small := listenT(t, "udp4", "127.0.0.1:0", &Config{MTU: 1500})
	handshakeT(t, jumbo, addrOf(small))
	for _, d := range []struct {
		name     string
		from, to *Conn
	}{{"jumbo -> small", jumbo, small}, {"small -> jumbo", small, jumbo}} {
		sizes := []int{11, 1000, 1431, 5000}
		if d.to == small && !small.sock.Load().Caps().GRO {
			sizes = sizes[:3] // without GRO the small side takes its MTU's datagram at most (and says so)
		}
		big := sizes[len(sizes)-1]
		if took, ok := waitFor(waitLong, func() bool { return d.from.MaxPayloadTo(addrOf(d.to)) >= big }); !ok {
			t.Fatalf("%s: MaxPayloadTo still %d after %v", d.name, d.from.MaxPayloadTo(addrOf(d.to)), took)
		}
		for _, size := range sizes {
			msg := bytes.Repeat([]byte{byte(size)}, size)
			if _, err := d.from.WriteToUDPAddrPort(msg, addrOf(d.to)); err != nil {
				t.Fatalf("%s, %d bytes: %v", d.name, size, err)
			}
			if got, from := readWithin(t, d.to, waitLong); !bytes.Equal(got, msg) || from != addrOf(d.from) {
				t.Fatalf("%s, %d bytes: read %d from %v", d.name, size, len(got), from)
			}
		}
	}
}
