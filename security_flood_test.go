//go:build linux

package vaultudp

import (
	"context"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"golang.org/x/net/ipv4"
)

// helloFlood sends hellos to to from workers sockets on 127.0.0.2 and up
// (not the clients' 127.0.0.1), with sendmmsg, as
// fast as they go (rate 0) or at about rate a second, cycling through
// hellos, until stop is closed. The sockets never answer the cookies, as
// forged sources cannot. It counts what it sent in sent.
func helloFlood(t testing.TB, to *net.UDPAddr, hellos [][]byte, workers, rate int, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
	return helloFloodFrom(t, 2, to, hellos, workers, rate, stop, sent)
}

// helloFloodFrom is helloFlood from 127.0.0.ip and up.
func helloFloodFrom(t testing.TB, ip byte, to *net.UDPAddr, hellos [][]byte, workers, rate int, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range workers {
		raw, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, ip+byte(w))})
		if err != nil {
			t.Skipf("no 127.0.0.%d: %v", ip+byte(w), err)
		}
		closeAtEnd(t, raw)
		pc := ipv4.NewPacketConn(raw)
		wg.Add(1)
		go func() {
			defer wg.Done()
			const batch = 64
			ms := make([]ipv4.Message, batch)
			for i := range ms {
				ms[i].Buffers = [][]byte{hellos[(w*batch+i)%len(hellos)]}
				ms[i].Addr = to
			}
			start := time.Now()
			mine := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				if rate > 0 {
					due := int(time.Since(start).Seconds()*float64(rate)/float64(workers)) - mine
					if due < batch {
						time.Sleep(time.Duration(batch-due) * time.Second / time.Duration(rate/workers+1))
						continue
					}
				}
				n, err := pc.WriteBatch(ms, 0)
				if err != nil {
					return
				}
				mine += n
				sent.Add(int64(n))
			}
		}()
	}
	return &wg
}

// spoofedFlood sends hellos to to from random forged sources in
// 127.1.0.0-127.254.255.255 (never the clients' 127.0.0.1), through a raw
// socket with sendmmsg, as fast as workers goroutines go, until stop is
// closed (rate 0), or at about rate a second; it counts what it sent in
// sent.
func spoofedFlood(t testing.TB, to netip.AddrPort, hellos [][]byte, workers, rate int, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range workers {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
		if err != nil {
			t.Skipf("no raw socket: %v", err)
		}
		t.Cleanup(func() { syscall.Close(fd) })
		const batch = 64
		pkts := make([][]byte, batch)
		for i := range pkts {
			h := hellos[(w*batch+i)%len(hellos)]
			p := make([]byte, 28+len(h))
			p[0], p[8], p[9] = 0x45, 64, syscall.IPPROTO_UDP
			binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
			dst := to.Addr().As4()
			copy(p[16:20], dst[:])
			binary.BigEndian.PutUint16(p[22:], to.Port())
			binary.BigEndian.PutUint16(p[24:], uint16(8+len(h)))
			copy(p[28:], h)
			pkts[i] = p
		}
		dst := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: to.Addr().As4()}
		type mmsghdr struct {
			hdr unix.Msghdr
			n   uint32
		}
		iovs := make([]unix.Iovec, batch)
		hdrs := make([]mmsghdr, batch)
		for i := range hdrs {
			iovs[i].Base = &pkts[i][0]
			iovs[i].SetLen(len(pkts[i]))
			hdrs[i].hdr.Name = (*byte)(unsafe.Pointer(&dst))
			hdrs[i].hdr.Namelen = unix.SizeofSockaddrInet4
			hdrs[i].hdr.Iov = &iovs[i]
			hdrs[i].hdr.SetIovlen(1)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start, mine := time.Now(), 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				if rate > 0 {
					if due := int(time.Since(start).Seconds()*float64(rate)/float64(workers)) - mine; due < batch {
						time.Sleep(time.Duration(batch-due) * time.Second / time.Duration(rate/workers+1))
						continue
					}
				}
				for _, p := range pkts {
					r := mrand.Uint64()
					p[12], p[13], p[14], p[15] = 127, byte(1+r%254), byte(r>>8), byte(1+(r>>16)%254)
					binary.BigEndian.PutUint16(p[20:], uint16(1024+(r>>24)%60000))
				}
				n, _, errno := syscall.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), batch, 0, 0, 0)
				if errno != 0 {
					return
				}
				sent.Add(int64(n))
				mine += int(n)
			}
		}()
	}
	return &wg
}

