package noise

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"math/rand/v2"
	"testing"
)

// TestHMACSum: hmacSum is crypto/hmac's HMAC-SHA256, for keys and inputs
// of every length around its limits (the stack path and the fallback).
func TestHMACSum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, kl := range []int{0, 1, 32, 63, 64, 65, 100} {
		for _, parts := range [][]int{{}, {0}, {1}, {32}, {1, 1}, {31, 1}, {64, 64}, {128}, {129}, {100, 29}, {500}} {
			key := make([]byte, kl)
			for i := range key {
				key[i] = byte(r.Uint32())
			}
			var data [][]byte
			m := hmac.New(sha256.New, key)
			for _, n := range parts {
				d := make([]byte, n)
				for i := range d {
					d[i] = byte(r.Uint32())
				}
				data = append(data, d)
				m.Write(d)
			}
			var got [hashLen]byte
			hmacSum(&got, key, data...)
			if want := m.Sum(nil); !bytes.Equal(got[:], want) {
				t.Errorf("key %d bytes, input %v: %x, want %x", kl, parts, got, want)
			}
		}
	}
}
