package mount

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// These tests format and mount real loop devices on sparse files. They
// need root, losetup, mkfs.ext4 and mkfs.xfs, and skip otherwise.

const mib = 1 << 20

func realMounter(t *testing.T, tools ...string) (*HostMounter, util.Runner) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	for _, tool := range append([]string{"losetup", "blkid", "blockdev"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	r := util.ExecRunner{DefaultTimeout: time.Minute}
	return NewHostMounter(Config{Runner: r}), r
}

// testLoop is a loop device over a sparse file in the test's temp dir.
type testLoop struct {
	dev, file string
}

func newLoop(t *testing.T, r util.Runner, size int64) *testLoop {
	t.Helper()
	file := filepath.Join(t.TempDir(), "backing.img")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, size); err != nil {
		t.Fatal(err)
	}
	out, err := r.Run(context.Background(), "losetup", "--find", "--show", file)
	if err != nil {
		t.Fatalf("losetup: %v", err)
	}
	l := &testLoop{dev: strings.TrimSpace(string(out)), file: file}
	t.Cleanup(func() {
		if _, err := r.Run(context.Background(), "losetup", "-d", l.dev); err != nil {
			t.Errorf("detaching %s: %v", l.dev, err)
		}
	})
	return l
}

// grow makes the backing file bigger and tells the loop device.
func (l *testLoop) grow(t *testing.T, r util.Runner, size int64) {
	t.Helper()
	if err := os.Truncate(l.file, size); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(context.Background(), "losetup", "-c", l.dev); err != nil {
		t.Fatalf("losetup -c: %v", err)
	}
}

// mountDir makes a directory and unmounts whatever is left on it at cleanup.
func mountDir(t *testing.T, m *HostMounter, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 3; i++ { // bind mounts may be stacked
			if err := m.Unmount(context.Background(), dir); err != nil {
				t.Errorf("cleanup unmount %s: %v", dir, err)
				return
			}
		}
	})
	return dir
}

func TestRealFormatMountBind(t *testing.T) {
	for _, fstype := range []string{"ext4", "xfs"} {
		t.Run(fstype, func(t *testing.T) {
			m, r := realMounter(t, "mkfs."+fstype)
			ctx := context.Background()
			loop := newLoop(t, r, 320*mib) // mkfs.xfs wants at least 300 MiB

			if got, err := m.GetFormat(ctx, loop.dev); err != nil || got != "" {
				t.Fatalf("GetFormat on a blank device = %q, %v", got, err)
			}
			if err := m.Format(ctx, loop.dev, fstype, nil); err != nil {
				t.Fatal(err)
			}
			if got, err := m.GetFormat(ctx, loop.dev); err != nil || got != fstype {
				t.Fatalf("GetFormat after mkfs = %q, %v; want %s", got, err, fstype)
			}
			if err := m.Format(ctx, loop.dev, fstype, nil); !errors.Is(err, ErrDeviceNotEmpty) {
				t.Fatalf("second Format = %v, want ErrDeviceNotEmpty", err)
			}

			staging := mountDir(t, m, "staging")
			if err := m.Mount(ctx, loop.dev, staging, fstype, []string{"noatime"}); err != nil {
				t.Fatal(err)
			}
			if ok, err := m.IsMountPoint(ctx, staging); err != nil || !ok {
				t.Fatalf("IsMountPoint(staging) = %v, %v", ok, err)
			}
			if src, err := m.MountSource(ctx, staging); err != nil || src != loop.dev {
				t.Fatalf("MountSource(staging) = %q, %v; want %s", src, err, loop.dev)
			}
			if err := os.WriteFile(filepath.Join(staging, "data"), []byte("hello"), 0o644); err != nil {
				t.Fatal(err)
			}

			rw := mountDir(t, m, "rw")
			if err := m.BindMount(ctx, staging, rw, false); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(rw, "data2"), []byte("x"), 0o644); err != nil {
				t.Fatalf("writing through the writable bind: %v", err)
			}
			ro := mountDir(t, m, "ro")
			if err := m.BindMount(ctx, staging, ro, true); err != nil {
				t.Fatal(err)
			}
			if got, err := os.ReadFile(filepath.Join(ro, "data")); err != nil || string(got) != "hello" {
				t.Fatalf("reading through the read-only bind: %q, %v", got, err)
			}
			err := os.WriteFile(filepath.Join(ro, "data3"), []byte("x"), 0o644)
			if !errors.Is(err, syscall.EROFS) {
				t.Fatalf("writing through the read-only bind: %v, want EROFS", err)
			}
			if src, err := m.MountSource(ctx, ro); err != nil || src != loop.dev {
				t.Fatalf("MountSource(ro) = %q, %v; want %s", src, err, loop.dev)
			}

			holders, err := m.Holders(ctx, loop.dev)
			if err != nil || len(holders) != 3 {
				t.Fatalf("Holders = %q, %v; want the three mount points", holders, err)
			}

			st, err := m.Stats(ctx, staging)
			if err != nil {
				t.Fatal(err)
			}
			if st.TotalBytes <= 0 || st.TotalBytes > 320*mib || st.UsedBytes <= 0 || st.AvailableBytes <= 0 ||
				st.TotalInodes <= 0 || st.UsedInodes <= 0 || st.FreeInodes <= 0 {
				t.Fatalf("implausible stats %+v", st)
			}

			for _, dir := range []string{ro, rw, staging} {
				if err := m.Unmount(ctx, dir); err != nil {
					t.Fatal(err)
				}
				if err := m.Unmount(ctx, dir); err != nil {
					t.Fatalf("second Unmount(%s) = %v", dir, err)
				}
				if ok, err := m.IsMountPoint(ctx, dir); err != nil || ok {
					t.Fatalf("IsMountPoint(%s) after Unmount = %v, %v", dir, ok, err)
				}
			}
			if holders, err := m.Holders(ctx, loop.dev); err != nil || len(holders) != 0 {
				t.Fatalf("Holders after unmount = %q, %v", holders, err)
			}
		})
	}
}

