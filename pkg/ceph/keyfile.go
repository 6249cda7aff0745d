package ceph

import (
	"fmt"
	"os"
	"path/filepath"
)

// KeyFileDir is where a node keeps the short-lived key files of the Ceph
// clients it starts (rbd, rbd-nbd, rbd-fuse, ceph-fuse), under its state
// directory.
func KeyFileDir(stateDir string) string { return filepath.Join(stateDir, "keys") }

// WriteKeyFile writes the key of creds to a 0600 file in a new 0700
// directory under dir (made 0700 when missing), so that the key never
// appears on a command line. remove removes the file and its directory,
// once the client that reads it has connected; RemoveKeyFiles removes what
// a crash left.
func WriteKeyFile(dir string, creds Credentials) (path string, remove func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("creating keyfile directory: %w", err)
	}
	own, err := os.MkdirTemp(dir, "key-") // mode 0700
	if err != nil {
		return "", nil, fmt.Errorf("creating keyfile directory: %w", err)
	}
	remove = func() { _ = os.RemoveAll(own) }
	path = filepath.Join(own, "keyfile")
	if err := os.WriteFile(path, []byte(creds.Key), 0o600); err != nil {
		remove()
		return "", nil, fmt.Errorf("writing keyfile for %s: %w", creds, err)
	}
	return path, remove, nil
}

// RemoveKeyFiles removes dir with every key file in it. Run at start-up,
// before anything can write one, it removes what a crash left behind.
func RemoveKeyFiles(dir string) error { return os.RemoveAll(dir) }
