//go:build linux && !vaultudp_portable

package udpio

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// On Linux the socket is driven through its file descriptor rather than
// golang.org/x/net/ipv4's ReadBatch, which allocates a *net.UDPAddr per
// datagram: recvmmsg into the caller's buffers with sockaddrs parsed into
// netip.AddrPort, UDP GSO (a UDP_SEGMENT control message) for
// segmented writes, where the kernel has it (probed once, at New) and
// until the device refuses it, and UDP GRO for reads once the socket
// has a backlog (groLoadReads); on sockets bound to a wildcard address,
// IP_PKTINFO and IPV6_PKTINFO for the local address of each datagram and
// the source of each send.

// maxGSOSegments is the kernel's limit of segments in one GSO send
// (UDP_MAX_SEGMENTS).
const maxGSOSegments = 64

// maxGSOBytes is the most one GSO send carries (below the UDP length
// field's limit with the headers).
const maxGSOBytes = 65000

type sysSocket struct {
	rc    syscall.RawConn
	groOn atomic.Bool // UDP_GRO has been asked for (enableGRO)
	// sendFault, when set (by tests), is called before each GSO send;
	// an error it returns is that send's result, and nothing is sent.
	sendFault func() error
}

// newUDP returns the Socket over uc, or nil if uc has no file descriptor.
func newUDP(uc *net.UDPConn) *udpSocket {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &udpSocket{uc: uc, sys: sysSocket{rc: rc}}
	s.caps = Caps{BatchRead: true, Deadlines: true, IPv4Only: ipv4Only(uc)}
	wildcard := AddrPortOf(uc.LocalAddr()).Addr().IsUnspecified()
	rc.Control(func(fd uintptr) {
		// A kernel with UDP GSO (4.18) answers for UDP_SEGMENT, as
		// wireguard-go's conn/features_linux.go probes it.
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		s.caps.GSO = err == nil
		if wildcard {
			s.caps.PacketInfo = enablePacketInfo(int(fd))
		}
		s.caps.GRO = groSupported(int(fd))
	})
	return s
}

// groSupported reports whether the kernel takes UDP_GRO. Only kernels
// that can report the option (getsockopt UDP_GRO, Linux 5.12) count:
// before, UDP_GRO had bugs, and wireguard-go also leaves it off there
// (conn/controlfns_linux.go).
func groSupported(fd int) bool {
	_, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO)
	return err == nil
}

// groLoadReads is how many reads in a row must find a datagram already
// waiting before a Reader turns UDP GRO on for its socket. GRO pays only
// where datagrams queue up, and turning it on is not free: the first
// socket of the system to take it makes the kernel patch its code (the
// static key udp_encap_needed_key: about 0.35 ms here, on the
// setsockopt and again on the last such socket's close), which a socket
// that never has a backlog (a client sending a few datagrams) should not
// pay. Until then the Reader's 64 KiB buffer still takes any datagram
// whole, so nothing else changes.
const groLoadReads = 8

// enableGRO asks the kernel, once per socket, to hand over coalesced
// datagrams (UDP_GRO). On failure the socket reads as before: its Readers
// take coalesced and single datagrams alike.
func (s *udpSocket) enableGRO() {
	if s.sys.groOn.Load() || !s.sys.groOn.CompareAndSwap(false, true) {
		return
	}
	s.sys.rc.Control(func(fd uintptr) {
		unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
	})
}

// enablePacketInfo asks for the local address of each datagram received
// (IP_PKTINFO, IPV6_RECVPKTINFO), as quic-go's sys_conn_oob.go does on
// sockets bound to a wildcard address, and reports whether the socket
// gives it for its family. A dual-stack socket gets both: IPv4
// datagrams then come with either.
func enablePacketInfo(fd int) bool {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return false
	}
	err4 := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	if domain == unix.AF_INET {
		return err4 == nil
	}
	return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1) == nil
}

// oobLen is the room for the control messages of a send: a source
// (in6_pktinfo, the larger) and a segment size.
const oobLen = 64

// oobBuf holds the control messages of a send, aligned for their headers.
type oobBuf [oobLen / 8]uint64

func (o *oobBuf) bytes() []byte { return unsafe.Slice((*byte)(unsafe.Pointer(&o[0])), oobLen) }

