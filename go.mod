module github.com/vaultudp/vaultudp

go 1.26.0

require (
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/shirou/gopsutil/v3 v3.24.5 // indirect
	github.com/vmihailenco/msgpack/v5 v5.4.1 // indirect
	github.com/vmihailenco/tagparser/v2 v2.0.0 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	golang.org/x/crypto v0.59.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/time v0.16.0 // indirect
)
