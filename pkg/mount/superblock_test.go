package mount

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestFilesystemSizeOfRealFilesystems makes filesystems with the real mkfs
// tools on files of known size and reads their size back from the superblock.
func TestFilesystemSizeOfRealFilesystems(t *testing.T) {
	const size = 300 << 20
	for _, tc := range []struct {
		fstype string
		mkfs   []string
	}{
		{"ext4", []string{"mkfs.ext4", "-q", "-F"}},
		{"ext4", []string{"mkfs.ext4", "-q", "-F", "-O", "64bit"}},
		{"ext3", []string{"mkfs.ext3", "-q", "-F"}},
		{"xfs", []string{"mkfs.xfs", "-q", "-f"}},
	} {
		t.Run(tc.fstype, func(t *testing.T) {
			if _, err := exec.LookPath(tc.mkfs[0]); err != nil {
				t.Skipf("%s is not installed: %v", tc.mkfs[0], err)
			}
			img := filepath.Join(t.TempDir(), "img")
			if err := os.WriteFile(img, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(img, size); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(tc.mkfs[0], append(tc.mkfs[1:], img)...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v: %s", tc.mkfs, err, out)
			}
			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got, err := filesystemSize(f, tc.fstype)
			if err != nil {
				t.Fatal(err)
			}
			if got > size || got < size-(1<<20) {
				t.Fatalf("%s of a %d-byte file is %d bytes", tc.fstype, size, got)
			}
			if _, err := filesystemSize(f, map[string]string{"xfs": "ext4", "ext4": "xfs", "ext3": "xfs"}[tc.fstype]); err == nil {
				t.Fatal("read a superblock of the wrong filesystem")
			}
		})
	}
}
