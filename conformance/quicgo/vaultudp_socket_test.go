//go:build vaultudp_quicgo_suite

// This file is added to quic-go's integration tests (integrationtests/self
// of the quic-go version in examples/go.mod) when .ci/quicgo-suite.sh
// assembles that suite from the module cache. The script deletes the
// suite's own newUDPConnLocalhost, which returns a *net.UDPConn on
// 127.0.0.1, so that every socket the suite asks its helper for is this
// file's: a vaultudp Conn on 127.0.0.1 with the default Config. The
// sockets of the suite's UDP proxy, a middlebox between the endpoints,
// stay plain UDP (newPlainUDPConnLocalhost). The build constraint keeps
// the file out of this repository's own builds; the script drops it.

package self_test

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/vaultudp/vaultudp"
)

// vaultConn is a vaultudp Conn with the two methods of *net.UDPConn that
// the suite calls on its sockets besides net.PacketConn's. It embeds the
// *vaultudp.Conn, so quic-go sees every method the Conn has, and no more.
type vaultConn struct{ *vaultudp.Conn }

// Read reads one datagram, as (*net.UDPConn).Read does.
func (c vaultConn) Read(b []byte) (int, error) {
	n, _, err := c.ReadFrom(b)
	return n, err
}

// ReadFromUDP is (*net.UDPConn).ReadFromUDP.
func (c vaultConn) ReadFromUDP(b []byte) (int, *net.UDPAddr, error) {
	n, addr, err := c.ReadFromUDPAddrPort(b)
	return n, net.UDPAddrFromAddrPort(addr), err
}

func newUDPConnLocalhost(t testing.TB) vaultConn {
	t.Helper()
	conn, err := vaultudp.Listen("udp4", "127.0.0.1:0", nil)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return vaultConn{conn}
}

// newPlainUDPConnLocalhost is the suite's original helper, for the
// sockets of its proxy (a middlebox, which relays datagrams as they are).
func newPlainUDPConnLocalhost(t testing.TB) *net.UDPConn {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 0})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}