// sourceControl writes into buf the control message that makes a datagram
// to to leave from src, and returns it; it returns buf[:0] where src is
// not to be used (see Socket.WriteTo). IPv4 sources go in IP_PKTINFO's
// ipi_spec_dst, also on a dual-stack socket (the kernel's udp_sendmsg
// reads IPv4 control messages for an IPv4-mapped destination), IPv6
// ones in IPV6_PKTINFO; the interface is left to the routing.
func (s *udpSocket) sourceControl(buf []byte, to netip.AddrPort, src netip.Addr) []byte {
	src = src.Unmap()
	if !s.caps.PacketInfo || !src.IsValid() || src.IsUnspecified() || src.Is4() != to.Addr().Unmap().Is4() {
		return buf[:0]
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&buf[0]))
	data := unsafe.Pointer(&buf[unix.CmsgLen(0)])
	if src.Is4() {
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		*(*unix.Inet4Pktinfo)(data) = unix.Inet4Pktinfo{Spec_dst: src.As4()}
		return buf[:unix.CmsgSpace(unix.SizeofInet4Pktinfo)]
	}
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	*(*unix.Inet6Pktinfo)(data) = unix.Inet6Pktinfo{Addr: src.As16()}
	return buf[:unix.CmsgSpace(unix.SizeofInet6Pktinfo)]
}

// sourceRefused reports whether err, from a send with a source, may mean
// the system refused the source: the route lookup fails a source that is
// no longer a local address with ENETUNREACH (IPv4, Linux 6.x) or EINVAL
// (IPv6, older IPv4), and EADDRNOTAVAIL where the address is still
// tentative. The send is then tried again without it, as wireguard-go's
// sticky sockets did; where the error was the destination's, the retry
// fails the same way.
func sourceRefused(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno) && (errno == unix.EINVAL || errno == unix.ENETUNREACH || errno == unix.EADDRNOTAVAIL)
}

func (s *udpSocket) WriteTo(b []byte, to netip.AddrPort, src netip.Addr) error {
	var ob oobBuf
	if ctl := s.sourceControl(ob.bytes(), to, src); len(ctl) > 0 {
		_, _, err := s.uc.WriteMsgUDPAddrPort(b, ctl, to)
		if err == nil || !sourceRefused(err) {
			return err
		}
	}
	_, err := s.uc.WriteToUDPAddrPort(b, to)
	return err
}

func (s *udpSocket) WriteSegments(b []byte, size int, to netip.AddrPort, src netip.Addr) (int, error) {
	sent := 0 // bytes of b sent, a multiple of size
	if size > 0 && len(b) > size && s.Caps().GSO {
		var err error
		sent, err = s.writeGSO(b, size, to, src)
		if err == nil {
			return (len(b) + size - 1) / size, nil
		}
		if !gsoRefused(err) {
			return sent / size, err
		}
		// The device cannot segment: GSO stays off on this socket, and
		// what the refused send held, and the rest, goes one by one.
		s.noGSO.Store(true)
	}
	return writeEach(s, b, sent, size, to, src)
}

// gsoRefused reports whether err, from a GSO send, means the device
// cannot do GSO at all, rather than that this send failed. That is EIO,
// which udp_send_skb returns when the device has no transmit checksum
// offload, without which UDP_SEGMENT does not work (see udp(7) on
// UDP_SEGMENT and net/ipv4/udp.c, udp_send_skb, in Linux 6.2:
// https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/net/ipv4/udp.c?h=v6.2#n942;
// wireguard-go's conn/errors_linux.go decides the same). Nothing of such
// a send went out. Any other error is the send's own (a full buffer, an
// unreachable port, a segment too large for the path) and is returned to
// the caller as it would be without GSO.
func gsoRefused(err error) bool {
	var errno syscall.Errno
	return errors.As(err, &errno) && errno == unix.EIO
}

// gsoControl writes into buf a control message holding UDP_SEGMENT =
// size, and returns it.
func gsoControl(buf []byte, size int) []byte {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&buf[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&buf[unix.CmsgLen(0)])) = uint16(size)
	return buf[:unix.CmsgSpace(2)]
}

// writeGSO sends b in trains of at most maxGSOSegments segments and
// returns how many bytes of it were sent: a GSO send goes out whole or
// not at all, so a failed one leaves the bytes sent a multiple of size.
func (s *udpSocket) writeGSO(b []byte, size int, to netip.AddrPort, src netip.Addr) (int, error) {
	var ob oobBuf
	oob := ob.bytes()
	ctl := s.sourceControl(oob, to, src)
	ctl = ctl[:len(ctl)+len(gsoControl(oob[len(ctl):], size))]
	chunk := max(1, min(maxGSOSegments, maxGSOBytes/size)) * size
	for off := 0; off < len(b); {
		end := min(off+chunk, len(b))
		var err error
		if s.sys.sendFault != nil {
			err = s.sys.sendFault()
		}
		if err == nil {
			_, _, err = s.uc.WriteMsgUDPAddrPort(b[off:end], ctl, to)
			if err != nil && len(ctl) > unix.CmsgSpace(2) && sourceRefused(err) {
				// Without the source, from here on.
				ctl = gsoControl(oob[:], size)
				_, _, err = s.uc.WriteMsgUDPAddrPort(b[off:end], ctl, to)
			}
		}
		if err != nil {
			return off, err
		}
		off = end
	}
	return len(b), nil
}

