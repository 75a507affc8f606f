// Package vaulttest provides an in-memory UDP network and a fault injector
// for testing code that speaks a datagram protocol over a [net.PacketConn].
//
// A [Network] is a set of [PacketConn] endpoints that exchange datagrams in
// memory, without sockets, the kernel or timing noise. A PacketConn behaves
// like a *[net.UDPConn]: it returns and accepts *[net.UDPAddr] addresses,
// truncates datagrams that do not fit the read buffer, drops datagrams when its
// receive queue is full, loses datagrams sent to an address nobody listens on,
// honours deadlines and reports errors with the same types and sentinel values
// (*[net.OpError], [net.ErrClosed], [os.ErrDeadlineExceeded],
// [syscall.EMSGSIZE]). [Pipe] is the shortcut for the common case of two
// endpoints that talk to each other.
//
// A [FaultyConn] wraps any net.PacketConn, an in-memory one or a real socket,
// and drops, duplicates, reorders, corrupts, truncates, delays or injects
// datagrams as it writes them, with the probabilities given in [Faults]. The
// faults are drawn from a pseudo-random generator seeded by [Faults.Seed], so
// a test that fails fails again with the same seed, and every datagram that
// crossed the wrapper is recorded as an [Event] for the test to check its
// expectations against. A [Relay] forwards datagrams between a client and a
// server it sits between, with faults in each direction, for peers a test
// cannot wrap, such as another process.
//
// All are meant for tests of any UDP protocol. To test vaultudp itself,
// or a protocol stack running over it, wrap an in-memory endpoint, faulty or
// not, with vaultudp.Wrap:
//
//	a, b := vaulttest.Pipe()
//	fa := vaulttest.NewFaultyConn(a, vaulttest.Faults{Drop: 0.05, Corrupt: 0.01, Seed: 1})
//	ca, err := vaultudp.Wrap(fa, &vaultudp.Config{ /* ... */ })
//	...
//	cb, err := vaultudp.Wrap(b, &vaultudp.Config{ /* ... */ })
//	...
//
// The Event record then lets the test assert, for example, that no corrupted
// datagram was ever delivered by cb.
package vaulttest
