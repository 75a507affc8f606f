package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/vaultudp/vaultudp"
)

// peerFlags are the flags listen and send share.
type peerFlags struct {
	key    *string
	peers  []vaultudp.PeerConfig
	policy *string
	bind   *string
}

func addPeerFlags(fs *flag.FlagSet, bindDefault string) *peerFlags {
	pf := &peerFlags{}
	pf.key = fs.String("key", "", "private identity key file (from 'vaultudp keygen'); default: a fresh identity")
	pf.policy = fs.String("policy", "require-encryption", "require-encryption, opportunistic or plaintext")
	pf.bind = fs.String("bind", bindDefault, "local address to listen on")
	fs.Func("peer", "a peer, ADDR or ADDR=PUBKEY to pin its key (repeatable)", func(s string) error {
		addr, key, _ := strings.Cut(s, "=")
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return fmt.Errorf("peer address %q: want IP:PORT", addr)
		}
		pc := vaultudp.PeerConfig{Addr: ap}
		if key != "" {
			if pc.PublicKey, err = vaultudp.ParsePublicKey(key); err != nil {
				return err
			}
		}
		pf.peers = append(pf.peers, pc)
		return nil
	})
	return pf
}

func (pf *peerFlags) config() (*vaultudp.Config, error) {
	cfg := &vaultudp.Config{Peers: pf.peers}
	var err error
	if cfg.Policy, err = vaultudp.ParsePolicy(*pf.policy); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if *pf.key != "" {
		if cfg.Identity, err = vaultudp.LoadPrivateKey(*pf.key); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func runListen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("listen", "[flags] ADDR", stderr)
	pf := addPeerFlags(fs, "")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: give the address to listen on, e.g. 127.0.0.1:11000", errUsage)
	}
	cfg, err := pf.config()
	if err != nil {
		return err
	}
	c, err := vaultudp.Listen("udp", fs.Arg(0), cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stderr, "listening on %v, identity %s\n", c.LocalAddr(), vaultudp.EncodePublicKey(c.PublicKey()))
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt)
		<-sig
		c.Close()
	}()
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return nil // closed by the interrupt
		}
		fmt.Fprintf(stdout, "%v %s\n", from, buf[:n])
	}
}

func runSend(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("send", "[flags] ADDR", stderr)
	pf := addPeerFlags(fs, "0.0.0.0:0")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: give the address to send to, e.g. 127.0.0.1:11000", errUsage)
	}
	to, err := netip.ParseAddrPort(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("%w: destination %q: want IP:PORT", errUsage, fs.Arg(0))
	}
	cfg, err := pf.config()
	if err != nil {
		return err
	}
	c, err := vaultudp.Listen("udp", *pf.bind, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	if cfg.Policy != vaultudp.Plaintext {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		fmt.Fprintf(stderr, "handshake with %v...\n", to)
		if err := c.Handshake(ctx, to); err != nil {
			return fmt.Errorf("%w (is 'vaultudp listen' running there, and does it trust this key?)", err)
		}
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		if _, err := c.WriteToUDPAddrPort(sc.Bytes(), to); err != nil {
			return err
		}
	}
	return sc.Err()
}
