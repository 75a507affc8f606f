package vaultudp

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Batch I/O on Linux, written on the raw socket rather than through
// golang.org/x/net/ipv4's ReadBatch, which allocates a *net.UDPAddr per
// datagram: recvmmsg into caller buffers with sockaddrs parsed into
// netip.AddrPort, and UDP GSO (a UDP_SEGMENT control message) for
// segmented writes, probed by use and switched off for good on the first
// refusal, as wireguard-go does.

// maxGSOSegments is the kernel's limit of segments in one GSO send.
const maxGSOSegments = 64

// maxGSOBytes is the most one GSO send carries (the UDP length field).
const maxGSOBytes = 65000

type sysSocket struct {
	rc     syscall.RawConn
	noGSO  atomic.Bool
	hasGSO bool // the platform may have it (decided at init)
}

func (s *sysSocket) init(uc *net.UDPConn, ipv6 bool) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return
	}
	s.rc = rc
	s.hasGSO = true
}

func (s *sysSocket) gso() bool { return s.hasGSO && !s.noGSO.Load() }

// gsoFailed reports whether err means the kernel refuses GSO (rather than
// a transient failure), and if so turns GSO off.
func (s *sysSocket) gsoFailed(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) && (errno == unix.EIO || errno == unix.EINVAL || errno == unix.ENOPROTOOPT || errno == unix.EOPNOTSUPP) {
		s.noGSO.Store(true)
		return true
	}
	return false
}

// gsoControl is a control message holding UDP_SEGMENT = size.
func gsoControl(buf []byte, size int) []byte {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&buf[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&buf[unix.CmsgLen(0)])) = uint16(size)
	return buf[:unix.CmsgSpace(2)]
}

func (s *sysSocket) writeGSO(uc *net.UDPConn, b []byte, size int, to netip.AddrPort) error {
	var oob [64]byte
	for len(b) > 0 {
		n := min(len(b), size*maxGSOSegments, maxGSOBytes/size*size)
		if _, _, err := uc.WriteMsgUDPAddrPort(b[:n], gsoControl(oob[:], size), to); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// sysReader reads with recvmmsg.
type sysReader struct {
	rc    syscall.RawConn
	hdrs  [readBatchSize]unix.Mmsghdr
	iovs  [readBatchSize]unix.Iovec
	names [readBatchSize]unix.RawSockaddrInet6 // large enough for IPv4 too
	// The state of one call, kept here so that doRead, made a method
	// value once, allocates nothing per call.
	vlen   int
	n      int
	errno  syscall.Errno
	doRead func(fd uintptr) bool
}

func (r *sysReader) init(s *socket) {
	r.rc = s.sys.rc
	r.doRead = r.recvmmsg
}

func (r *sysReader) recvmmsg(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(r.vlen), 0, 0, 0)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // nothing to read: wait for the poller
		}
		r.n, r.errno = int(n), errno
		return true
	}
}

func (r *sysReader) read(pkts []*packet) (int, error) {
	if r.rc == nil {
		return 0, errors.New("vaultudp: no raw socket")
	}
	r.vlen = min(len(pkts), readBatchSize)
	for i := 0; i < r.vlen; i++ {
		buf := pkts[i].buf
		r.iovs[i].Base = &buf[0]
		r.iovs[i].SetLen(len(buf))
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = uint32(unsafe.Sizeof(r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Control, h.Flags = nil, 0
		h.SetControllen(0)
	}
	if err := r.rc.Read(r.doRead); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, &net.OpError{Op: "read", Net: "udp", Err: r.errno}
	}
	for i := 0; i < r.n; i++ {
		p := pkts[i]
		h := &r.hdrs[i]
		p.data = p.buf[:h.Len]
		p.truncated = int(h.Len) == len(p.buf) || h.Hdr.Flags&unix.MSG_TRUNC != 0
		p.from = sockaddrToAddrPort(&r.names[i])
	}
	return r.n, nil
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
