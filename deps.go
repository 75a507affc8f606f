package vaultudp

import (
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/shirou/gopsutil/v3/net"
	_ "github.com/vmihailenco/msgpack/v5"
	_ "go.uber.org/goleak"
	_ "golang.org/x/crypto/blake2b"
	_ "golang.org/x/crypto/chacha20poly1305"
	_ "golang.org/x/crypto/nacl/box"
	_ "golang.org/x/net/ipv4"
	_ "golang.org/x/net/ipv6"
	_ "golang.org/x/time/rate"
)
