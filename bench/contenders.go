package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v3"
	"github.com/pion/logging"
	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/qlog"
	"github.com/quic-go/quic-go/qlogwriter"
	"github.com/vaultudp/vaultudp"
)

const batchSize = 64

// endpoint is one side of a pair. Send/Recv move one datagram; SendN/RecvN
// move many (batch contenders override them, the others loop).
type endpoint interface {
	Send(p []byte) error
	Recv(buf []byte) (int, error)
	// SendN sends n datagrams with payload p and reports how many went.
	SendN(p []byte, n int) (int, error)
	// RecvN waits for at least one datagram and reports how many it got.
	RecvN(buf []byte) (int, error)
	// Unblock makes a blocked Recv/RecvN (and later ones) return an error.
	Unblock()
}

// pair is a connected sender a and receiver b.
type pair struct {
	a, b       endpoint
	maxPayload int // largest datagram a may send to b (at the time of setup)
	close      func()
}

// contender is one way of moving datagrams. newPair makes a connected
// pair (handshake done); first, when set, measures nothing → first
// delivered datagram its own way (otherwise: newPair, one Send, one Recv).
type contender struct {
	key     string // for -only
	name    string
	newPair func(ctx context.Context) (*pair, error)
	first   func(ctx context.Context, msg []byte) error
	hsOnly  bool // measured for the first datagram only
	// firstName, when set, names the first-datagram row instead of name.
	firstName string
	noFirst   bool // not measured for the first datagram (the same as another contender there)
}

// env is what the contenders share: the options, the TLS material of
// quic-go and pion/dtls, and what they report about themselves.
type env struct {
	o        options
	tlsCert  tls.Certificate
	rootCAs  *x509.CertPool
	dtlsLogs logging.LoggerFactory

	quicDrops struct{ sendTooLarge, recvBufferFull, other atomic.Int64 }

	infoMu      sync.Mutex
	quicTLSInfo string
	dtlsInfo    string
}

func newEnv(o options, stderr io.Writer) (*env, error) {
	e := &env{o: o, dtlsLogs: &logging.DefaultLoggerFactory{Writer: stderr, DefaultLogLevel: logging.LogLevelError}}
	if err := e.makeCert(); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *env) contenders() []contender {
	def := func() *vaultudp.Config { return nil }
	nopad := func() *vaultudp.Config { return &vaultudp.Config{Padding: vaultudp.PadNone} }
	return []contender{
		{key: "raw", name: "raw UDP (*net.UDPConn, 4 MiB bufs)", newPair: newRaw},
		{key: "vault", name: "vaultudp default (PadMTU)", newPair: newVault(def, false), first: vaultFirst(def, false),
			firstName: "vaultudp default, nobody reading until the datagram was written"},
		{key: "vaultnopad", name: "vaultudp PadNone", newPair: newVault(nopad, false), noFirst: true},
		{key: "vaultbatch", name: "vaultudp Write/ReadBatch ×64", newPair: newVault(def, true), noFirst: true},
		{key: "quic", name: "quic-go datagrams (RFC 9221)", newPair: e.newQuic},
		{key: "dtls", name: "pion/dtls v3", newPair: e.newDTLS},
		{key: "vaultready", name: "vaultudp default, both ends already in ReadFrom", first: vaultFirst(def, true), hsOnly: true},
	}
}

func contenderKeys() []string {
	var ks []string
	for _, c := range (&env{}).contenders() {
		ks = append(ks, c.key)
	}
	return ks
}

func udpPair() (*net.UDPConn, *net.UDPConn, error) {
	a, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, err
	}
	b, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		a.Close()
		return nil, nil, err
	}
	return a, b, nil
}

// setBuffers gives a socket the buffers vaultudp.Listen asks for, so that
// the comparison is fair.
func setBuffers(cs ...*net.UDPConn) {
	for _, c := range cs {
		c.SetReadBuffer(vaultudp.SocketBuffer)
		c.SetWriteBuffer(vaultudp.SocketBuffer)
	}
}

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.UDPAddr).AddrPort() }

