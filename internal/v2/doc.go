// Package v2 speaks protocol v2, the wire format of the Python reference
// (py-vault-udp), for the root package's ProtocolV2 peers: wire.go is the
// socket-free codec (frame, key exchange, NaCl box, padding, replay
// cache, keys), endpoint.go the per-Conn and per-peer state (key
// exchange schedule, trust, rate limit, queue, receive order). It shares
// the msgpack primitives (internal/msgp) and the bounded zstd codec
// (internal/zstd) with the native protocol, and reaches the socket, the
// clocks and the counters only through the callbacks of Config.
package v2
