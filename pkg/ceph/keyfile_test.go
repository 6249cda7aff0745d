package ceph

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestKeyFilesArePrivateAndSwept(t *testing.T) {
	dir := KeyFileDir(t.TempDir())
	creds := Credentials{ID: "csi-rbd-node", Key: goodKey}
	path, remove, err := WriteKeyFile(dir, creds)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != goodKey {
		t.Fatalf("key file holds %q, %v", b, err)
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700, dir: 0o700} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, %v; want %v", p, fi.Mode().Perm(), err, want)
		}
	}
	remove()
	if _, err := os.Stat(filepath.Dir(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("key directory left after removal: %v", err)
	}

	// A crash leaves keys behind: the start-up sweep removes them.
	leftover, _, err := WriteKeyFile(dir, creds)
	if err != nil {
		t.Fatal(err)
	}
	if err := RemoveKeyFiles(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s survived the sweep: %v", leftover, err)
	}
}