// loopSend gives SendN to one-at-a-time endpoints.
func loopSend(send func([]byte) error, p []byte, n int) (int, error) {
	for i := 0; i < n; i++ {
		if err := send(p); err != nil {
			return i, err
		}
	}
	return n, nil
}

// ---------------------------------------------------------------- raw UDP

type rawEP struct {
	c    *net.UDPConn
	peer netip.AddrPort
}

func (e *rawEP) Send(p []byte) error {
	_, err := e.c.WriteToUDPAddrPort(p, e.peer)
	return err
}
func (e *rawEP) Recv(buf []byte) (int, error) {
	n, _, err := e.c.ReadFromUDPAddrPort(buf)
	return n, err
}
func (e *rawEP) SendN(p []byte, n int) (int, error) { return loopSend(e.Send, p, n) }
func (e *rawEP) RecvN(buf []byte) (int, error) {
	if _, err := e.Recv(buf); err != nil {
		return 0, err
	}
	return 1, nil
}
func (e *rawEP) Unblock() { e.c.SetReadDeadline(time.Unix(1, 0)) }

func newRaw(context.Context) (*pair, error) {
	a, b, err := udpPair()
	if err != nil {
		return nil, err
	}
	setBuffers(a, b)
	return &pair{
		a:          &rawEP{c: a, peer: addrPort(b.LocalAddr())},
		b:          &rawEP{c: b, peer: addrPort(a.LocalAddr())},
		maxPayload: 65507,
		close:      func() { a.Close(); b.Close() },
	}, nil
}

// ---------------------------------------------------------------- vaultudp

type vaultEP struct {
	c    *vaultudp.Conn
	peer netip.AddrPort
}

func (e *vaultEP) Send(p []byte) error {
	_, err := e.c.WriteToUDPAddrPort(p, e.peer)
	return err
}
func (e *vaultEP) Recv(buf []byte) (int, error) {
	n, _, err := e.c.ReadFromUDPAddrPort(buf)
	return n, err
}
func (e *vaultEP) SendN(p []byte, n int) (int, error) { return loopSend(e.Send, p, n) }
func (e *vaultEP) RecvN(buf []byte) (int, error) {
	if _, err := e.Recv(buf); err != nil {
		return 0, err
	}
	return 1, nil
}
func (e *vaultEP) Unblock() { e.c.SetReadDeadline(time.Unix(1, 0)) }

// vaultBatchEP uses WriteBatch/ReadBatch, 64 datagrams per call (one per
// call for Send/Recv, i.e. the ping-pong).
type vaultBatchEP struct {
	vaultEP
	out, in []vaultudp.Message
}

func newVaultBatchEP(c *vaultudp.Conn, peer netip.AddrPort) *vaultBatchEP {
	e := &vaultBatchEP{vaultEP: vaultEP{c: c, peer: peer}}
	e.out = make([]vaultudp.Message, batchSize)
	e.in = make([]vaultudp.Message, batchSize)
	for i := range e.out {
		e.out[i].Addr = peer
	}
	return e
}

// inBufs gives the receive messages their buffers on first use.
func (e *vaultBatchEP) inBufs() {
	if e.in[batchSize-1].Buf == nil {
		for i := range e.in {
			e.in[i].Buf = make([]byte, 2048) // > MaxPayload (1431 at most on IPv4 with a 1500 MTU)
		}
	}
}

