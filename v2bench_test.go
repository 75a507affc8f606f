package vaultudp

import "testing"

// BenchmarkNativeBesideV2: native throughput (1200-byte datagrams) to a
// Conn that also has a ProtocolV2 peer with a known box key on the
// sender's IP, beside the same Conn without it and raw UDP. Native
// datagrams are routed native first, so the v2 peer costs them nothing
// (before, each one was first tried as a v2 box).
func BenchmarkNativeBesideV2(b *testing.B) {
	const size = 1200
	b.Run("raw", func(b *testing.B) {
		x, y := benchRawPair(b)
		throughput(b, x, y, size)
	})
	for _, withV2 := range []bool{false, true} {
		name := "vaultudp"
		if withV2 {
			name = "vaultudp+v2peer"
		}
		b.Run(name, func(b *testing.B) {
			x, y := benchVaultPair(b, func() *Config { return &Config{} })
			if withV2 {
				ref := listenT(b, "udp4", "127.0.0.1:0", nil)
				box, _ := ref.V2PublicKeys()
				if err := y.AddPeer(PeerConfig{Addr: addrOf(ref), Protocol: ProtocolV2, BoxKey: box}); err != nil {
					b.Fatal(err)
				}
			}
			throughput(b, x, y, size)
		})
	}
}
