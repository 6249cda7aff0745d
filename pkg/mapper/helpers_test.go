package mapper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// testKey is a well-formed cephx key that must never show up on argv.
const testKey = "bWFwcGVyLXRlc3Qta2V5LW5vdC1hLWNlcGh4LWtleQ==" // base64 of a phrase, not a cephx key

func testImage() Image {
	return Image{
		ClusterID: "c1", Monitors: []string{"10.0.0.1:6789", "10.0.0.2:6789"},
		Pool: "rbd", Name: "csi-vol-1",
		Creds: ceph.Credentials{ID: "csi-rbd", Key: testKey},
	}
}

// fakeRunner records every command and hands it to handle, which plays
// the host: it may change the fake sysfs and returns the output.
type fakeRunner struct {
	mu     sync.Mutex
	calls  [][]string
	handle func(argv []string) ([]byte, error)
}

func (r *fakeRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	r.mu.Lock()
	r.calls = append(r.calls, argv)
	r.mu.Unlock()
	if r.handle == nil {
		return nil, nil
	}
	return r.handle(argv)
}

// assertNoKey fails if the key appears in any recorded argv.
func (r *fakeRunner) assertNoKey(t *testing.T) {
	t.Helper()
	for _, argv := range r.calls {
		for _, a := range argv {
			if strings.Contains(a, testKey) {
				t.Fatalf("the key is on a command line: %q", argv)
			}
		}
	}
}

// execError is what util.ExecRunner returns for a failed command.
func execError(code int, output string) error {
	return &util.ExecError{Cmd: "fake", ExitCode: code, Output: output, Err: errors.New("exit status")}
}

// argAfter returns the argument following flag in argv.
func argAfter(argv []string, flag string) string {
	for i, a := range argv {
		if a == flag && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}

// checkKeyfile asserts that the --keyfile argument names a private file
// holding the key, as the tool would read it.
func checkKeyfile(t *testing.T, argv []string) {
	t.Helper()
	path := argAfter(argv, "--keyfile")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("keyfile %q: %v", path, err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyfile mode %v, want 0600", fi.Mode().Perm())
	}
	if data, _ := os.ReadFile(path); string(data) != testKey {
		t.Fatalf("keyfile holds %q", data)
	}
}

// fakeHost is a fake sysfs and /dev in a temp dir.
type fakeHost struct {
	sysfs, dev, state string
}

func newFakeHost(t *testing.T, modules ...string) fakeHost {
	t.Helper()
	root := t.TempDir()
	h := fakeHost{sysfs: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev"), state: filepath.Join(root, "state")}
	for _, m := range modules {
		mkdir(t, filepath.Join(h.sysfs, "module", m))
	}
	mkdir(t, h.dev)
	return h
}

func (h fakeHost) config(r util.Runner, mounts Mounts) Config {
	if mounts == nil {
		mounts = mount.NewFakeMounter()
	}
	cfg, err := Config{Runner: r, Mounts: mounts, StateDir: h.state, SysfsRoot: h.sysfs, DevRoot: h.dev}.withDefaults()
	if err != nil {
		panic(err)
	}
	return cfg
}

// addRBDDevice creates /sys/bus/rbd/devices/ID and /dev/rbdID.
func (h fakeHost) addRBDDevice(t *testing.T, id string, files map[string]string) {
	t.Helper()
	dir := filepath.Join(h.sysfs, "bus", "rbd", "devices", id)
	mkdir(t, dir)
	for name, value := range files {
		writeFile(t, filepath.Join(dir, name), value+"\n")
	}
	writeFile(t, filepath.Join(h.dev, "rbd"+id), "")
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	mkdir(t, filepath.Dir(path))
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