func (e *vaultBatchEP) Send(p []byte) error {
	e.out[0].Buf = p
	_, err := e.c.WriteBatch(e.out[:1])
	return err
}
func (e *vaultBatchEP) Recv(buf []byte) (int, error) {
	e.in[0].Buf = buf
	_, err := e.c.ReadBatch(e.in[:1])
	return e.in[0].N, err
}
func (e *vaultBatchEP) SendN(p []byte, n int) (int, error) {
	sent := 0
	for sent < n {
		k := min(n-sent, batchSize)
		for i := 0; i < k; i++ {
			e.out[i].Buf = p
		}
		m, err := e.c.WriteBatch(e.out[:k])
		sent += m
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}
func (e *vaultBatchEP) RecvN([]byte) (int, error) {
	e.inBufs()
	return e.c.ReadBatch(e.in)
}

// newVault makes a pair of Listened Conns; a adds b as a peer and waits
// for the handshake.
func newVault(cfg func() *vaultudp.Config, batch bool) func(context.Context) (*pair, error) {
	return func(ctx context.Context) (*pair, error) {
		a, err := vaultudp.Listen("udp4", "127.0.0.1:0", cfg())
		if err != nil {
			return nil, err
		}
		b, err := vaultudp.Listen("udp4", "127.0.0.1:0", cfg())
		if err != nil {
			a.Close()
			return nil, err
		}
		closeAll := func() { a.Close(); b.Close() }
		bAP, aAP := addrPort(b.LocalAddr()), addrPort(a.LocalAddr())
		if err := a.AddPeer(vaultudp.PeerConfig{Addr: bAP}); err != nil {
			closeAll()
			return nil, err
		}
		if err := a.Handshake(ctx, bAP); err != nil {
			closeAll()
			return nil, err
		}
		p := &pair{maxPayload: a.MaxPayload(), close: closeAll}
		if batch {
			p.a, p.b = newVaultBatchEP(a, bAP), newVaultBatchEP(b, aAP)
		} else {
			p.a, p.b = &vaultEP{c: a, peer: bAP}, &vaultEP{c: b, peer: aAP}
		}
		return p, nil
	}
}

// vaultFirst is nothing → first delivered datagram the way a program does
// it: Listen both ends, a.AddPeer(b) (which starts the handshake), one
// WriteTo at once (queued until the handshake completes), b reads it. No
// explicit Handshake call. With ready, both Conns have a goroutine blocked
// in ReadFromUDPAddrPort from right after Listen (a serving program, and a
// client that reads replies); without, nobody reads until the datagram was
// written, so the handshake is answered by the Conns' own background
// readers.
func vaultFirst(cfg func() *vaultudp.Config, ready bool) func(context.Context, []byte) error {
	return func(ctx context.Context, msg []byte) error {
		a, err := vaultudp.Listen("udp4", "127.0.0.1:0", cfg())
		if err != nil {
			return err
		}
		defer a.Close()
		b, err := vaultudp.Listen("udp4", "127.0.0.1:0", cfg())
		if err != nil {
			return err
		}
		defer b.Close()
		if dl, ok := ctx.Deadline(); ok {
			b.SetReadDeadline(dl)
		}
		got := make(chan error, 1)
		if ready {
			go func() {
				buf := make([]byte, 65536)
				for {
					if _, _, err := a.ReadFromUDPAddrPort(buf); err != nil {
						return
					}
				}
			}()
			go func() {
				buf := make([]byte, 65536)
				_, _, err := b.ReadFromUDPAddrPort(buf)
				got <- err
			}()
		}
		bAP := addrPort(b.LocalAddr())
		if err := a.AddPeer(vaultudp.PeerConfig{Addr: bAP}); err != nil {
			return err
		}
		if _, err := a.WriteToUDPAddrPort(msg, bAP); err != nil {
			return err
		}
		if !ready {
			buf := make([]byte, 65536)
			_, _, err := b.ReadFromUDPAddrPort(buf)
			return err
		}
		return <-got
	}
}

// ---------------------------------------------------------------- TLS material

func (e *env) makeCert() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	e.tlsCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	e.rootCAs = x509.NewCertPool()
	e.rootCAs.AddCert(leaf)
	return nil
}

// ---------------------------------------------------------------- quic-go

