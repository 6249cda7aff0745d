package cephtest

import (
	"bytes"
	"os"
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

// FillFile writes up to n bytes to a new file at path, 1 MiB at a time,
// each block synced so that a quota refuses it there, until a write
// fails; it returns what was written and the failure.
func FillFile(path string, n int64) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	block := bytes.Repeat([]byte{'q'}, 1<<20)
	var written int64
	for written < n {
		w, err := f.Write(block)
		written += int64(w)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			return written, err
		}
	}
	return written, nil
}
