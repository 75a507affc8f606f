package noise_test

import (
	"crypto/ed25519"
	"fmt"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// A whole handshake through the exported API only, as the Conn would
// run it: the initiator's calls on the left of each step, the
// responder's on the right, the datagrams between them.
func Example() {
	alice := ed25519.NewKeyFromSeed(make([]byte, 32))
	bob := ed25519.NewKeyFromSeed(append(make([]byte, 31), 1))

	// Initiator: a fresh static key, then the hello.
	as, _ := noise.NewStatic(alice, nil)
	init, _ := noise.NewInitiation(noise.InitiatorConfig{Static: as, Index: 0x1111})
	hello := init.Hello()

	// Responder: structure first (a cookie check would go here), then
	// the costly answer.
	h, err := noise.ParseHello(hello)
	if err != nil {
		panic(err)
	}
	bs, _ := noise.NewStatic(bob, nil)
	resp, reply, err := noise.Respond(h, noise.ResponderConfig{
		Static: bs, Index: 0x2222,
		Params: noise.Params{MaxUnfragmented: 1472, MaxDatagram: 1472},
	})
	if err != nil {
		panic(err)
	}

	// Initiator: the reply reveals the responder; trust rules apply to
	// bobID before the final message is written.
	idx, _ := noise.ReplyIndex(reply) // finds the initiation
	bobID, err := init.ReadReply(reply)
	if err != nil || idx != init.Index() {
		panic(err)
	}
	final, ik, err := init.WriteFinal(&noise.Params{MaxUnfragmented: 1472, MaxDatagram: 65507})
	if err != nil {
		panic(err)
	}

	// Responder: the final message reveals the initiator.
	f, err := noise.ParseFinal(final)
	if err != nil {
		panic(err)
	}
	aliceID, rk, err := resp.ReadFinal(f)
	if err != nil {
		panic(err)
	}

	fmt.Println("hello", len(hello), "reply", len(reply), "final", len(final))
	fmt.Println("responder is bob:", bobID.Identity.Equal(bob.Public()), "index", bobID.Index == resp.Index())
	fmt.Println("initiator is alice:", aliceID.Identity.Equal(alice.Public()), "sends up to", aliceID.Params.MaxDatagram)
	fmt.Println("same keys:", *ik == *rk)
	// Output:
	// hello 1360 reply 1319 final 176
	// responder is bob: true index true
	// initiator is alice: true sends up to 65507
	// same keys: true
}