type quicEP struct {
	c      *quic.Conn
	ctx    context.Context
	cancel context.CancelFunc
}

func newQuicEP(c *quic.Conn) *quicEP {
	ctx, cancel := context.WithCancel(context.Background())
	return &quicEP{c: c, ctx: ctx, cancel: cancel}
}

func (e *quicEP) Send(p []byte) error { return e.c.SendDatagram(p) }
func (e *quicEP) Recv(buf []byte) (int, error) {
	d, err := e.c.ReceiveDatagram(e.ctx)
	if err != nil {
		return 0, err
	}
	return copy(buf, d), nil
}
func (e *quicEP) SendN(p []byte, n int) (int, error) { return loopSend(e.Send, p, n) }
func (e *quicEP) RecvN([]byte) (int, error) {
	if _, err := e.c.ReceiveDatagram(e.ctx); err != nil {
		return 0, err
	}
	return 1, nil
}
func (e *quicEP) Unblock() { e.cancel() }

// dropCounter counts quic-go's own datagram drops (qlog DatagramDropped
// events), only with -quictrace: a tracer makes quic-go build an event
// for every packet, which costs CPU and allocations.
type dropCounter struct{ e *env }

func (d dropCounter) AddProducer() qlogwriter.Recorder { return d }
func (dropCounter) Close() error                       { return nil }
func (d dropCounter) RecordEvent(ev qlogwriter.Event) {
	dd, ok := ev.(qlog.DatagramDropped)
	if !ok {
		return
	}
	switch dd.Trigger {
	case "too_large":
		d.e.quicDrops.sendTooLarge.Add(1)
	case "buffer_full":
		d.e.quicDrops.recvBufferFull.Add(1)
	default:
		d.e.quicDrops.other.Add(1)
	}
}

func (e *env) quicDropTotal() int64 {
	return e.quicDrops.recvBufferFull.Load() + e.quicDrops.sendTooLarge.Load() + e.quicDrops.other.Load()
}

func (e *env) quicConfig() *quic.Config {
	c := &quic.Config{EnableDatagrams: true}
	if e.o.quicTrace {
		c.Tracer = func(context.Context, bool, quic.ConnectionID) qlogwriter.Trace { return dropCounter{e} }
	}
	return c
}

func (e *env) newQuic(ctx context.Context) (*pair, error) {
	uc, us, err := udpPair()
	if err != nil {
		return nil, err
	}
	trS := &quic.Transport{Conn: us}
	trC := &quic.Transport{Conn: uc}
	closeAll := func() {
		trC.Close()
		trS.Close()
		uc.Close()
		us.Close()
	}
	ln, err := trS.Listen(&tls.Config{Certificates: []tls.Certificate{e.tlsCert}, NextProtos: []string{"bench"}}, e.quicConfig())
	if err != nil {
		closeAll()
		return nil, err
	}
	type acc struct {
		c   *quic.Conn
		err error
	}
	accepted := make(chan acc, 1)
	go func() {
		c, err := ln.Accept(ctx)
		accepted <- acc{c, err}
	}()
	cc, err := trC.Dial(ctx, us.LocalAddr(), &tls.Config{RootCAs: e.rootCAs, ServerName: "localhost", NextProtos: []string{"bench"}}, e.quicConfig())
	if err != nil {
		ln.Close()
		<-accepted
		closeAll()
		return nil, err
	}
	ar := <-accepted
	if ar.err != nil {
		cc.CloseWithError(0, "")
		ln.Close()
		closeAll()
		return nil, ar.err
	}
	sc := ar.c
	e.infoMu.Lock()
	if e.quicTLSInfo == "" {
		st := cc.ConnectionState().TLS
		e.quicTLSInfo = fmt.Sprintf("%s, key exchange %v", tls.CipherSuiteName(st.CipherSuite), st.CurveID)
	}
	e.infoMu.Unlock()
	if !cc.ConnectionState().SupportsDatagrams.Remote || !sc.ConnectionState().SupportsDatagrams.Remote {
		closeAll()
		return nil, errors.New("quic: datagrams not negotiated")
	}
	maxP := 65535
	var tooLarge *quic.DatagramTooLargeError
	if err := cc.SendDatagram(make([]byte, 65535)); errors.As(err, &tooLarge) {
		maxP = int(tooLarge.MaxDatagramPayloadSize)
	} else if err != nil {
		closeAll()
		return nil, fmt.Errorf("quic: probing max datagram: %w", err)
	}
	a, b := newQuicEP(cc), newQuicEP(sc)
	return &pair{a: a, b: b, maxPayload: maxP, close: func() {
		a.cancel()
		b.cancel()
		cc.CloseWithError(0, "")
		sc.CloseWithError(0, "")
		ln.Close()
		closeAll()
	}}, nil
}

