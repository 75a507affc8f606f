//go:build !linux

package noise

func threadCPU() (int64, bool) { return 0, false }
func lockThread()              {}
func unlockThread()            {}
