package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// call does item i of a workload; it returns errSkip when an earlier step
// of that item failed and there is nothing to measure.
type call func(ctx context.Context, i int) error

var errSkip = errors.New("an earlier step of this item failed")

// callTimeout bounds one call, as a CSI sidecar's timeout would.
const callTimeout = 2 * time.Minute

// tally collects one side's calls of one operation.
type tally struct {
	mu      sync.Mutex
	lat     []time.Duration // successful calls only
	wall    time.Duration   // time the batches took, for ops/s
	calls   int
	errs    map[string]int // by gRPC code (driver) or errno (floor)
	samples []string       // the first distinct error messages
}

const maxErrorSamples = 3

func (t *tally) add(took time.Duration, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.calls++
	if err == nil {
		t.lat = append(t.lat, took)
		return
	}
	if t.errs == nil {
		t.errs = map[string]int{}
	}
	t.errs[errorClass(err)]++
	msg := err.Error()
	for _, s := range t.samples {
		if s == msg {
			return
		}
	}
	if len(t.samples) < maxErrorSamples {
		t.samples = append(t.samples, msg)
	}
}

// errorClass names an error by its gRPC code when it has one, else by the
// Ceph errno it carries.
func errorClass(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Code().String()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "DeadlineExceeded"
	}
	if errno := ceph.Errno(err); errno != 0 {
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
		return fmt.Sprintf("errno %d", int(errno))
	}
	return "error"
}

// runBatch runs fn for every item on conc workers and records each call in t.
func runBatch(ctx context.Context, conc int, items []int, fn call, t *tally) {
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range min(conc, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				cctx, cancel := context.WithTimeout(ctx, callTimeout)
				t0 := time.Now()
				err := fn(cctx, i)
				took := time.Since(t0)
				cancel()
				if !errors.Is(err, errSkip) {
					t.add(took, err)
				}
			}
		}()
	}
	for _, i := range items {
		next <- i
	}
	close(next)
	wg.Wait()
	t.mu.Lock()
	t.wall += time.Since(start)
	t.mu.Unlock()
}

// batches splits items 0..n-1 into rounds for interleaving: as many as
// asked, but none smaller than the concurrency, so each batch keeps
// every worker busy.
func batches(n, conc, rounds int) [][]int {
	r := max(1, min(rounds, n/max(conc, 1)))
	out := make([][]int, 0, r)
	for k := range r {
		lo, hi := k*n/r, (k+1)*n/r
		b := make([]int, 0, hi-lo)
		for i := lo; i < hi; i++ {
			b = append(b, i)
		}
		out = append(out, b)
	}
	return out
}

// stats are one side's numbers for one operation.
type stats struct {
	Calls     int            `json:"calls"`
	OK        int            `json:"ok"`
	P50Ms     float64        `json:"p50Ms"`
	P90Ms     float64        `json:"p90Ms"`
	P99Ms     float64        `json:"p99Ms"`
	MaxMs     float64        `json:"maxMs"`
	OpsPerSec float64        `json:"opsPerSec,omitempty"`
	Errors    map[string]int `json:"errors,omitempty"`
	ErrorText []string       `json:"errorSamples,omitempty"`
}

func (t *tally) stats() stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := append([]time.Duration(nil), t.lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	out := stats{Calls: t.calls, OK: len(s), Errors: t.errs, ErrorText: t.samples}
	if len(s) == 0 {
		return out
	}
	out.P50Ms, out.P90Ms, out.P99Ms = ms(percentile(s, 50)), ms(percentile(s, 90)), ms(percentile(s, 99))
	out.MaxMs = ms(s[len(s)-1])
	if t.wall > 0 {
		out.OpsPerSec = float64(len(s)) / t.wall.Seconds()
	}
	return out
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := (p*len(sorted) + 99) / 100
	return sorted[max(rank, 1)-1]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
