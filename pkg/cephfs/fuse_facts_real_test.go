package cephfs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cephFuse is one ceph-fuse mount made the way the node service will
// make it: no configuration file, the key in a file of its own, the admin
// socket and log beside it.
type cephFuse struct {
	dir, keyfile, mnt string
	pid               int
}

// mountCephFuse mounts root (a path from the filesystem root) as the
// restricted user and returns once ceph-fuse has daemonized; it fails the
// test when ceph-fuse fails, unless wantErr, when it returns the output.
func mountCephFuse(t *testing.T, e *realEnv, root string, wantErr bool) (*cephFuse, string) {
	t.Helper()
	// Not t.TempDir(): admin socket paths must stay short.
	dir, err := os.MkdirTemp("", "pelagic-fuse-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	m := &cephFuse{dir: dir, keyfile: filepath.Join(dir, "keyfile"), mnt: filepath.Join(dir, "mnt")}
	if err := os.Mkdir(m.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.keyfile, []byte(e.c.FSUserKey), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ceph-fuse", "-c", "/dev/null", "-m", e.c.Monitors, "--id", e.c.FSUserID,
		"--keyfile", m.keyfile, "-r", root, "--admin-socket", filepath.Join(dir, "client.asok"),
		"--log-file", filepath.Join(dir, "ceph-fuse.log"), m.mnt)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"} // no CEPH_CONF or CEPH_ARGS
	out, err := cmd.CombinedOutput()
	if wantErr {
		if err == nil {
			m.unmount(t)
			t.Fatalf("ceph-fuse mounted %s", root)
		}
		return nil, string(out)
	}
	if err != nil {
		t.Fatalf("ceph-fuse %s: %v\n%s", root, err, out)
	}
	m.pid = fusePID(t, m.mnt)
	t.Cleanup(func() {
		if mounted(t, m.mnt) {
			m.unmount(t)
		}
	})
	return m, string(out)
}

// fusePID finds the ceph-fuse process serving mnt, its last argument.
func fusePID(t *testing.T, mnt string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		argv, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(argv), "\x00"), "\x00")
		if filepath.Base(args[0]) == "ceph-fuse" && args[len(args)-1] == mnt {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	t.Fatalf("no ceph-fuse process serves %s", mnt)
	return 0
}

func cmdline(pid int) string {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}

func mounted(t *testing.T, mnt string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == mnt {
			return true
		}
	}
	return false
}

