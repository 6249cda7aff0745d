package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestBusyDeviceIsNotUnmapped: unstaging while the volume is still
// published (its filesystem still mounted at the target) is refused with
// the holder named, and the volume keeps working. The kernel refuses a
// krbd unmap itself (EBUSY); rbd-nbd would disconnect the device from
// under the mount, so it is the mapper that refuses.
func TestBusyDeviceIsNotUnmapped(t *testing.T) {
	t.Parallel()
	e := shared
	for _, mapper := range []string{"krbd", "rbd-nbd"} {
		t.Run(mapper, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, 3*time.Minute)
			c := mountCap(rwo, "ext4")
			v := e.create(t, mapper+"-busy", 64<<20, c, map[string]string{"mounter": mapper})
			if err := e.stage(ctx, v, c); err != nil {
				t.Fatal(err)
			}
			dev := blockDevice(t, v.target)
			err := e.unstage(ctx, v)
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), v.target) {
				t.Fatalf("unstaging a device mounted at %s: %v; want FailedPrecondition naming it", v.target, err)
			}
			t.Logf("refused as it should be: %v", err)
			// A device gone, or an nbd device disconnected, has no size.
			if size, err := os.ReadFile(filepath.Join("/sys/block", dev, "size")); err != nil || strings.TrimSpace(string(size)) == "0" {
				t.Fatalf("/dev/%s went from under its mount (size %q, %v)", dev, size, err)
			}
			if err := writeSynced(filepath.Join(v.target, "still"), []byte("here")); err != nil {
				t.Fatalf("the volume no longer takes writes after the refused unstage: %v", err)
			}
			if err := e.teardown(ctx, v); err != nil {
				t.Fatal(err)
			}
		})
	}
}
