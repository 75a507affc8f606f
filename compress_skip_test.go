package vaultudp

import "testing"

// TestCompressSkip: payloads that never shrink are tried less and less
// often, down to one in 64; one that shrinks brings back every try.
func TestCompressSkip(t *testing.T) {
	parallel(t)
	var z compressSkip
	tries := 0
	for range 1000 {
		if z.try() {
			tries++
			z.result(false)
		}
	}
	if tries < 1000/64 || tries > 1000/64+8 {
		t.Errorf("%d tries of 1000 incompressible payloads, want about one in 64", tries)
	}
	for i := 0; !z.try(); i++ { // at most 63 skips
		if i > 64 {
			t.Fatal("still skipping after 64 payloads")
		}
	}
	z.result(true)
	for i := range 10 {
		if !z.try() {
			t.Fatalf("payload %d after a success not tried", i)
		}
		z.result(true)
	}
	var none *compressSkip
	if !none.try() {
		t.Error("a nil compressSkip must try every payload")
	}
	none.result(false)
}
