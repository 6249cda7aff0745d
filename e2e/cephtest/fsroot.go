package cephtest

import (
	"testing"

	libcephfs "github.com/ceph/go-ceph/cephfs"
	"github.com/ceph/go-ceph/rados"
)

// MountFSRoot mounts the root of filesystem fs over conn, through
// libcephfs, to read and write subvolumes' files directly; it is unmounted
// when the test ends.
func MountFSRoot(t testing.TB, conn *rados.Conn, fs string) *libcephfs.MountInfo {
	t.Helper()
	root, err := libcephfs.CreateFromRados(conn)
	if err == nil {
		err = root.SelectFilesystem(fs)
	}
	if err == nil {
		err = root.Mount()
	}
	if err != nil {
		t.Fatalf("mounting %s: %v", fs, err)
	}
	t.Cleanup(func() {
		_ = root.Unmount()
		_ = root.Release()
	})
	return root
}
