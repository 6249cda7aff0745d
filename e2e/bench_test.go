package e2e

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// BenchmarkCreateVolume measures CreateVolume latency on the local cluster
// at concurrency 1 and 8, next to a bare librbd image create measured in
// the same run, and reports p50/p99 and the ratio of the two p50s.
//
//	go test -tags pacific -run '^$' -bench CreateVolume -benchtime 200x ./e2e/
func BenchmarkCreateVolume(b *testing.B) {
	for _, conc := range []int{1, 8} {
		b.Run(fmt.Sprintf("concurrency=%d", conc), func(b *testing.B) {
			e := newControllerEnv(b)
			ctrl := e.controller(nil)
			ctx := context.Background()
			// Warm the connection and pool caches as a running driver has them.
			if _, err := ctrl.CreateVolume(ctx, e.createReq("warm", 8<<20)); err != nil {
				b.Fatal(err)
			}
			csiLat := runConcurrent(b, conc, func(i int) error {
				_, err := ctrl.CreateVolume(ctx, e.createReq(fmt.Sprintf("bench-%d", i), 8<<20))
				return err
			})
			ioctx := e.adminIOContext(b)
			rawLat := runConcurrent(b, conc, func(i int) error {
				opts := librbd.NewRbdImageOptions()
				defer opts.Destroy()
				_ = opts.SetUint64(librbd.ImageOptionFormat, 2)
				_ = opts.SetUint64(librbd.ImageOptionFeatures, librbd.FeatureLayering)
				return librbd.CreateImage(ioctx, fmt.Sprintf("raw-%d", i), 8<<20, opts)
			})
			p50, p99 := percentile(csiLat, 50), percentile(csiLat, 99)
			b.ReportMetric(ms(p50), "p50-ms")
			b.ReportMetric(ms(p99), "p99-ms")
			b.ReportMetric(ms(percentile(rawLat, 50)), "librbd-create-p50-ms")
			b.ReportMetric(float64(p50)/float64(percentile(rawLat, 50)), "csi/librbd-p50-ratio")
			b.StopTimer()
			cleanupBench(b, e, ctrl)
		})
	}
}

// runConcurrent runs b.N calls on conc workers and returns each call's latency.
func runConcurrent(b *testing.B, conc int, call func(i int) error) []time.Duration {
	lat := make([]time.Duration, b.N)
	next := make(chan int)
	var wg sync.WaitGroup
	b.ResetTimer()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				start := time.Now()
				if err := call(i); err != nil {
					b.Error(err)
				}
				lat[i] = time.Since(start)
			}
		}()
	}
	for i := 0; i < b.N; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	return lat
}

func percentile(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[(len(s)-1)*p/100]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func cleanupBench(b *testing.B, e *controllerEnv, ctrl interface {
	ListVolumes(context.Context, *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error)
	DeleteVolume(context.Context, *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error)
}) {
	ctx := context.Background()
	vols, err := ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range vols.GetEntries() {
		if _, err := ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolume().GetVolumeId(), Secrets: e.secrets}); err != nil {
			b.Fatal(err)
		}
	}
}