// ctrlLen is the room for the control messages of a datagram received:
// in6_pktinfo and in_pktinfo (a dual-stack socket may give both for an
// IPv4 datagram) and a GRO segment size, each under its header.
const ctrlLen = 128

// groBufs is the number of coalesced datagrams one GRO read takes, and
// groBufSize the room for each (the most GRO coalesces: 64 KiB). A
// Reader has one such buffer until its socket has GRO on: 256 KiB per
// Reader is a cost where nothing coalesces.
const (
	groBufs    = 4
	groBufSize = 1 << 16
)

// groBufPool keeps the buffers of released Readers for new ones: a
// program that opens and closes Conns (a client per request, a test
// suite) otherwise allocates and zeroes 64 KiB or more for each, half of
// what a Conn allocates before its first datagram. It holds nothing but
// free memory, which the garbage collector reclaims as from any sync.Pool.
var groBufPool = sync.Pool{New: func() any { return new([groBufSize]byte) }}

// linuxReader reads with recvmmsg.
type linuxReader struct {
	rc   syscall.RawConn
	s    *udpSocket
	ctrl bool // ask for control messages (packet info, GRO)
	gro  *groState
	// One entry per datagram of a read: MaxBatch, or groBufs where the
	// Reader reads into its own GRO buffers (readGRO).
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for IPv4 too
	ctrls [][ctrlLen / 8]uint64   // aligned for the headers
	// The state of one call, kept here so that doRead, made a method
	// value once, allocates nothing per call.
	vlen   int
	n      int
	errno  syscall.Errno
	waited bool // the call found no datagram waiting and waited for one
	doRead func(fd uintptr) bool
	// backlog counts the reads in a row that found a datagram waiting,
	// until GRO is on (groLoadReads).
	backlog int
}

// groState is a reader's own buffers for coalesced datagrams, and the
// datagrams of its last read not yet returned.
type groState struct {
	bufs   []*[groBufSize]byte // one (from the first read on) until the socket has GRO on, then groBufs
	closed bool                // released
	trains [groBufs]groTrain
	n      int // trains of the last read
	next   int // the first not yet wholly returned
}

// groTrain is one coalesced read: segments of seg bytes (the last may be
// shorter; seg 0: one datagram), of which those before off are returned.
type groTrain struct {
	n, seg, off int
	addr        netip.AddrPort
	local       netip.Addr
	truncated   bool
}

func (s *udpSocket) NewReader() Reader {
	r := &linuxReader{rc: s.sys.rc, s: s, ctrl: s.caps.PacketInfo || s.caps.GRO}
	n := MaxBatch
	if s.caps.GRO {
		n = groBufs
	}
	r.hdrs = make([]unix.Mmsghdr, n)
	r.iovs = make([]unix.Iovec, n)
	r.names = make([]unix.RawSockaddrInet6, n)
	r.ctrls = make([][ctrlLen / 8]uint64, n)
	if s.caps.GRO {
		// The buffers come with the first read: a Reader is made with
		// its socket, in Listen, and read on a goroutine that may run
		// on another core meanwhile.
		r.gro = &groState{bufs: make([]*[groBufSize]byte, 0, groBufs)}
	}
	r.doRead = r.recvmmsg
	return r
}

// Buffered returns how many datagrams of the last read Read returns
// before it reads the socket again.
func (r *linuxReader) Buffered() int {
	g := r.gro
	if g == nil {
		return 0
	}
	k := 0
	for _, t := range g.trains[g.next:g.n] {
		if t.seg == 0 {
			k++
		} else {
			k += (t.n - t.off + t.seg - 1) / t.seg
		}
	}
	return k
}

func (r *linuxReader) recvmmsg(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(r.vlen), 0, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			r.waited = true
			return false // nothing to read: wait for the poller
		}
		r.n, r.errno = int(n), errno
		return true
	}
}

func (r *linuxReader) Release() {
	if g := r.gro; g != nil && !g.closed {
		for _, b := range g.bufs {
			groBufPool.Put(b)
		}
		*g = groState{closed: true}
	}
}

func (r *linuxReader) Read(ms []Message) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	if r.gro != nil {
		return r.readGRO(ms)
	}
	r.vlen = min(len(ms), len(r.hdrs))
	if err := r.read(func(i int) []byte { return ms[i].Buf }); err != nil {
		return 0, err
	}
	for i := 0; i < r.n; i++ {
		m := &ms[i]
		h := &r.hdrs[i]
		m.N = int(h.Len)
		m.Truncated = m.N == len(m.Buf) || h.Hdr.Flags&unix.MSG_TRUNC != 0
		m.Addr = sockaddrToAddrPort(&r.names[i])
		m.Local = netip.Addr{}
		if r.ctrl {
			m.Local, _ = parseControl(r.control(i))
		}
	}
	return r.n, nil
}