// ---------------------------------------------------------------- pion/dtls

type dtlsEP struct{ c *dtls.Conn }

func (e *dtlsEP) Send(p []byte) error {
	_, err := e.c.Write(p)
	return err
}
func (e *dtlsEP) Recv(buf []byte) (int, error)       { return e.c.Read(buf) }
func (e *dtlsEP) SendN(p []byte, n int) (int, error) { return loopSend(e.Send, p, n) }
func (e *dtlsEP) RecvN(buf []byte) (int, error) {
	if _, err := e.c.Read(buf); err != nil {
		return 0, err
	}
	return 1, nil
}
func (e *dtlsEP) Unblock() { e.c.SetReadDeadline(time.Unix(1, 0)) }

// dtlsMaxPayload: pion does not cut application data to its MTU (that
// is for handshake fragments); a record holds at most 2^14 bytes, and
// pion reads datagrams into 8 KiB buffers.
const dtlsMaxPayload = 8192 - 64

func (e *env) dtlsSuite() dtls.CipherSuiteID {
	if e.o.dtlsSuite == "aes" {
		return dtls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
	}
	return dtls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
}

func (e *env) newDTLS(ctx context.Context) (*pair, error) {
	uc, us, err := udpPair()
	if err != nil {
		return nil, err
	}
	// pion leaves the socket as it is: give it the buffers raw and vaultudp have.
	setBuffers(uc, us)
	srv, err := dtls.ServerWithOptions(us, uc.LocalAddr(),
		dtls.WithCertificates(e.tlsCert),
		dtls.WithCipherSuites(e.dtlsSuite()),
		dtls.WithLoggerFactory(e.dtlsLogs))
	if err != nil {
		uc.Close()
		us.Close()
		return nil, err
	}
	cli, err := dtls.ClientWithOptions(uc, us.LocalAddr(),
		dtls.WithRootCAs(e.rootCAs),
		dtls.WithServerName("localhost"),
		dtls.WithCipherSuites(e.dtlsSuite()),
		dtls.WithLoggerFactory(e.dtlsLogs))
	if err != nil {
		srv.Close()
		uc.Close()
		us.Close()
		return nil, err
	}
	closeAll := func() { cli.Close(); srv.Close(); uc.Close(); us.Close() }
	srvErr := make(chan error, 1)
	go func() { srvErr <- srv.HandshakeContext(ctx) }()
	if err := cli.HandshakeContext(ctx); err != nil {
		closeAll()
		<-srvErr
		return nil, err
	}
	if err := <-srvErr; err != nil {
		closeAll()
		return nil, err
	}
	e.infoMu.Lock()
	if e.dtlsInfo == "" {
		if st, ok := cli.ConnectionState(); ok {
			e.dtlsInfo = fmt.Sprintf("negotiated %s", dtls.CipherSuiteName(st.CipherSuiteID))
		}
	}
	e.infoMu.Unlock()
	return &pair{a: &dtlsEP{cli}, b: &dtlsEP{srv}, maxPayload: dtlsMaxPayload, close: closeAll}, nil
}
