package v2

import (
	"testing"
	"time"
)

func TestV2Backoff(t *testing.T) {
	var got []time.Duration
	for n := range 7 {
		got = append(got, backoff(n))
	}
	want := []time.Duration{time.Second, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 15 * time.Second, 15 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("backoff = %v, want %v", got, want)
		}
	}
}
