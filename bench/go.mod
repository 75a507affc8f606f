module github.com/vaultudp/vaultudp/bench

go 1.26.0

require (
	github.com/pion/dtls/v3 v3.1.15
	github.com/pion/logging v0.2.4
	github.com/quic-go/quic-go v0.65.0
	github.com/vaultudp/vaultudp v0.0.0
)

require (
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/pion/transport/v5 v5.0.0 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)

replace github.com/vaultudp/vaultudp => ../
