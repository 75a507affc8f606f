package main

import (
	"crypto/ed25519"
	"fmt"
	"io"

	"github.com/vaultudp/vaultudp"
)

func runKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keygen", "-o FILE", stderr)
	out := fs.String("o", "", "the private key file to write (mode 0600; must not exist)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		return fmt.Errorf("%w: give the file to write with -o FILE", errUsage)
	}
	k := vaultudp.GenerateIdentity()
	if err := vaultudp.WritePrivateKey(*out, k); err != nil {
		return fmt.Errorf("writing the key: %w (choose a new file name; keygen never overwrites)", err)
	}
	fmt.Fprintln(stdout, vaultudp.EncodePublicKey(k.Public().(ed25519.PublicKey)))
	return nil
}

func runPubkey(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("pubkey", "FILE", stderr)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: give one private key file", errUsage)
	}
	k, err := vaultudp.LoadPrivateKey(fs.Arg(0))
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, vaultudp.EncodePublicKey(k.Public().(ed25519.PublicKey)))
	return nil
}
