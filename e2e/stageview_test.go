package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// TestStageViewBlankness: StageView counts an image blank, so that its
// first NodeStage formats it without a probe, only when it has no parent
// and neither its first nor its last SignatureSpan holds data.
func TestStageViewBlankness(t *testing.T) {
	e := newControllerEnv(t)
	ctx := testContext(t, 2*time.Minute)
	ioctx := e.adminIOContext(t)
	_, pool := adminPool(ctx, t, e.cfg, e.conns, e.cluster, e.pool)
	const big = 64 << 20
	tests := []struct {
		name  string
		size  uint64
		at    []uint64 // where 512 bytes are written
		blank bool
	}{
		{"new", big, nil, true},
		{"written at 0", big, []uint64{0}, false},
		{"written at 4 MiB (LUKS2's last secondary header)", big, []uint64{4 << 20}, false},
		{"written in the last sector (a GPT's backup)", big, []uint64{big - 512}, false},
		{"written 8 MiB from the end", big, []uint64{big - rbd.SignatureSpan}, false},
		{"written only in the middle", big, []uint64{32 << 20}, true},
		{"small and new", 4 << 20, nil, true},
		{"small, written at its end", 4 << 20, []uint64{4<<20 - 512}, false},
		{"between one and two spans, written past the first", 12 << 20, []uint64{9 << 20}, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("blank-%d", i)
			if err := librbd.CreateImage(ioctx, name, tc.size, librbd.NewRbdImageOptions()); err != nil {
				t.Fatal(err)
			}
			writeAt(t, ioctx, name, tc.at...)
			watchers, blank, view, err := pool.StageView(ctx, name)
			if err != nil || blank != tc.blank || len(watchers) != 0 {
				t.Errorf("StageView = %v, blank %v, %v; want blank %v and no watcher", watchers, blank, err, tc.blank)
			}
			if view != nil {
				view.Close()
			}
		})
	}
	t.Run("a clone of a blank volume", func(t *testing.T) {
		ctrl := e.controller(nil)
		parent, err := ctrl.CreateVolume(ctx, e.createReq("pvc-blank-parent", big))
		if err != nil {
			t.Fatal(err)
		}
		req := e.createReq("pvc-blank-clone", big)
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: parent.GetVolume().GetVolumeId()}}}
		clone, err := ctrl.CreateVolume(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		_, blank, view, err := pool.StageView(ctx, clone.GetVolume().GetVolumeContext()[rbd.CtxImageName])
		if err != nil || blank {
			t.Errorf("StageView of a clone: blank %v, %v; want false: its parent's data shows through", blank, err)
		}
		if view != nil {
			view.Close()
		}
	})
}

// TestStageViewWatchersAgain: the view StageView keeps lists a watcher
// that came after it opened (a mapper's client, opening the image), adds
// none of its own, and ends at Close.
func TestStageViewWatchersAgain(t *testing.T) {
	e := newControllerEnv(t)
	ctx := testContext(t, 2*time.Minute)
	ioctx := e.adminIOContext(t)
	_, pool := adminPool(ctx, t, e.cfg, e.conns, e.cluster, e.pool)
	if err := librbd.CreateImage(ioctx, "view-watchers", 16<<20, librbd.NewRbdImageOptions()); err != nil {
		t.Fatal(err)
	}
	watchers, _, view, err := pool.StageView(ctx, "view-watchers")
	if err != nil || len(watchers) != 0 {
		t.Fatalf("StageView = %v, %v; want no watcher", watchers, err)
	}
	if again, err := view.Watchers(ctx); err != nil || len(again) != 0 {
		t.Fatalf("the view's own open watches: %v, %v", again, err)
	}
	img, err := librbd.OpenImage(ioctx, "view-watchers", librbd.NoSnapshot) // watches, as a mapper's client does
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	again, err := view.Watchers(ctx)
	if err != nil || len(again) != 1 {
		t.Fatalf("watchers over the view after another open = %v, %v; want that one", again, err)
	}
	view.Close()
	if err := util.WaitFor(ctx, 10*time.Second, "the view to close", func() (bool, error) {
		_, err := view.Watchers(ctx)
		return err != nil, nil
	}); err != nil {
		t.Fatal(err)
	}
}

// writeAt writes 512 bytes of 0xff at each offset of the image, outside
// the driver.
func writeAt(t *testing.T, ioctx *rados.IOContext, image string, offsets ...uint64) {
	t.Helper()
	if len(offsets) == 0 {
		return
	}
	img, err := librbd.OpenImage(ioctx, image, librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	data := make([]byte, 512)
	for i := range data {
		data[i] = 0xff
	}
	for _, off := range offsets {
		if _, err := img.WriteAt(data, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
}
