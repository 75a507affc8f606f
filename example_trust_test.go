package vaultudp_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vaultudp/vaultudp"
)

// A server that accepts only the clients it was told about, as WireGuard
// does: an AllowList, loaded from the file format the vaultudp command's
// -allow-file reads, is its VerifyPeer.
func ExampleAllowList() {
	clientKey := vaultudp.GenerateIdentity() // in practice: vaultudp.LoadPrivateKey
	list := vaultudp.EncodePublicKey(clientKey.Public().(ed25519.PublicKey)) + " # alice\n"
	allowed := vaultudp.NewAllowList()
	if err := allowed.Load(strings.NewReader(list), "allowed_keys"); err != nil { // or vaultudp.LoadAllowList(path)
		log.Fatal(err)
	}
	server, err := vaultudp.Listen("udp", "127.0.0.1:0", &vaultudp.Config{VerifyPeer: allowed.VerifyPeer})
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	to := netip.MustParseAddrPort(server.LocalAddr().String())

	for _, who := range []struct {
		name string
		key  ed25519.PrivateKey
	}{{"alice", clientKey}, {"a stranger", vaultudp.GenerateIdentity()}} {
		c, err := vaultudp.Listen("udp", "127.0.0.1:0", &vaultudp.Config{Identity: who.key, HandshakeTimeout: 500 * time.Millisecond})
		if err != nil {
			log.Fatal(err)
		}
		err = c.Handshake(context.Background(), to)
		fmt.Printf("%s: handshake ok %v\n", who.name, err == nil)
		c.Close()
	}
	// Output:
	// alice: handshake ok true
	// a stranger: handshake ok false
}

// A client that trusts a server's key on first use and remembers it in a
// file, as ssh's known_hosts: a later key for that address is refused,
// with the file's line to remove if the change is expected.
func ExampleKnownHosts() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "known_hosts") // the vaultudp command: os.UserConfigDir()/vaultudp/known_hosts

	server, err := vaultudp.Listen("udp", "127.0.0.1:0", nil)
	if err != nil {
		log.Fatal(err)
	}
	to := netip.MustParseAddrPort(server.LocalAddr().String())
	contact := func() error {
		known, err := vaultudp.OpenKnownHosts(path)
		if err != nil {
			return err
		}
		client, err := vaultudp.Listen("udp", "127.0.0.1:0", &vaultudp.Config{
			// Only the server's address is remembered: any other that
			// contacts this client is refused.
			VerifyPeer: func(addr netip.AddrPort, key ed25519.PublicKey) error {
				if addr != to {
					return errors.New("not the server")
				}
				return known.VerifyPeer(addr, key)
			},
			HandshakeTimeout: time.Second,
		})
		if err != nil {
			return err
		}
		defer client.Close()
		return client.Handshake(context.Background(), to)
	}
	fmt.Println("first contact:", contact())
	fmt.Println("again:", contact())

	// The server gets another identity at the same address.
	server.Close()
	impostor, err := vaultudp.Listen("udp", to.String(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer impostor.Close()
	err = contact()
	var changed *vaultudp.KeyChangedError
	if errors.As(err, &changed) {
		fmt.Printf("refused: key changed, remembered at line %d\n", changed.Line)
	}
	// Output:
	// first contact: <nil>
	// again: <nil>
	// refused: key changed, remembered at line 1
}
