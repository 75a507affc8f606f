// Command http3 runs an unchanged HTTP/3 server and client from
// github.com/quic-go/quic-go/http3 over vaultudp: each side's QUIC
// transport is quic.Transport{Conn: c} with c a *vaultudp.Conn, the server
// is http3.Server.ServeListener on that transport's listener, and the
// client is a plain *http.Client whose RoundTripper is an
// http3.Transport dialing through the client's quic.Transport. The same
// code runs over plain UDP, and the responses are the same.
//
//	go run ./http3
//
// What it needs from vaultudp is what quic-go needs (see examples/quic):
// datagrams of at least 1200 bytes, so the example fits QUIC's packets
// into MaxPayload and turns path MTU discovery off, as it does over plain
// UDP too, to keep the two runs alike.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"github.com/vaultudp/vaultudp"
)

// Transport is how the example makes its sockets: plain UDP or vaultudp.
type Transport struct {
	Name   string
	Listen func(address string) (net.PacketConn, error)
}

// UDP is plain, unencrypted UDP.
var UDP = Transport{"udp", func(a string) (net.PacketConn, error) { return net.ListenPacket("udp", a) }}

// Vault is vaultudp with every default.
var Vault = Transport{"vaultudp", func(a string) (net.PacketConn, error) { return vaultudp.Listen("udp", a, nil) }}

// Request is one request the client makes.
type Request struct {
	Method, Path string
	Body         []byte
}

// Requests are the client's requests, in order: a small GET, an upload
// echoed back (many QUIC packets each way), a query.
var Requests = []Request{
	{"GET", "/hello", nil},
	{"POST", "/echo", bytes.Repeat([]byte("0123456789abcdef"), 16<<10)}, // 256 KiB
	{"GET", "/sum?a=40&b=2", nil},
	{"GET", "/missing", nil},
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tr := range []Transport{UDP, Vault} {
		results, err := Run(ctx, tr, "127.0.0.1:0", Requests)
		if err != nil {
			log.Fatalf("%s: %v", tr.Name, err)
		}
		fmt.Printf("over %s:\n", tr.Name)
		for _, r := range results {
			fmt.Println("  " + r)
		}
	}
}

// Run serves HTTP/3 on a socket tr.Listen makes on serverAddr, makes the
// requests from a client on another, and returns one line per response:
// protocol, status, body length and the body's SHA-256 (the body itself
// when short).
func Run(ctx context.Context, tr Transport, serverAddr string, reqs []Request) ([]string, error) {
	serverTLS, clientTLS, err := selfSignedTLS()
	if err != nil {
		return nil, err
	}
	spc, err := tr.Listen(serverAddr)
	if err != nil {
		return nil, err
	}
	defer spc.Close()
	// Unchanged quic-go and http3: only the PacketConn is ours.
	sqt := &quic.Transport{Conn: spc}
	defer sqt.Close()
	ln, err := sqt.ListenEarly(http3.ConfigureTLSConfig(serverTLS), quicConfig(spc))
	if err != nil {
		return nil, err
	}
	srv := &http3.Server{Handler: handler()}
	served := make(chan error, 1)
	go func() { served <- srv.ServeListener(ln) }()
	defer func() {
		srv.Close()
		ln.Close()
		<-served
	}()

	cpc, err := tr.Listen("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer cpc.Close()
	cqt := &quic.Transport{Conn: cpc}
	defer cqt.Close()
	h3 := &http3.Transport{
		TLSClientConfig: clientTLS,
		QUICConfig:      quicConfig(cpc),
		Dial: func(ctx context.Context, addr string, tlsCfg *tls.Config, cfg *quic.Config) (*quic.Conn, error) {
			ua, err := net.ResolveUDPAddr("udp", addr)
			if err != nil {
				return nil, err
			}
			return cqt.DialEarly(ctx, ua, tlsCfg, cfg)
		},
	}
	defer h3.Close()
	client := &http.Client{Transport: h3}

	base := "https://" + spc.LocalAddr().String()
	var out []string
	for _, r := range reqs {
		req, err := http.NewRequestWithContext(ctx, r.Method, base+r.Path, bytes.NewReader(r.Body))
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", r.Method, r.Path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("%s %s: body: %w", r.Method, r.Path, err)
		}
		out = append(out, fmt.Sprintf("%s %s: %s %d, %d bytes, %s", r.Method, r.Path, resp.Proto, resp.StatusCode, len(body), digest(body)))
	}
	return out, nil
}

func digest(b []byte) string {
	if len(b) <= 32 {
		return strconv.Quote(string(b))
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:8])
}

// handler is an ordinary net/http handler.
func handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hello", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello over %s", r.Proto)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
	})
	mux.HandleFunc("GET /sum", func(w http.ResponseWriter, r *http.Request) {
		a, errA := strconv.Atoi(r.URL.Query().Get("a"))
		b, errB := strconv.Atoi(r.URL.Query().Get("b"))
		if err := errors.Join(errA, errB); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprint(w, a+b)
	})
	return mux
}

// quicConfig fits QUIC's packets into pc's datagrams: a vaultudp Conn's
// MaxPayload (see examples/quic), 1280 bytes over plain UDP.
func quicConfig(pc net.PacketConn) *quic.Config {
	size := 1280
	if v, ok := pc.(interface{ MaxPayload() int }); ok {
		size = min(size, v.MaxPayload())
	}
	return &quic.Config{
		InitialPacketSize:       uint16(size),
		DisablePathMTUDiscovery: true,
		MaxIdleTimeout:          10 * time.Second,
	}
}

// selfSignedTLS makes a throwaway certificate for the loopback addresses,
// and the TLS configs of a server that presents it and a client that
// trusts only it.
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
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}}
	client = &tls.Config{RootCAs: roots, NextProtos: []string{http3.NextProtoH3}}
	return server, client, nil
}
