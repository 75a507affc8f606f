package vaultudp

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestFlashCrowd: 1,000 clients (200 under -race) handshake with one
// server at once, on loopback, each from a Conn of its own, and each
// sends a datagram the server echoes. All succeed. It prints the
// distribution of the time to the handshake and to the echo; the
// server's hellos dropped at its full handshake queue, and the clients'
// hellos sent again on their retry timer (those clients waited for it);
// the server's workers at most; and the CPU the process used, and the
// machine's idle share meanwhile (on Linux): whether anyone waited on a
// retry while the machine had CPU to spare. The clients run in the same
// process: their share of the work (a hello's keys and signature, the
// reply's checks, about as much as the server's per handshake) competes
// with the server's.
func TestFlashCrowd(t *testing.T) {
	n := scaled(1000, 200)
	// Handshakes may take waitLong, four times that under the race
	// detector (a hello's answer costs 35-40 ms there), the retries
	// every second as by default: on a machine loaded by other work the
	// crowd takes seconds, and the claim is that every client gets in,
	// not how fast (printed).
	timeout := scaled(waitLong, 4*waitLong)
	srv := listenT(t, "udp4", "127.0.0.1:0", &Config{ReadQueue: 4096, HandshakeTimeout: timeout})
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			srv.WriteToUDPAddrPort(buf[:k], from)
		}
	}()
	// The clients' sockets first, so that their making is not timed.
	clients := make([]*Conn, n)
	for i := range clients {
		c, err := Listen("udp4", "127.0.0.1:0", &Config{HandshakeTimeout: timeout})
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	defer func() {
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close() }()
		}
		wg.Wait()
	}()
	// The keys made at Listen (handshake.go) are ready: they are not
	// part of the crowd's CPU.
	for _, c := range clients {
		<-c.spare.done
	}
	<-srv.spare.done
	took := make([]time.Duration, n)
	hsTook := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 2*timeout)
			defer cancel()
			if errs[i] = c.Handshake(ctx, addrOf(srv)); errs[i] != nil {
				return
			}
			hsTook[i] = time.Since(t0)
			c.SetReadDeadline(time.Now().Add(timeout))
			if _, errs[i] = c.WriteToUDPAddrPort([]byte("hi"), addrOf(srv)); errs[i] != nil {
				return
			}
			_, _, errs[i] = c.ReadFromUDPAddrPort(make([]byte, 64))
			took[i] = time.Since(t0)
		}()
	}
	cpu0, cpuOK := processCPU()
	idle0, total0, idleOK := machineIdle()
	t0 := time.Now()
	close(start)
	wg.Wait()
	all := time.Since(t0)
	cpu1, _ := processCPU()
	idle1, total1, _ := machineIdle()
	failed := 0
	for i, err := range errs {
		if err != nil {
			failed++
			if failed <= 3 {
				t.Errorf("client %d: %v", i, err)
			}
		}
	}
	retries := 0
	for _, c := range clients {
		if p, _ := c.peerFor(addrOf(srv), lookupOnly); p != nil {
			p.mu.Lock()
			retries += max(0, p.hs.hellos-1)
			p.mu.Unlock()
		}
	}
	q := func(d []time.Duration, p float64) time.Duration {
		return d[min(len(d)-1, int(p*float64(len(d))))].Round(time.Millisecond)
	}
	slices.Sort(took)
	slices.Sort(hsTook)
	st := srv.Stats()
	t.Logf("%d clients at once: all done in %v; to the handshake p50 %v, p90 %v, max %v; to the echo p50 %v, p90 %v, p99 %v, max %v",
		n, all.Round(time.Millisecond), q(hsTook, 0.5), q(hsTook, 0.9), hsTook[n-1].Round(time.Millisecond),
		q(took, 0.5), q(took, 0.9), q(took, 0.99), took[n-1].Round(time.Millisecond))
	t.Logf("server: %d handshakes, %d hellos answered, %d dropped at the full handshake queue, %d retries in a queued hello's place, %d cookies sent, %d workers at once (GOMAXPROCS %d), hello %v each lately; clients: %d hellos sent again on the retry timer",
		st.Handshakes, st.Verifications, st.Drops.HandshakeQueueFull, st.Drops.HelloReplaced, st.CookiesSent, srv.hw.peakWorkers(), srv.hw.maxWorkers, srv.hw.estimate(kindHello).Round(time.Microsecond), retries)
	if cpuOK {
		msg := "process CPU " + (cpu1 - cpu0).Round(time.Millisecond).String() + " in " + all.Round(time.Millisecond).String()
		if idleOK && total1 > total0 {
			msg += ", machine idle " + strconv.Itoa(int(100*(idle1-idle0)/(total1-total0))) + "%"
		}
		t.Log(msg)
	}
	if failed > 0 {
		t.Fatalf("%d of %d clients failed", failed, n)
	}
}

// machineIdle returns the idle and total CPU time of the machine, in
// clock ticks, from /proc/stat (Linux); ok is false elsewhere.
func machineIdle() (idle, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, false
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return idle, total, true
}