// control returns the control messages received with datagram i.
func (r *linuxReader) control(i int) []byte {
	ctl := unsafe.Slice((*byte)(unsafe.Pointer(&r.ctrls[i][0])), ctrlLen)
	return ctl[:min(int(r.hdrs[i].Hdr.Controllen), ctrlLen)]
}

// readGRO returns the segments of earlier coalesced reads, or reads the
// socket into the reader's own buffers and returns the segments of what
// came, copied into ms; those that do not fit wait for the next call.
func (r *linuxReader) readGRO(ms []Message) (int, error) {
	g := r.gro
	if g.next == g.n {
		want := 1
		if r.s.sys.groOn.Load() {
			want = groBufs
		}
		if g.closed {
			return 0, net.ErrClosed
		}
		for len(g.bufs) < want {
			g.bufs = append(g.bufs, groBufPool.Get().(*[groBufSize]byte))
		}
		r.vlen = len(g.bufs)
		r.waited = false
		if err := r.read(func(i int) []byte { return g.bufs[i][:] }); err != nil {
			return 0, err
		}
		if !r.s.sys.groOn.Load() {
			if r.backlog++; r.waited {
				r.backlog = 0
			} else if r.backlog >= groLoadReads {
				r.s.enableGRO()
			}
		}
		for i := 0; i < r.n; i++ {
			h := &r.hdrs[i]
			t := &g.trains[i]
			local, seg := parseControl(r.control(i))
			*t = groTrain{n: int(h.Len), seg: seg, addr: sockaddrToAddrPort(&r.names[i]), local: local,
				truncated: h.Hdr.Flags&unix.MSG_TRUNC != 0}
			if t.seg >= t.n {
				t.seg = 0
			}
		}
		g.n, g.next = r.n, 0
	}
	k := 0
	for k < len(ms) && g.next < g.n {
		t := &g.trains[g.next]
		end := t.n
		if t.seg > 0 {
			end = min(t.off+t.seg, t.n)
		}
		seg := g.bufs[g.next][t.off:end]
		m := &ms[k]
		m.N = copy(m.Buf, seg)
		m.Truncated = len(seg) >= len(m.Buf) || t.truncated
		m.Whole = nil
		if m.Truncated && !t.truncated {
			m.Whole = seg
		}
		m.Addr, m.Local = t.addr, t.local
		k++
		t.off = end
		if t.off >= t.n {
			g.next++
		}
	}
	return k, nil
}

// read reads up to r.vlen datagrams into buf(i) with recvmmsg and sets
// r.n.
func (r *linuxReader) read(buf func(i int) []byte) error {
	for i := 0; i < r.vlen; i++ {
		buf := buf(i)
		if len(buf) > 0 {
			r.iovs[i].Base = &buf[0]
		} else {
			r.iovs[i].Base = nil
		}
		r.iovs[i].SetLen(len(buf))
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = uint32(unsafe.Sizeof(r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Flags = 0
		if r.ctrl {
			h.Control = (*byte)(unsafe.Pointer(&r.ctrls[i][0]))
			h.SetControllen(ctrlLen)
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
	}
	if err := r.rc.Read(r.doRead); err != nil {
		return err
	}
	if r.errno != 0 {
		return &net.OpError{Op: "read", Net: "udp", Err: os.NewSyscallError("recvmmsg", r.errno)}
	}
	return nil
}

// parseControl returns the local address in the control messages of a
// datagram received, IP_PKTINFO's ipi_spec_dst (the destination of a
// unicast datagram; for a broadcast, the local address to answer from)
// or IPV6_PKTINFO's address, unmapped, and the segment size of a
// coalesced read (UDP_GRO; 0 if none). Malformed messages are ignored.
func parseControl(b []byte) (local netip.Addr, seg int) {
	for len(b) >= unix.CmsgLen(0) {
		h, data, rest, err := unix.ParseOneSocketControlMessage(b)
		if err != nil {
			return local, seg
		}
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			info := (*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0]))
			local = netip.AddrFrom4(info.Spec_dst)
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			info := (*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0]))
			local = netip.AddrFrom16(info.Addr).Unmap()
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 4:
			seg = int(*(*int32)(unsafe.Pointer(&data[0]))) // the kernel's put_cmsg of an int
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 2:
			seg = int(*(*uint16)(unsafe.Pointer(&data[0])))
		}
		b = rest
	}
	return local, seg
}

// sockaddrToAddrPort parses an AF_INET or AF_INET6 sockaddr, IPv4-mapped
// addresses unmapped.
func sockaddrToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	ne := (*[2]byte)(unsafe.Pointer(&sa.Port)) // network byte order in memory
	port := uint16(ne[0])<<8 | uint16(ne[1])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}
