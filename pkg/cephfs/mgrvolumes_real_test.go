package cephfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path"
	"slices"
	"sort"
	"testing"
	"time"

	libcephfs "github.com/ceph/go-ceph/cephfs"
	"github.com/ceph/go-ceph/cephfs/admin"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

func TestMain(m *testing.M) { os.Exit(cephtest.Main(m)) }

// realEnv is the shared test cluster seen two ways: MgrVolumes as the
// restricted CSI user under test, and the admin for setting up data and
// cleaning up.
type realEnv struct {
	c     *cephtest.Cluster
	vols  *MgrVolumes
	admin *admin.FSAdmin
	root  *libcephfs.MountInfo // the admin's mount of the filesystem root
	files int
}

func newRealEnv(t testing.TB) *realEnv {
	t.Helper()
	c := cephtest.Get(t)
	conns := ceph.NewConnPool(ceph.Timeouts{})
	t.Cleanup(conns.Close)
	cluster := &ceph.ClusterConfig{ClusterID: "cephfs-test", Monitors: []string{c.Monitors}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	user, err := conns.GetForMgr(ctx, cluster, ceph.Credentials{ID: c.FSUserID, Key: c.FSUserKey})
	if err != nil {
		t.Fatal(err)
	}
	adm, err := conns.Get(ctx, cluster, ceph.Credentials{ID: c.AdminID, Key: c.AdminKey})
	if err != nil {
		t.Fatal(err)
	}
	root := cephtest.MountFSRoot(t, adm.Conn, c.FSName)
	return &realEnv{c: c, vols: NewMgrVolumes(user.Conn), admin: admin.NewFromConn(adm.Conn), root: root}
}

// newGroup names a subvolume group of the test's own and removes it, and
// everything in it, when the test ends.
func (e *realEnv) newGroup(t testing.TB) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	group := "pelagic-test-" + hex.EncodeToString(b)
	t.Cleanup(func() { e.removeGroup(t, group) })
	return group
}

func (e *realEnv) removeGroup(t testing.TB, group string) {
	fs := e.c.FSName
	subs, err := e.admin.ListSubVolumes(fs, group)
	if err != nil {
		return // never created
	}
	for _, sub := range subs {
		_ = e.admin.CancelClone(fs, group, sub)
		snaps, _ := e.admin.ListSubVolumeSnapshots(fs, group, sub)
		for _, snap := range snaps {
			_ = e.admin.ForceRemoveSubVolumeSnapshot(fs, group, sub, snap)
		}
		_ = e.admin.ForceRemoveSubVolume(fs, group, sub)
	}
	if err := e.admin.RemoveSubVolumeGroup(fs, group); err != nil {
		t.Errorf("removing subvolume group %s: %v", group, err)
	}
}

// write puts n bytes into the subvolume, in new files of at most 1 MiB
// of pseudo-random data.
func (e *realEnv) write(t testing.TB, sv Subvolume, n int64) {
	t.Helper()
	dir, err := e.admin.SubVolumePath(sv.FS, sv.Group, sv.Name)
	if err != nil {
		t.Fatal(err)
	}
	for n > 0 {
		size := min(n, mib)
		e.files++
		name := path.Join(dir, fmt.Sprintf("file%04d", e.files))
		data := make([]byte, size)
		rng := mrand.NewChaCha8([32]byte{byte(e.files), byte(e.files >> 8)})
		_, _ = rng.Read(data)
		f, err := e.root.Open(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			t.Fatalf("creating %s: %v", name, err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatalf("writing %s: %v", name, err)
		}
		if err := f.Fsync(libcephfs.SyncAll); err != nil {
			t.Fatalf("syncing %s: %v", name, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		n -= size
	}
}

func (e *realEnv) readDir(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	d, err := e.root.OpenDir(dir)
	if err != nil {
		t.Fatalf("opening %s: %v", dir, err)
	}
	defer d.Close()
	out := map[string][]byte{}
	for {
		entry, err := d.ReadDir()
		if err != nil {
			t.Fatalf("reading %s: %v", dir, err)
		}
		if entry == nil {
			return out
		}
		if entry.Name() == "." || entry.Name() == ".." {
			continue
		}
		f, err := e.root.Open(path.Join(dir, entry.Name()), os.O_RDONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(f)
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[entry.Name()] = data
	}
}

func (e *realEnv) sameData(t *testing.T, want, got string) {
	t.Helper()
	w, g := e.readDir(t, want), e.readDir(t, got)
	names := func(m map[string][]byte) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	if !slices.Equal(names(w), names(g)) {
		t.Fatalf("%s holds %v, %s holds %v", want, names(w), got, names(g))
	}
	for name, data := range w {
		if !bytes.Equal(data, g[name]) {
			t.Errorf("%s differs between %s and %s", name, want, got)
		}
	}
}

// breakClone removes the snapshot the way a user with snapshot rights
// on a mount would: rmdir in .snap, which the mgr does not guard.
func (e *realEnv) breakClone(t *testing.T, snap Snapshot, _ Subvolume) {
	t.Helper()
	dir := path.Join("/volumes", snap.Subvolume.Group, snap.Subvolume.Name, ".snap", snap.Name)
	if err := e.root.RemoveDir(dir); err != nil {
		t.Fatalf("removing %s: %v", dir, err)
	}
}

// TestMgrVolumesContract runs the contract as the restricted CSI user
// (mon 'allow r', mgr 'allow rw', osd 'allow rw tag cephfs *=*', mds
// 'allow rw').
func TestMgrVolumesContract(t *testing.T) {
	e := newRealEnv(t)
	testVolumesContract(t, e.vols, volumesEnv{
		fs: e.c.FSName, group: e.newGroup(t), pool: "cephfs_data", cloneWait: 2 * time.Minute,
		write:      func(t *testing.T, sv Subvolume, n int64) { e.write(t, sv, n) },
		breakClone: e.breakClone,
		sameData:   e.sameData,
	})
}
