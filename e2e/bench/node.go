package main

import (
	"context"
	"sync"
)

// progress tells, per item, whether every step so far succeeded; a failed
// item's later steps are skipped, not measured.
type progress struct {
	mu sync.Mutex
	ok []bool
}

func newProgress(n int, made func(i int) bool) *progress {
	p := &progress{ok: make([]bool, n)}
	for i := range p.ok {
		p.ok[i] = made(i)
	}
	return p
}

// guard runs fn only for items still on track, and takes them off on failure.
func (p *progress) guard(fn call) call {
	return func(ctx context.Context, i int) error {
		p.mu.Lock()
		ok := p.ok[i]
		p.mu.Unlock()
		if !ok {
			return errSkip
		}
		err := fn(ctx, i)
		if err != nil {
			p.mu.Lock()
			p.ok[i] = false
			p.mu.Unlock()
		}
		return err
	}
}

func (p *progress) failed() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []int
	for i, ok := range p.ok {
		if !ok {
			out = append(out, i)
		}
	}
	return out
}

// nodeWork stages, publishes, unpublishes and unstages volumes with the
// fuse mapper against the floor's tools, a few volumes at a time so that
// few rbd-fuse processes and loop devices exist at once.
func (b *bench) nodeWork(ctx context.Context) {
	conc, n := b.opts.nodeConcurrency, b.opts.nodeVolumes
	s := b.createVolumes(ctx, "", "node", conc, n)
	drv := newProgress(n, func(i int) bool { return s.vols[i] != nil })
	flr := newProgress(n, func(i int) bool { return s.recs[i] != nil })
	stageSteps, unstageSteps := b.stepper("NodeStageVolume", conc), b.stepper("NodeUnstageVolume", conc)
	for _, group := range chunks(n, b.opts.nodeGroup) {
		b.driverOnly(ctx, "ControllerPublishVolume", conc, group, drv.guard(func(ctx context.Context, i int) error {
			return b.drv.publishToNode(ctx, s.vols[i])
		}))
		b.compare(ctx, "NodeStageVolume", conc, group,
			drv.guard(func(ctx context.Context, i int) error { return b.drv.stage(ctx, i, s.vols[i]) }),
			flr.guard(func(ctx context.Context, i int) error { return b.node.stage(ctx, i, s.recs[i].Backing, stageSteps) }))
		b.compare(ctx, "NodePublishVolume", conc, group,
			drv.guard(func(ctx context.Context, i int) error { return b.drv.publish(ctx, i, s.vols[i]) }),
			flr.guard(b.node.publish))
		b.compare(ctx, "NodeUnpublishVolume", conc, group,
			drv.guard(func(ctx context.Context, i int) error { return b.drv.unpublish(ctx, i, s.vols[i]) }),
			flr.guard(b.node.unpublish))
		b.compare(ctx, "NodeUnstageVolume", conc, group,
			drv.guard(func(ctx context.Context, i int) error { return b.drv.unstage(ctx, i, s.vols[i]) }),
			flr.guard(func(ctx context.Context, i int) error { return b.node.unstage(ctx, i, unstageSteps) }))
		b.driverOnly(ctx, "ControllerUnpublishVolume", conc, group, drv.guard(func(ctx context.Context, i int) error {
			return b.drv.unpublishFromNode(ctx, s.vols[i])
		}))
	}
	b.releaseFailed(ctx, s, drv.failed())
	b.node.teardown(ctx)
	b.deleteVolumes(ctx, "", conc, s)
}

// releaseFailed undoes, unmeasured, what the driver staged or attached of
// items a step failed on; every call is idempotent.
func (b *bench) releaseFailed(ctx context.Context, s *sides, items []int) {
	for _, i := range items {
		if v := s.vols[i]; v != nil {
			_ = b.drv.unpublish(ctx, i, v)
			_ = b.drv.unstage(ctx, i, v)
			_ = b.drv.unpublishFromNode(ctx, v)
		}
	}
}

// chunks splits items 0..n-1 into consecutive groups of size at most k.
func chunks(n, k int) [][]int {
	all := seq(n)
	var out [][]int
	for len(all) > 0 {
		m := min(max(k, 1), len(all))
		out = append(out, all[:m])
		all = all[m:]
	}
	return out
}
