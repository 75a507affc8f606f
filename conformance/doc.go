// Package conformance holds tests that run real consumers of
// net.PacketConn over vaultudp Conns, beside the same over plain UDP: a
// quic-go client and server across a server restart (restart_test.go).
// Its own module, so that the root module does not depend on them.
//
// quic-go's own integration suite runs over vaultudp Conns too, assembled
// at test time by .ci/quicgo-suite.sh with the socket helper in
// quicgo/vaultudp_socket_test.go (README.md, "Consumer suites").
package conformance
