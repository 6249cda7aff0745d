package cephcsi

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNamespaceHoldsNoHostDevice: a filesystem the host has mounted from a
// loop device when ceph-csi starts is not kept in ceph-csi's mount
// namespace, so once the host unmounts it the device detaches at once
// (losetup -d on a device still open would only mark it to detach on its
// last close). Another test's staging path is what such a copy held busy.
func TestNamespaceHoldsNoHostDevice(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared mounts %v", shared), func(t *testing.T) {
			dev, mnt := mountLoopFilesystem(t)
			// No call reaches Ceph: the monitor is never dialled.
			d := Start(t, Options{SharedMounts: shared, Clusters: []Cluster{{ClusterID: "ns", Monitors: []string{"127.0.0.1:9"}}}})
			if held := mountsOf(t, d.PID(), dev); len(held) > 0 {
				t.Fatalf("ceph-csi's namespace holds %s at %v", dev, held)
			}
			run(t, "umount", mnt)
			run(t, "losetup", "-d", dev)
			backing := filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file")
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := os.Stat(backing); os.IsNotExist(err) {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s stays attached after the host unmounted it and detached it: something holds it open", dev)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// mountLoopFilesystem mounts an ext4 filesystem on a new loop device and
// returns the device and the mount point; cleanup undoes what is left.
func mountLoopFilesystem(t *testing.T) (dev, mnt string) {
	t.Helper()
	dir := t.TempDir()
	file, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(file, 16<<20); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-F", file)
	dev = strings.TrimSpace(run(t, "losetup", "--find", "--show", file))
	t.Cleanup(func() {
		_ = exec.Command("umount", "-l", mnt).Run()
		_ = exec.Command("losetup", "-d", dev).Run()
	})
	run(t, "mount", dev, mnt)
	return dev, mnt
}

// mountsOf lists the mount points of source in process pid's namespace.
func mountsOf(t *testing.T, pid int, source string) []string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		for i := 6; i+2 < len(fields); i++ {
			if fields[i] == "-" && fields[i+2] == source {
				points = append(points, fields[4])
			}
		}
	}
	return points
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
	return string(out)
}
