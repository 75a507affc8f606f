package vaultudp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// TestZeroConn: a zero Conn, and a nil *Conn, fail every method with an
// error wrapping syscall.EINVAL, or return a zero value, as a zero
// *net.UDPConn does; none panics.
func TestZeroConn(t *testing.T) {
	parallel(t)
	var udp net.UDPConn
	if err := udp.Close(); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("the model: a zero *net.UDPConn's Close is %v", err)
	}
	addr := netip.MustParseAddrPort("127.0.0.1:9")
	for _, c := range []*Conn{new(Conn), nil} {
		errs := map[string]error{}
		errs["Close"] = c.Close()
		_, _, errs["ReadFrom"] = c.ReadFrom(make([]byte, 8))
		_, _, errs["ReadFromUDPAddrPort"] = c.ReadFromUDPAddrPort(make([]byte, 8))
		_, errs["WriteTo"] = c.WriteTo([]byte("x"), net.UDPAddrFromAddrPort(addr))
		_, errs["WriteToUDPAddrPort"] = c.WriteToUDPAddrPort([]byte("x"), addr)
		errs["SetDeadline"] = c.SetDeadline(time.Now())
		errs["SetReadDeadline"] = c.SetReadDeadline(time.Now())
		errs["SetWriteDeadline"] = c.SetWriteDeadline(time.Now())
		errs["SetReadBuffer"] = c.SetReadBuffer(1)
		errs["SetWriteBuffer"] = c.SetWriteBuffer(1)
		_, errs["ReadBatch"] = c.ReadBatch([]Message{{Buf: make([]byte, 8)}})
		_, errs["WriteBatch"] = c.WriteBatch([]Message{{Buf: []byte("x"), Addr: addr}})
		_, errs["ConnTo"] = c.ConnTo(addr)
		errs["Handshake"] = c.Handshake(context.Background(), addr)
		errs["Rebind"] = c.Rebind("127.0.0.1:0")
		errs["AddPeer"] = c.AddPeer(PeerConfig{Addr: addr})
		errs["RemovePeer"] = c.RemovePeer(addr)
		_, errs["Broadcast"] = c.Broadcast([]byte("x"))
		for name, err := range errs {
			if !errors.Is(err, syscall.EINVAL) {
				t.Errorf("%T %v: %s = %v, want an error wrapping EINVAL", c, c == nil, name, err)
			}
		}
		if c.LocalAddr() != nil || c.PublicKey() != nil || c.MaxPayload() != 0 || c.MaxPayloadTo(addr) != 0 ||
			c.HasPeer(addr) || c.Peers() != nil || c.PeersByIP(addr.Addr()) != nil || c.Stats() != (Stats{}) {
			t.Errorf("a zero Conn's accessors return values")
		}
		if b, s := c.V2PublicKeys(); b != nil || s != nil {
			t.Errorf("a zero Conn's V2PublicKeys returns keys")
		}
	}
}