func TestRealResizeExt4(t *testing.T) {
	m, r := realMounter(t, "mkfs.ext4", "resize2fs", "e2fsck")
	ctx := context.Background()
	loop := newLoop(t, r, 64*mib)
	if err := m.Format(ctx, loop.dev, "ext4", nil); err != nil {
		t.Fatal(err)
	}
	dir := mountDir(t, m, "mnt")
	size := func() int64 {
		t.Helper()
		if err := m.Mount(ctx, loop.dev, dir, "ext4", nil); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := m.Unmount(ctx, dir); err != nil {
				t.Fatal(err)
			}
		}()
		st, err := m.Stats(ctx, dir)
		if err != nil {
			t.Fatal(err)
		}
		return st.TotalBytes
	}
	before := size()

	// Offline: grow the device, then the filesystem.
	loop.grow(t, r, 128*mib)
	if got, err := m.DeviceSize(ctx, loop.dev); err != nil || got != 128*mib {
		t.Fatalf("DeviceSize = %d, %v; want %d", got, err, 128*mib)
	}
	if err := m.ResizeFS(ctx, loop.dev, ""); err != nil {
		t.Fatalf("offline ResizeFS: %v", err)
	}
	after := size()
	if after < before+48*mib {
		t.Fatalf("filesystem size %d after offline resize, was %d", after, before)
	}

	// Online: works with CAP_SYS_RESOURCE, otherwise must say why it failed.
	loop.grow(t, r, 192*mib)
	if err := m.Mount(ctx, loop.dev, dir, "ext4", nil); err != nil {
		t.Fatal(err)
	}
	err := m.ResizeFS(ctx, loop.dev, dir)
	switch {
	case err == nil:
		t.Log("online ext4 resize is permitted here")
	case errors.Is(err, ErrOnlineResizeNotPermitted):
		t.Logf("online ext4 resize refused as expected: %v", err)
	default:
		t.Fatalf("online ResizeFS: %v", err)
	}
}

func TestRealGrowXFSOnline(t *testing.T) {
	m, r := realMounter(t, "mkfs.xfs", "xfs_growfs")
	ctx := context.Background()
	loop := newLoop(t, r, 320*mib)
	if err := m.Format(ctx, loop.dev, "xfs", nil); err != nil {
		t.Fatal(err)
	}
	dir := mountDir(t, m, "mnt")
	if err := m.Mount(ctx, loop.dev, dir, "xfs", nil); err != nil {
		t.Fatal(err)
	}
	before, err := m.Stats(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	loop.grow(t, r, 640*mib)
	if err := m.ResizeFS(ctx, loop.dev, dir); err != nil {
		t.Fatal(err)
	}
	after, err := m.Stats(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if after.TotalBytes < before.TotalBytes+256*mib {
		t.Fatalf("xfs size %d after growing, was %d", after.TotalBytes, before.TotalBytes)
	}
}

// TestRealReadOnlyBlockBind: a block device published read-only cannot be
// written through its target, although the device below is writable; the
// read-only view goes when the target is unmounted.
func TestRealReadOnlyBlockBind(t *testing.T) {
	m, r := realMounter(t)
	ctx := context.Background()
	loop := newLoop(t, r, 16*mib)
	target := filepath.Join(t.TempDir(), "block")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.BindMount(ctx, loop.dev, target, true); err != nil {
		t.Fatal(err)
	}
	view, err := m.MountSource(ctx, target)
	if err != nil || view == loop.dev || !strings.HasPrefix(view, "/dev/loop") {
		t.Fatalf("MountSource(target) = %q, %v; want a loop device over %s", view, err, loop.dev)
	}
	f, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteAt([]byte("x"), 0)
		if err == nil {
			err = f.Sync()
		}
		f.Close()
	}
	if err == nil {
		t.Fatal("a write through the read-only published device succeeded")
	}
	if err := m.Unmount(ctx, target); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(view), "loop")); !os.IsNotExist(err) {
		t.Fatalf("the read-only view %s is still attached after the unmount (%v)", view, err)
	}
	if err := os.WriteFile(loop.dev, []byte("x"), 0); err != nil {
		t.Fatalf("the device below is no longer writable: %v", err)
	}
}