// unmount unmounts with umount(8) and waits for ceph-fuse to exit.
func (m *cephFuse) unmount(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	if out, err := exec.Command("umount", m.mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount %s: %v: %s", m.mnt, err, out)
	}
	// A process gone, or a zombie (empty command line), no longer serves.
	for strings.Contains(cmdline(m.pid), m.mnt) {
		if time.Since(start) > 30*time.Second {
			t.Fatalf("ceph-fuse %d still runs 30 s after umount", m.pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// TestCephFuseFacts checks what the node service will rely on when it
// mounts subvolumes with ceph-fuse (doc.go sums it up).
func TestCephFuseFacts(t *testing.T) {
	if _, err := exec.LookPath("ceph-fuse"); err != nil {
		t.Fatalf("ceph-fuse is not installed (e2e/ceph/up.sh installs it): %v", err)
	}
	e := newRealEnv(t)
	ctx := context.Background()
	group := e.newGroup(t)
	sv := Subvolume{FS: e.c.FSName, Group: group, Name: "fuse"}
	const quota = 4 * mib
	if err := e.vols.EnsureGroup(ctx, sv.FS, group); err != nil {
		t.Fatal(err)
	}
	if err := e.vols.CreateSubvolume(ctx, sv, SubvolumeSpec{Size: quota}); err != nil {
		t.Fatal(err)
	}
	root, err := e.vols.SubvolumePath(ctx, sv)
	if err != nil {
		t.Fatal(err)
	}

	m, out := mountCephFuse(t, e, root, false)
	t.Logf("ceph-fuse said: %q", out)
	if !mounted(t, m.mnt) {
		t.Fatalf("ceph-fuse returned before %s was mounted", m.mnt)
	}
	if argv := cmdline(m.pid); strings.Contains(argv, e.c.FSUserKey) || !strings.Contains(argv, "--keyfile") {
		t.Errorf("ceph-fuse command line %q", argv)
	}
	// The key is read once, at start: the file can go.
	if err := os.Remove(m.keyfile); err != nil {
		t.Fatal(err)
	}

	// The quota is the filesystem's size.
	var st syscall.Statfs_t
	if err := syscall.Statfs(m.mnt, &st); err != nil {
		t.Fatal(err)
	}
	if size := int64(st.Blocks) * st.Bsize; size != quota {
		t.Errorf("statfs size %d, want the quota %d", size, quota)
	}

	// Writing past the quota fails with EDQUOT, megabytes past it: the
	// client judges by the usage the MDS last told it.
	written, err := fill(filepath.Join(m.mnt, "big"))
	if !errors.Is(err, syscall.EDQUOT) {
		t.Errorf("writing past the quota: %v after %d bytes, want EDQUOT", err, written)
	}
	if written < quota {
		t.Errorf("EDQUOT after %d bytes, below the quota %d", written, quota)
	}
	t.Logf("EDQUOT after %d bytes (quota %d)", written, quota)

	// The client judges the quota by the usage it last heard of from the
	// MDS: space freed shows only once the MDS has propagated the removal.
	if err := os.Remove(filepath.Join(m.mnt, "big")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		err := os.WriteFile(filepath.Join(m.mnt, "kept"), []byte("snapshot me"), 0o644)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EDQUOT) || time.Since(start) > time.Minute {
			t.Fatalf("writing after freeing space: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("freed space usable after %v", time.Since(start))

	// A snapshot shows inside the mount as .snap/_SNAP_INODE, the inode
	// being the subvolume directory's (the mount's parent).
	snap := Snapshot{Subvolume: sv, Name: "snap"}
	if err := e.vols.CreateSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(m.mnt, ".snap"))
	if err != nil || len(entries) != 1 || !strings.HasPrefix(entries[0].Name(), "_snap_") {
		t.Errorf(".snap inside the mount: %v, %v", entries, err)
	}

	// ceph-fuse cannot mount a path inside .snap; the subvolume's directory,
	// with the snapshot below it, it can.
	_, out = mountCephFuse(t, e, root+"/.snap/snap", true)
	if !strings.Contains(out, "No such file or directory") {
		t.Errorf("mounting .snap: %q", out)
	}
	snapPath, err := SnapshotPath(ctx, e.vols, snap)
	if err != nil {
		t.Fatal(err)
	}
	subvolumeDir := path.Dir(root)
	m2, _ := mountCephFuse(t, e, subvolumeDir, false)
	inSnap := filepath.Join(m2.mnt, strings.TrimPrefix(snapPath, subvolumeDir))
	if data, err := os.ReadFile(filepath.Join(inSnap, "kept")); err != nil || string(data) != "snapshot me" {
		t.Errorf("reading %s: %q, %v", inSnap, data, err)
	}
	if err := os.WriteFile(filepath.Join(inSnap, "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing into a snapshot: %v, want EROFS", err)
	}

	// umount(8) refuses a busy mount and leaves it serving; an idle one it
	// unmounts, and ceph-fuse then exits by itself.
	busy, err := os.Open(filepath.Join(inSnap, "kept"))
	if err != nil {
		t.Fatal(err)
	}
	out2, err := exec.Command("umount", m2.mnt).CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "target is busy") || !mounted(t, m2.mnt) {
		t.Errorf("umount of a busy mount: %v %s", err, out2)
	}
	if _, err := busy.Stat(); err != nil {
		t.Errorf("busy mount after the refused umount: %v", err)
	}
	_ = busy.Close()
	t.Logf("ceph-fuse exited %v after umount", m2.unmount(t))

	// A ceph-fuse that died leaves its mount answering ENOTCONN (or
	// ECONNABORTED at first), and a plain umount clears it.
	clientID := m.clientID(t)
	if err := syscall.Kill(m.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); strings.Contains(cmdline(m.pid), m.mnt); {
		if time.Now().After(deadline) {
			t.Fatalf("ceph-fuse %d survived SIGKILL", m.pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := os.Stat(m.mnt); !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("stat after ceph-fuse died: %v, want ENOTCONN", err)
	}
	if out, err := exec.Command("umount", m.mnt).CombinedOutput(); err != nil || mounted(t, m.mnt) {
		t.Errorf("umount of a dead ceph-fuse mount: %v %s", err, out)
	}

	// The dead client keeps its MDS session, and its caps on the
	// subvolume, until the session times out (60 s) or is evicted: a
	// removal waits for it, holding up every other mgr volumes command.
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := e.vols.RemoveSubvolume(short, sv, RemoveOptions{RetainSnapshots: true}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("removal with a dead client's caps on it: %v, want it still waiting", err)
	}
	evict, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if out, err := e.c.Ceph(evict, "tell", "mds."+sv.FS+":0", "client", "evict", "id="+clientID); err != nil {
		t.Fatalf("evicting client.%s: %v\n%s", clientID, err, out)
	}
	start = time.Now()
	for {
		info, err := e.vols.Subvolume(ctx, sv)
		if err == nil && info.State == StateSnapRetained {
			break // the waiting removal went through
		}
		if time.Since(start) > time.Minute {
			t.Fatalf("subvolume after the eviction: %+v, %v", info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("the removal finished %v after the eviction", time.Since(start))
}

// clientID asks ceph-fuse's admin socket for its client ID, as in
// client.ID.
func (m *cephFuse) clientID(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ceph", "--admin-daemon", filepath.Join(m.dir, "client.asok"), "status").Output()
	if err != nil {
		t.Fatalf("ceph-fuse status: %v", err)
	}
	var status struct {
		ID int64 `json:"id"`
	}
	if err := json.Unmarshal(out, &status); err != nil || status.ID == 0 {
		t.Fatalf("ceph-fuse status %q: %v", out, err)
	}
	return strconv.FormatInt(status.ID, 10)
}

// fill writes 1 MiB blocks to a new file until a write fails.
func fill(name string) (int64, error) {
	f, err := os.Create(name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	block := bytes.Repeat([]byte("q"), mib)
	var n int64
	for range 64 {
		w, err := f.Write(block)
		n += int64(w)
		if err != nil {
			return n, err
		}
	}
	return n, f.Sync()
}
