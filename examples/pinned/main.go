// Command pinned connects two endpoints that trust only each other's
// keys, loaded from key files as `vaultudp keygen` writes them:
//
//   - the client pins the server's public key, given as text (what
//     `vaultudp keygen` and `vaultudp pubkey` print);
//   - the server accepts only the client's key, with Config.VerifyPeer;
//   - a third endpoint with a key of its own is refused: the server drops
//     its handshakes (counted in Stats().Drops.Rejected) and the
//     stranger's Handshake fails with ErrHandshakeTimeout.
//
// Run it with:
//
//	go run ./pinned
package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vaultudp/vaultudp"
)

func main() {
	dir, err := os.MkdirTemp("", "vaultudp-pinned-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := run(ctx, dir, "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("server got %q, client got %q\n", r.ToServer, r.ToClient)
	fmt.Printf("stranger: %v\n", r.StrangerErr)
	fmt.Printf("server refused %d handshakes\n", r.Rejected)
}

// result is what run observed.
type result struct {
	ToServer, ToClient string // the datagrams that arrived each way
	StrangerErr        error  // the third endpoint's Handshake error
	Rejected           uint64 // the server's Stats().Drops.Rejected
}

// run makes key files in dir, then starts a server on serverAddr, a
// client on clientAddr and a stranger on strangerAddr.
func run(ctx context.Context, dir, serverAddr, clientAddr, strangerAddr string) (result, error) {
	var r result
	// The key files, as `vaultudp keygen -o server.key` writes them
	// (mode 0600); each side loads its own.
	serverKey, err := keyFile(filepath.Join(dir, "server.key"))
	if err != nil {
		return r, err
	}
	clientKey, err := keyFile(filepath.Join(dir, "client.key"))
	if err != nil {
		return r, err
	}
	// The public keys travel out of band as text (`vaultudp pubkey`).
	serverPub := vaultudp.EncodePublicKey(serverKey.Public().(ed25519.PublicKey))
	clientPub := vaultudp.EncodePublicKey(clientKey.Public().(ed25519.PublicKey))

	// The server trusts the client's key and no other.
	trusted, err := vaultudp.ParsePublicKey(clientPub)
	if err != nil {
		return r, err
	}
	server, err := vaultudp.Listen("udp", serverAddr, &vaultudp.Config{
		Identity: serverKey,
		VerifyPeer: func(addr netip.AddrPort, key ed25519.PublicKey) error {
			if !key.Equal(trusted) {
				return fmt.Errorf("%v: unknown key %s", addr, vaultudp.EncodePublicKey(key))
			}
			return nil
		},
	})
	if err != nil {
		return r, err
	}
	defer server.Close()
	serverAP := server.LocalAddr().(*net.UDPAddr).AddrPort()

	// The client pins the server's key: a handshake with any other key
	// (a man in the middle) fails.
	pinned, err := vaultudp.ParsePublicKey(serverPub)
	if err != nil {
		return r, err
	}
	client, err := vaultudp.Listen("udp", clientAddr, &vaultudp.Config{
		Identity: clientKey,
		Peers:    []vaultudp.PeerConfig{{Addr: serverAP, PublicKey: pinned}},
	})
	if err != nil {
		return r, err
	}
	defer client.Close()

	// A datagram each way.
	if d, ok := ctx.Deadline(); ok {
		server.SetReadDeadline(d)
		client.SetReadDeadline(d)
	}
	if r.ToServer, err = exchange(client, server, "ping from the client"); err != nil {
		return r, err
	}
	if r.ToClient, err = exchange(server, client, "pong from the server"); err != nil {
		return r, err
	}

	// A stranger with a key of its own. The server drops its hellos in
	// silence, so the stranger learns nothing and gives up after its
	// HandshakeTimeout.
	stranger, err := vaultudp.Listen("udp", strangerAddr, &vaultudp.Config{
		Identity:         vaultudp.GenerateIdentity(),
		HandshakeTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		return r, err
	}
	defer stranger.Close()
	r.StrangerErr = stranger.Handshake(ctx, serverAP)
	if r.StrangerErr == nil {
		return r, errors.New("the server accepted a stranger")
	}
	r.Rejected = server.Stats().Drops.Rejected
	return r, nil
}

// keyFile writes a new identity to path, as `vaultudp keygen` does, and
// loads it back, as a program that is given the file does.
func keyFile(path string) (ed25519.PrivateKey, error) {
	if err := vaultudp.WritePrivateKey(path, vaultudp.GenerateIdentity()); err != nil {
		return nil, err
	}
	return vaultudp.LoadPrivateKey(path)
}

// exchange sends msg from one Conn to the other and returns what arrived.
func exchange(from, to *vaultudp.Conn, msg string) (string, error) {
	if _, err := from.WriteTo([]byte(msg), to.LocalAddr()); err != nil {
		return "", err
	}
	buf := make([]byte, to.MaxPayload())
	n, src, err := to.ReadFrom(buf)
	if err != nil {
		return "", err
	}
	if src.String() != from.LocalAddr().String() {
		return "", fmt.Errorf("datagram from %v, want %v", src, from.LocalAddr())
	}
	return string(buf[:n]), nil
}
