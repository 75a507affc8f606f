package vaultudp

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vaultudp/vaultudp/internal/noise"
)

// hsLoadEnv tells the test binary, run again as a child process, to be
// the initiators of BenchmarkHandshakeServer: "addr n k".
const hsLoadEnv = "VAULTUDP_HS_LOAD"

// BenchmarkHandshakeServer: handshakes/s a server Conn completes through
// its socket, its queue and its workers, with initiators enough to keep
// it busy: b.N handshakes from another process (this test binary again),
// 32 at a time, each from a socket of its own. The initiators' hellos are
// made before the timer starts; their replies' checks and final messages
// (about 0.3 ms each) run meanwhile, in the other process, on whatever
// core the server leaves: on a 2-core machine the GOMAXPROCS 2 figure
// shares the cores with them. server-cpu-µs/op is the server process's
// CPU per handshake (its readers, workers, timers and all), and
// handshakes/server-cpu-s what one core of it sustains, server-cores the
// cores it used on average. Run with -cpu 1,2;
// BenchmarkHandshakeResponderConn beside it is one handshake at a time,
// the initiator's work untimed.
func BenchmarkHandshakeServer(b *testing.B) {
	srv := listenT(b, "udp4", "127.0.0.1:0", &Config{CookieThreshold: 1 << 30, MaxPeers: 1 << 20})
	<-srv.spare.done
	n := b.N
	cmd := exec.Command(os.Args[0], "-test.run=^TestHandshakeLoadHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", hsLoadEnv, addrOf(srv), n, 32), "GOMAXPROCS=2")
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	defer in.Close()
	out := bufio.NewScanner(outPipe)
	waitLine := func(want string) {
		for out.Scan() {
			if strings.HasPrefix(out.Text(), want) {
				return
			}
		}
		b.Fatalf("the initiators' process ended before %q: %v", want, out.Err())
	}
	waitLine("ready")
	before := srv.Stats().Handshakes
	cpu0, cpuOK := processCPU()
	b.ResetTimer()
	fmt.Fprintln(in, "go")
	deadline := time.Now().Add(time.Duration(n)*10*time.Millisecond + waitLong)
	for srv.Stats().Handshakes-before < uint64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d handshakes in time; drops: %+v", srv.Stats().Handshakes-before, n, srv.Stats().Drops)
		}
		time.Sleep(200 * time.Microsecond)
	}
	b.StopTimer()
	cpu1, _ := processCPU()
	fmt.Fprintln(in, "stop")
	waitLine("done")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "handshakes/s")
	if cpuOK {
		per := float64(cpu1-cpu0) / float64(n)
		b.ReportMetric(per/1e3, "server-cpu-µs/op")
		b.ReportMetric(1e9/per, "handshakes/server-cpu-s")
		// The cores the server used meanwhile: one worker's design
		// stays near 1 whatever GOMAXPROCS; on a machine loaded by
		// others, what they leave caps it.
		b.ReportMetric(float64(cpu1-cpu0)/float64(b.Elapsed()), "server-cores")
	}
	b.ReportMetric(float64(srv.Stats().Drops.HandshakeQueueFull), "drops")
}

// TestHandshakeLoadHelper is BenchmarkHandshakeServer's initiators, in a
// process of their own; it does nothing unless that benchmark runs it.
func TestHandshakeLoadHelper(t *testing.T) {
	spec := os.Getenv(hsLoadEnv)
	if spec == "" {
		t.Skip("run by BenchmarkHandshakeServer")
	}
	f := strings.Fields(spec)
	to := netip.MustParseAddrPort(f[0])
	n, _ := strconv.Atoi(f[1])
	k, _ := strconv.Atoi(f[2])
	id := GenerateIdentity()
	// The hellos, made in advance: their keys and signatures are not
	// part of what the server is measured on.
	inits := make([]*noise.Initiation, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				inits[i] = helloInitFrom(id, uint32(i+1))
			}
		}()
	}
	wg.Wait()
	fmt.Println("ready")
	stdin := bufio.NewScanner(os.Stdin)
	if !stdin.Scan() || stdin.Text() != "go" {
		return
	}
	stop := make(chan struct{})
	go func() {
		stdin.Scan() // "stop", or the benchmark's end
		close(stop)
	}()
	params := &noise.Params{MaxUnfragmented: 1472, MaxDatagram: 1472}
	next.Store(0)
	for range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				select {
				case <-stop:
					return
				default:
				}
				// A socket per handshake: each is a new client.
				pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Error(err)
					return
				}
				init := inits[i]
				for try := 0; try < 20; try++ {
					pc.WriteToUDPAddrPort(init.Hello(), to)
					pc.SetReadDeadline(time.Now().Add(time.Second))
					m, _, err := pc.ReadFromUDPAddrPort(buf)
					if err != nil || m < 2 || buf[1] != typeReply {
						continue // dropped (a full queue): send it again, as a retry
					}
					if _, err := init.ReadReply(buf[:m]); err != nil {
						t.Error(err)
						break
					}
					final, _, err := init.WriteFinal(params)
					if err != nil {
						t.Error(err)
						break
					}
					pc.WriteToUDPAddrPort(final, to)
					break
				}
				pc.Close()
			}
		}()
	}
	wg.Wait()
	<-stop
	fmt.Println("done")
}
