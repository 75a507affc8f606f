package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/vaultudp/vaultudp"
)

// runDemo starts two Conns on loopback with the default Config, shows the
// handshake and sends datagrams both ways.
func runDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "[-n COUNT]", stderr)
	n := fs.Int("n", 3, "datagrams to send each way")
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 || *n < 1 {
		return fmt.Errorf("%w: demo takes no arguments and -n >= 1", errUsage)
	}
	alice, err := vaultudp.Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		return fmt.Errorf("listening on loopback: %w", err)
	}
	defer alice.Close()
	bob, err := vaultudp.Listen("udp4", "127.0.0.1:0", nil)
	if err != nil {
		return fmt.Errorf("listening on loopback: %w", err)
	}
	defer bob.Close()
	aAddr := alice.LocalAddr().(*net.UDPAddr).AddrPort()
	bAddr := bob.LocalAddr().(*net.UDPAddr).AddrPort()
	fmt.Fprintf(stdout, "alice %v  identity %s\n", aAddr, vaultudp.EncodePublicKey(alice.PublicKey()))
	fmt.Fprintf(stdout, "bob   %v  identity %s\n", bAddr, vaultudp.EncodePublicKey(bob.PublicKey()))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := alice.Handshake(ctx, bAddr); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	fmt.Fprintf(stdout, "handshake alice -> bob: %v (signed ephemeral X25519, ChaCha20-Poly1305 session)\n\n", time.Since(start).Round(time.Microsecond))

	if err := exchange(stdout, "alice", alice, "bob", bob, bAddr, *n); err != nil {
		return err
	}
	if err := exchange(stdout, "bob", bob, "alice", alice, aAddr, *n); err != nil {
		return err
	}

	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\talice\tbob\t")
	sa, sb := alice.Stats(), bob.Stats()
	rows := []struct {
		name string
		a, b any
	}{
		{"protocol", sa.ProtocolVersion, sb.ProtocolVersion},
		{"MTU", sa.MTU, sb.MTU},
		{"max payload", sa.MaxPayload, sb.MaxPayload},
		{"peers", sa.Peers, sb.Peers},
		{"handshakes", sa.Handshakes, sb.Handshakes},
		{"datagrams out", sa.DatagramsOut, sb.DatagramsOut},
		{"datagrams in", sa.DatagramsIn, sb.DatagramsIn},
		{"bytes out", sa.BytesOut, sb.BytesOut},
		{"bytes in", sa.BytesIn, sb.BytesIn},
		{"dropped (any reason)", dropped(sa.Drops), dropped(sb.Drops)},
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%v\t%v\t\n", r.name, r.a, r.b)
	}
	return tw.Flush()
}

func exchange(w io.Writer, fromName string, from *vaultudp.Conn, toName string, to *vaultudp.Conn, toAddr netip.AddrPort, n int) error {
	buf := make([]byte, 2048)
	for i := 1; i <= n; i++ {
		msg := fmt.Sprintf("message %d from %s", i, fromName)
		if _, err := from.WriteToUDPAddrPort([]byte(msg), toAddr); err != nil {
			return fmt.Errorf("%s writing: %w", fromName, err)
		}
		fmt.Fprintf(w, "%-5s sent     %q\n", fromName, msg)
		to.SetReadDeadline(time.Now().Add(5 * time.Second))
		k, src, err := to.ReadFrom(buf)
		if err != nil {
			return fmt.Errorf("%s reading: %w", toName, err)
		}
		fmt.Fprintf(w, "%-5s received %q from %v\n", toName, buf[:k], src)
		if string(buf[:k]) != msg {
			return fmt.Errorf("%s received %q, want %q", toName, buf[:k], msg)
		}
	}
	return nil
}

func dropped(d vaultudp.Drops) uint64 {
	return d.Malformed + d.Replay + d.Auth + d.Policy + d.Rejected + d.Stale + d.RateLimit +
		d.QueueFull + d.TooLarge + d.UnknownSession + d.HandshakeTimeout + d.PeerLimit
}
