// Command turn runs an unchanged STUN/TURN server from github.com/pion/turn
// on a vaultudp Conn, and a pion/turn client on another: the client asks
// for its mapped address (STUN Binding), allocates a relay (TURN
// Allocate, with long-term credentials), and exchanges datagrams through
// the relay with a peer on the far side. Everything between the client and
// the TURN server (STUN and TURN messages, ChannelData) travels sealed by
// vaultudp; the relay's far side is plain UDP, as a TURN relay's public
// side always is. The same code runs over plain UDP, and the results are
// the same.
//
//	go run ./turn
//
// What pion/turn needs from the PacketConn: ReadFrom and WriteTo with
// *net.UDPAddr addresses (the server keys allocations by the client's
// address, which is the vaultudp peer's), LocalAddr, and Close to end its
// read loop.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"time"

	"github.com/pion/turn/v4"
	"github.com/vaultudp/vaultudp"
)

const (
	realm    = "vaultudp.example"
	user     = "alice"
	password = "correct horse battery staple"
)

// Transport is how the example makes the client's and the TURN server's
// sockets: plain UDP or vaultudp.
type Transport struct {
	Name   string
	Listen func(address string) (net.PacketConn, error)
}

// UDP is plain, unencrypted UDP.
var UDP = Transport{"udp", func(a string) (net.PacketConn, error) { return net.ListenPacket("udp4", a) }}

// Vault is vaultudp with every default.
var Vault = Transport{"vaultudp", func(a string) (net.PacketConn, error) { return vaultudp.Listen("udp4", a, nil) }}

// Result is what the client saw.
type Result struct {
	MappedIsLocal  bool     // the STUN mapped address is the client's own address (no NAT on loopback)
	RelayIP        string   // the relay's IP
	PeerSawRelay   bool     // the peer's datagrams came from the relay address
	ClientSawPeer  bool     // the relay's datagrams came from the peer's address
	ToPeer, ToClnt []string // datagrams received on each side, in order
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tr := range []Transport{UDP, Vault} {
		r, err := Run(ctx, tr, 5)
		if err != nil {
			log.Fatalf("%s: %v", tr.Name, err)
		}
		fmt.Printf("over %s: %+v\n", tr.Name, r)
	}
}

// Run starts a TURN server and a client over tr on loopback, allocates a
// relay and sends n datagrams each way between the client and a plain UDP
// peer through it.
func Run(ctx context.Context, tr Transport, n int) (Result, error) {
	var res Result
	spc, err := tr.Listen("127.0.0.1:0")
	if err != nil {
		return res, err
	}
	key := turn.GenerateAuthKey(user, realm, password)
	server, err := turn.NewServer(turn.ServerConfig{
		Realm: realm,
		AuthHandler: func(username, _ string, _ net.Addr) ([]byte, bool) {
			return key, username == user
		},
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: spc, // the only change: this is a *vaultudp.Conn
			RelayAddressGenerator: &turn.RelayAddressGeneratorStatic{
				RelayAddress: net.IPv4(127, 0, 0, 1),
				Address:      "127.0.0.1",
			},
		}},
	})
	if err != nil {
		spc.Close()
		return res, err
	}
	defer server.Close() // closes spc

	cpc, err := tr.Listen("127.0.0.1:0")
	if err != nil {
		return res, err
	}
	defer cpc.Close()
	client, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: spc.LocalAddr().String(),
		TURNServerAddr: spc.LocalAddr().String(),
		Conn:           cpc,
		Username:       user,
		Password:       password,
		Realm:          realm,
	})
	if err != nil {
		return res, err
	}
	defer client.Close()
	if err := client.Listen(); err != nil {
		return res, err
	}

	mapped, err := client.SendBindingRequest()
	if err != nil {
		return res, fmt.Errorf("STUN binding: %w", err)
	}
	res.MappedIsLocal = mapped.String() == cpc.LocalAddr().String()
	relay, err := client.Allocate()
	if err != nil {
		return res, fmt.Errorf("TURN allocate: %w", err)
	}
	defer relay.Close()
	relayAddr := relay.LocalAddr().(*net.UDPAddr)
	res.RelayIP = relayAddr.IP.String()

	// The peer on the relay's far side: any UDP socket.
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return res, err
	}
	defer peer.Close()
	deadline := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	peer.SetReadDeadline(deadline)
	relay.SetReadDeadline(deadline)

	res.PeerSawRelay, res.ClientSawPeer = true, true
	buf := make([]byte, 1500)
	for i := range n {
		// Client to peer. The first write also creates the relay's
		// permission for the peer; pion sends it ahead of the data but
		// does not wait for its answer, so the first datagram is retried
		// (a few times, briefly) in case it overtook the permission.
		msg := fmt.Sprintf("to peer #%d", i)
		var from net.Addr
		var got int
		for attempt := 0; ; attempt++ {
			if _, err := relay.WriteTo([]byte(msg), peer.LocalAddr()); err != nil {
				return res, fmt.Errorf("relay write: %w", err)
			}
			if i == 0 && attempt < 4 {
				peer.SetReadDeadline(time.Now().Add(time.Second))
			} else {
				peer.SetReadDeadline(deadline)
			}
			got, from, err = peer.ReadFrom(buf)
			if err == nil || i > 0 || attempt >= 4 || !errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
		}
		if err != nil {
			return res, fmt.Errorf("peer read: %w", err)
		}
		res.ToPeer = append(res.ToPeer, string(buf[:got]))
		res.PeerSawRelay = res.PeerSawRelay && from.String() == relayAddr.String()

		// Peer to client, through the relay.
		if _, err := peer.WriteTo([]byte(fmt.Sprintf("to client #%d", i)), relayAddr); err != nil {
			return res, err
		}
		got, from, err = relay.ReadFrom(buf)
		if err != nil {
			return res, fmt.Errorf("relay read: %w", err)
		}
		res.ToClnt = append(res.ToClnt, string(buf[:got]))
		res.ClientSawPeer = res.ClientSawPeer && from.String() == peer.LocalAddr().String()
	}
	return res, nil
}
