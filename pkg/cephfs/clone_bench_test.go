package cephfs

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// BenchmarkCloneFloor is the floor a CSI clone is measured against: the mgr
// clone of a snapshot, started and polled every 20 ms with go-ceph as the
// restricted user, until complete. One clone per iteration; the clone is
// removed outside the timer.
//
//	PELAGIC_TEST_CLUSTER=DIR go test -tags pacific -run '^$' -bench CloneFloor -benchtime 10x ./pkg/cephfs/
func BenchmarkCloneFloor(b *testing.B) {
	e := newRealEnv(b)
	group := e.newGroup(b)
	ctx := context.Background()
	if err := e.vols.EnsureGroup(ctx, e.c.FSName, group); err != nil {
		b.Fatal(err)
	}
	for _, size := range []int64{0, mib, 64 * mib} {
		b.Run(sizeName(size), func(b *testing.B) {
			src := Subvolume{FS: e.c.FSName, Group: group, Name: "src-" + sizeName(size)}
			snap := Snapshot{Subvolume: src, Name: "snap"}
			if err := e.vols.CreateSubvolume(ctx, src, SubvolumeSpec{Size: size + 64*mib}); err != nil {
				b.Fatal(err)
			}
			e.write(b, src, size)
			if err := e.vols.CreateSnapshot(ctx, snap); err != nil {
				b.Fatal(err)
			}
			var took []time.Duration
			b.ResetTimer()
			for i := range b.N {
				target := Subvolume{FS: src.FS, Group: group, Name: fmt.Sprintf("clone-%s-%d", sizeName(size), i)}
				start := time.Now()
				if err := e.vols.Clone(ctx, snap, target, ""); err != nil {
					b.Fatal(err)
				}
				st := pollClone(b, e.vols, target, 20*time.Millisecond, 5*time.Minute)
				took = append(took, time.Since(start))
				b.StopTimer()
				if st.State != CloneComplete {
					b.Fatalf("clone %s: %+v", target, st)
				}
				if err := e.vols.RemoveSubvolume(ctx, target, RemoveOptions{}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.StopTimer()
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "p50-ms")
			b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "max-ms")
			b.ReportMetric(float64(took[0].Milliseconds()), "min-ms")
		})
	}
}

func sizeName(size int64) string {
	if size == 0 {
		return "empty"
	}
	return fmt.Sprintf("%dMiB", size/mib)
}

// pollClone reads a clone's status every interval until it is done.
func pollClone(tb testing.TB, v Volumes, target Subvolume, interval, limit time.Duration) CloneStatus {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	for {
		st, err := v.CloneStatus(ctx, target)
		if err != nil {
			tb.Fatalf("clone status of %s: %v", target, err)
		}
		if st.State.Done() {
			return st
		}
		time.Sleep(interval)
	}
}
