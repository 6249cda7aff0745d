package main

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// row is one operation at one concurrency: the driver's calls and the
// floor's. A row may hold only one side: a driver call with no floor
// measured, or one step of a floor call.
type row struct {
	op     string
	conc   int
	driver tally
	floor  tally
}

// bench runs the workloads and keeps their rows in the order first seen.
type bench struct {
	opts  options
	drv   *driverClient
	floor *floor
	node  *fuseFloor
	fs    *fsBench  // nil when no CephFS driver runs
	log   io.Writer // progress
	tag   string    // in every name this run makes, so that runs never meet

	mu          sync.Mutex
	rows        []*row
	index       map[string]*row
	turn        int // which side goes first in the next comparison
	setupErrs   []string
	notMeasured []string
}

func (b *bench) row(op string, conc int) *row {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := fmt.Sprintf("%s\x00%d", op, conc)
	r, ok := b.index[key]
	if !ok {
		r = &row{op: op, conc: conc}
		if b.index == nil {
			b.index = map[string]*row{}
		}
		b.index[key] = r
		b.rows = append(b.rows, r)
	}
	return r
}

// compare measures one batch of items on both sides, one side after the
// other, alternating which goes first so that a drift in the machine's
// load falls on both.
func (b *bench) compare(ctx context.Context, op string, conc int, items []int, driver, floor call) {
	r := b.row(op, conc)
	sides := []func(){
		func() { runBatch(ctx, conc, items, driver, &r.driver) },
		func() { runBatch(ctx, conc, items, floor, &r.floor) },
	}
	if b.turn%2 == 1 {
		sides[0], sides[1] = sides[1], sides[0]
	}
	b.turn++
	for _, side := range sides {
		side()
	}
}

// interleaved measures n items of an operation in rounds, each round a
// batch of the driver's and a batch of the floor's.
func (b *bench) interleaved(ctx context.Context, op string, conc, n int, driver, floor call) {
	start := time.Now()
	for _, batch := range batches(n, conc, b.opts.rounds) {
		b.compare(ctx, op, conc, batch, driver, floor)
	}
	fmt.Fprintf(b.log, "%-40s concurrency %-3d %4d items  %v\n", op, conc, n, time.Since(start).Round(time.Millisecond))
}

// driverOnly measures a driver call that has no floor of its own here.
func (b *bench) driverOnly(ctx context.Context, op string, conc int, items []int, driver call) {
	runBatch(ctx, conc, items, driver, &b.row(op, conc).driver)
}

// setup runs unmeasured work (sources, clean-up); its failures are reported.
func (b *bench) setup(ctx context.Context, what string, conc, n int, fn call) {
	var t tally
	runBatch(ctx, conc, seq(n), fn, &t)
	if len(t.errs) > 0 {
		b.mu.Lock()
		b.setupErrs = append(b.setupErrs, fmt.Sprintf("%s: %d of %d failed: %v", what, t.calls-len(t.lat), t.calls, t.samples))
		b.mu.Unlock()
	}
}

// name makes a CSI or journal name unique to this run.
func (b *bench) name(format string, args ...any) string {
	return b.tag + "-" + fmt.Sprintf(format, args...)
}

// stepper times the steps of floor calls of one operation, each as a row
// of its own, so the floor's cost is broken down.
func (b *bench) stepper(op string, conc int) stepFunc {
	return func(step string, fn func() error) error {
		t0 := time.Now()
		err := fn()
		b.row(op+" / "+step, conc).floor.add(time.Since(t0), err)
		return err
	}
}

// stepFunc runs one named step of a floor call.
type stepFunc func(step string, fn func() error) error

// untimed runs steps without recording them.
func untimed(_ string, fn func() error) error { return fn() }

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}