// TestSecurityHelloFloodHandshake (item 9): an unpaced flood of hellos
// that never answer their cookies (the spoofed flood, from sockets that
// only send), as fast as the flooding goroutines go. A new client's
// handshake during it must take well under a second. It prints the
// flood's rate and the handshake times.
func TestSecurityHelloFloodHandshake(t *testing.T) {
	alone(t)
	if raceEnabled {
		t.Skip("rates under -race say nothing")
	}
	hellos := makeHellos(t, 1024)
	// The floods from one or two sockets are the (87,000 hellos a
	// second, unpaced): a new client must be through well within a
	// second. Forged random sources cannot be told apart from new clients:
	// each costs a cookie message, and the rates at which a client still
	// gets through are measured (on loopback a cookie to a forged address
	// also costs the kernel an ICMP error: dearer than on a network).
	type flood struct {
		name   string
		assert bool
		run    func(b *Conn, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup
	}
	floods := []flood{
		{"one source, unpaced", true, func(b *Conn, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
			return helloFlood(t, net.UDPAddrFromAddrPort(addrOf(b)), hellos, 1, 0, stop, sent)
		}},
		{"two sources, unpaced", false, func(b *Conn, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
			return helloFlood(t, net.UDPAddrFromAddrPort(addrOf(b)), hellos, 2, 0, stop, sent)
		}},
		// From the clients' own IP (their NAT, or forged as theirs): the
		// per-source cookie budget is per address and port, so it does
		// not starve them.
		{"one source on the clients' IP, unpaced", true, func(b *Conn, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
			return helloFloodFrom(t, 1, net.UDPAddrFromAddrPort(addrOf(b)), hellos, 1, 0, stop, sent)
		}},
	}
	for _, rate := range []int{10000, 25000, 50000, 0} {
		name := fmt.Sprintf("random forged sources, %d/s", rate)
		if rate == 0 {
			name = "random forged sources, unpaced"
		}
		floods = append(floods, flood{name, false, func(b *Conn, stop <-chan struct{}, sent *atomic.Int64) *sync.WaitGroup {
			return spoofedFlood(t, addrOf(b), hellos, 1, rate, stop, sent)
		}})
	}
	for _, tc := range floods {
		t.Run(tc.name, func(t *testing.T) {
			b := listenT(t, "udp4", "127.0.0.1:0", nil)
			stop := make(chan struct{})
			var sent atomic.Int64
			before := b.Stats()
			start := time.Now()
			kernelBefore := udpRcvbufErrors()
			wg := tc.run(b, stop, &sent)
			for sent.Load() < 20000 && time.Since(start) < waitLong {
				time.Sleep(time.Millisecond) // polling the flooders' count; bounded
			}
			var worst, total time.Duration
			failed := 0
			const clients = 3
			for range clients {
				c := listenT(t, "udp4", "127.0.0.1:0", nil)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				hs := time.Now()
				if err := c.Handshake(ctx, addrOf(b)); err != nil {
					failed++
				}
				took := time.Since(hs)
				worst, total = max(worst, took), total+took
				cancel()
				c.Close()
			}
			close(stop)
			wg.Wait()
			elapsed := time.Since(start)
			st := b.Stats()
			rate := float64(sent.Load()) / elapsed.Seconds()
			t.Logf("%s: %.0f hellos/s for %v; %d new clients' handshakes: mean %v, slowest %v, %d failed (5 s); b sent %d cookies, withheld %d (per-source budget), dropped %d at the full handshake queue, verified %d; the kernel dropped %d datagrams at full receive buffers (all sockets)",
				tc.name, rate, elapsed.Round(time.Millisecond), clients, (total / clients).Round(time.Microsecond), worst.Round(time.Microsecond), failed,
				st.CookiesSent-before.CookiesSent, st.Drops.CookieLimit-before.Drops.CookieLimit,
				st.Drops.HandshakeQueueFull-before.Drops.HandshakeQueueFull, st.Verifications-before.Verifications, udpRcvbufErrors()-kernelBefore)
			if tc.assert && (failed > 0 || worst > 500*time.Millisecond) {
				t.Errorf("under %.0f hellos/s a new client's handshake took up to %v (%d failed)", rate, worst, failed)
			}
		})
	}
}
