// Command quic runs an unchanged github.com/quic-go/quic-go transport
// over vaultudp on both ends: quic.Transport{Conn: conn} with conn a
// *vaultudp.Conn. The client opens one bidirectional stream and writes
// "hello quic"; the server echoes it back. QUIC's own TLS runs inside
// vaultudp's sealing, belt and braces: the point is that a demanding
// net.PacketConn consumer runs unchanged.
//
//	go run ./quic
//
// What quic-go needs from the PacketConn:
//   - ReadFrom, WriteTo, LocalAddr, SetReadDeadline (Transport.Close
//     stops its read loop with a deadline in the past) and Close.
//   - Datagrams of at least 1200 bytes; it starts at 1280. MaxPayload is
//     1431 on a 1500-byte IPv4 path, so 1280 fits; on a smaller path the
//     example lowers quic.Config.InitialPacketSize to MaxPayload.
//   - SetReadBuffer and SetWriteBuffer, which it calls to raise the
//     socket buffers to 7 MiB; vaultudp forwards them to the socket.
//   - Optional, and deliberately absent from vaultudp.Conn: SyscallConn,
//     ReadMsgUDP and WriteMsgUDP (batch reads, ECN, GSO, the DF bit). With
//     them quic-go would read the socket beneath and bypass decryption.
//     Without them it uses plain ReadFrom/WriteTo, and without the DF bit
//     it does no path MTU discovery (disabled here explicitly too, since
//     its probes would be larger than MaxPayload).
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/vaultudp/vaultudp"
)

const alpn = "vaultudp-example"

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reply, stats, err := run(ctx, "127.0.0.1:0", "127.0.0.1:0", "hello quic", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("echoed over a QUIC stream over vaultudp: %q\n", reply)
	fmt.Printf("server: %d QUIC packets in, %d out, all sealed; largest allowed %d bytes\n",
		stats.DatagramsIn, stats.DatagramsOut, stats.MaxPayload)
}

// run starts a QUIC echo server on serverAddr and a client on clientAddr,
// sends msg on one stream and returns the echo and the server Conn's
// vaultudp counters. Both Conns use config (nil: every default).
func run(ctx context.Context, serverAddr, clientAddr, msg string, config *vaultudp.Config) (reply string, server vaultudp.Stats, err error) {
	serverTLS, clientTLS, err := selfSignedTLS()
	if err != nil {
		return "", server, err
	}

	sconn, err := vaultudp.Listen("udp", serverAddr, config)
	if err != nil {
		return "", server, err
	}
	defer sconn.Close()
	// An unchanged quic-go Transport: only its Conn is ours.
	str := &quic.Transport{Conn: sconn}
	defer str.Close()
	qconf, err := quicConfig(sconn)
	if err != nil {
		return "", server, err
	}
	ln, err := str.Listen(serverTLS, qconf)
	if err != nil {
		return "", server, err
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() { served <- serveEcho(ctx, ln) }()

	cconn, err := vaultudp.Listen("udp", clientAddr, config)
	if err != nil {
		return "", server, err
	}
	defer cconn.Close()
	ctr := &quic.Transport{Conn: cconn}
	defer ctr.Close()

	qconf, err = quicConfig(cconn)
	if err != nil {
		return "", server, err
	}
	qc, err := ctr.Dial(ctx, sconn.LocalAddr(), clientTLS, qconf)
	if err != nil {
		return "", server, fmt.Errorf("dial: %w", err)
	}
	defer qc.CloseWithError(0, "done")
	stream, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return "", server, err
	}
	if d, ok := ctx.Deadline(); ok {
		stream.SetDeadline(d)
	}
	if _, err := stream.Write([]byte(msg)); err != nil {
		return "", server, err
	}
	stream.Close() // our side is done: the server sees EOF
	echoed, err := io.ReadAll(stream)
	if err != nil {
		return "", server, err
	}
	if err := <-served; err != nil {
		return "", server, fmt.Errorf("server: %w", err)
	}
	return string(echoed), sconn.Stats(), nil
}

// serveEcho accepts one QUIC connection and echoes its first stream.
func serveEcho(ctx context.Context, ln *quic.Listener) error {
	qc, err := ln.Accept(ctx)
	if err != nil {
		return err
	}
	stream, err := qc.AcceptStream(ctx)
	if err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		stream.SetDeadline(d)
	}
	if _, err := io.Copy(stream, stream); err != nil { // until the client's EOF
		return err
	}
	return stream.Close()
}

// quicConfig fits QUIC's packets into conn's datagrams.
func quicConfig(conn *vaultudp.Conn) (*quic.Config, error) {
	const quicDefault, quicMin = 1280, 1200
	if conn.MaxPayload() < quicMin {
		return nil, fmt.Errorf("vaultudp MaxPayload %d is below QUIC's minimum datagram of %d bytes: raise the MTU (Config.MTU)",
			conn.MaxPayload(), quicMin)
	}
	return &quic.Config{
		InitialPacketSize:       uint16(min(quicDefault, conn.MaxPayload())),
		DisablePathMTUDiscovery: true,
	}, nil
}

// selfSignedTLS makes a throwaway certificate for localhost and the
// loopback addresses, and the TLS configs of a server that presents it
// and a client that trusts only it.
func selfSignedTLS() (server, client *tls.Config, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	server = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}},
		NextProtos:   []string{alpn},
	}
	client = &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{alpn}}
	return server, client, nil
}
