package mapper

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

func TestMain(m *testing.M) { os.Exit(cephtest.Main(m)) }

// recordingRunner runs commands for real and remembers every argv.
type recordingRunner struct {
	util.ExecRunner
	mu    sync.Mutex
	argvs [][]string
}

func (r *recordingRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	r.argvs = append(r.argvs, append([]string{name}, args...))
	r.mu.Unlock()
	return r.ExecRunner.Run(ctx, name, args...)
}

func (r *recordingRunner) assertNoSecret(t *testing.T, secret string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, argv := range r.argvs {
		if strings.Contains(strings.Join(argv, " "), secret) {
			t.Fatalf("the key is on a command line: %q", argv[0])
		}
	}
}

// realCluster is the test's view of the shared cluster.
type realCluster struct {
	c *cephtest.Cluster
}

// rbd runs the rbd CLI as admin.
func (rc realCluster) rbd(t *testing.T, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rbd", append([]string{"-c", rc.c.Conf, "--id", rc.c.AdminID}, args...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("rbd %v: %v: %s", args, err, ee.Stderr)
		}
		t.Fatalf("rbd %v: %v", args, err)
	}
	return out
}

func (rc realCluster) createImage(t *testing.T, img Image) {
	t.Helper()
	rc.rbd(t, "create", "--size", "64M", img.Spec())
	t.Cleanup(func() { rc.rbd(t, "rm", "--no-progress", img.Spec()) })
}

func (rc realCluster) createNamespace(t *testing.T, namespace string) {
	t.Helper()
	rc.rbd(t, "namespace", "create", "--pool", rc.c.Pool, "--namespace", namespace)
	t.Cleanup(func() { rc.rbd(t, "namespace", "remove", "--pool", rc.c.Pool, "--namespace", namespace) })
}

// rbdWatcher is one entry of `rbd status --format json`.
type rbdWatcher struct {
	Address string `json:"address"`
	Client  uint64 `json:"client"`
}

// watchers returns the addresses and client ids watching an image.
func (rc realCluster) watchers(t *testing.T, img Image) []rbdWatcher {
	t.Helper()
	ws, err := rc.status(img)
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

// status is watchers for any goroutine: it returns its error.
func (rc realCluster) status(img Image) ([]rbdWatcher, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rbd", "-c", rc.c.Conf, "--id", rc.c.AdminID, "status", "--format", "json", img.Spec()).Output()
	if err != nil {
		return nil, fmt.Errorf("rbd status %s: %w", img.Spec(), err)
	}
	var status struct {
		Watchers []rbdWatcher `json:"watchers"`
	}
	return status.Watchers, json.Unmarshal(out, &status)
}

func (rc realCluster) image(namespace, name string) Image {
	return Image{ClusterID: rc.c.FSID, Monitors: []string{rc.c.Monitors}, Pool: rc.c.Pool, RadosNamespace: namespace,
		Name: name, Creds: ceph.Credentials{ID: rc.c.RBDUserID, Key: rc.c.RBDUserKey}}
}

func randomSuffix(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestFuseRealCluster maps images through rbd-fuse and loop devices on a real
// one-node Ceph cluster (e2e/cephtest).
func TestFuseRealCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Ceph cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts and loop devices")
	}
	for _, tool := range []string{"rbd-fuse", "rbd", "losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	rc := realCluster{cephtest.Get(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	runner := &recordingRunner{ExecRunner: util.ExecRunner{DefaultTimeout: time.Minute}}
	stateDir := t.TempDir()
	newMapper := func() Mapper { // a fresh instance: what a driver restart sees
		reg, err := NewRegistry(Config{Runner: runner, StateDir: stateDir})
		if err != nil {
			t.Fatal(err)
		}
		m, err := reg.Get("rbd-fuse")
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := newMapper()
	if err := m.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}

	// B lives in a rados namespace.
	suffix := randomSuffix(t)
	imgA, imgB := rc.image("", "mapper-a-"+suffix), rc.image("mapper-ns-"+suffix, "mapper-b-"+suffix)
	rc.createNamespace(t, imgB.RadosNamespace)
	rc.createImage(t, imgA)
	rc.createImage(t, imgB)
	t.Cleanup(func() { // unmap whatever a failed test left, before the images go
		for _, img := range []Image{imgA, imgB} {
			m := Mapping{Pool: img.Pool, RadosNamespace: img.RadosNamespace, Image: img.Name}
			if err := newMapper().Unmap(context.Background(), m, UnmapOptions{}); err != nil {
				t.Errorf("cleanup unmap %s: %v", img.Spec(), err)
			}
		}
	})

	// Map A, write through its loop device.
	a, err := m.Map(ctx, imgA, MapOptions{})
	if err != nil {
		t.Fatalf("Map A: %v", err)
	}
	t.Logf("A mapped: %+v", a)
	if !strings.HasPrefix(a.Device, "/dev/loop") || a.Mapper != Fuse || a.Image != imgA.Name {
		t.Fatalf("Map A = %+v", a)
	}
	pattern := bytes.Repeat([]byte("pelagic!"), 128<<10) // 1 MiB
	writeDevice(t, a.Device, pattern)

	// Its watcher is the rbd-fuse client Map reported.
	requireWatcher(t, rc.watchers(t, imgA), a)

	// Mapping again returns the same mapping.
	if again, err := m.Map(ctx, imgA, MapOptions{}); err != nil || again != a {
		t.Fatalf("second Map A = %+v, %v; want %+v", again, err, a)
	}

	// The key is nowhere but in memory: not on any argv, not left in the mapping dir.
	runner.assertNoSecret(t, rc.c.RBDUserKey)
	assertNoFileHolds(t, stateDir, rc.c.RBDUserKey)

	// Map B read-only, in a process of its own.
	b, err := m.Map(ctx, imgB, MapOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("Map B: %v", err)
	}
	if b.Device == a.Device || b.ClientAddr == a.ClientAddr {
		t.Fatalf("B shares A's device or client: %+v %+v", a, b)
	}
	requireWatcher(t, rc.watchers(t, imgB), b)
	if ro, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(b.Device), "ro")); err != nil || strings.TrimSpace(string(ro)) != "1" {
		t.Fatalf("read-only mapping %s: sysfs ro = %q, %v", b.Device, ro, err)
	}
	if f, err := os.OpenFile(b.Device, os.O_WRONLY|syscall.O_SYNC, 0); err == nil {
		_, werr := f.Write(make([]byte, 4096))
		f.Close()
		if werr == nil {
			t.Fatalf("wrote to read-only mapping %s", b.Device)
		}
	}

	// A restarted driver still lists both.
	listed, err := newMapper().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !containsMapping(listed, a) || !containsMapping(listed, b) || len(listed) != 2 {
		t.Fatalf("List after restart = %+v", listed)
	}

	// Unmapping A (from the restarted instance) drops its watch and leaves B alone.
	if err := newMapper().Unmap(ctx, a, UnmapOptions{}); err != nil {
		t.Fatalf("Unmap A: %v", err)
	}
	if w := rc.watchers(t, imgA); len(w) != 0 {
		t.Fatalf("A still watched after Unmap: %+v", w)
	}
	requireWatcher(t, rc.watchers(t, imgB), b)
	readDevice(t, b.Device, 4096)
	if err := m.Unmap(ctx, a, UnmapOptions{}); err != nil {
		t.Fatalf("second Unmap A: %v", err)
	}
	if listed, err := newMapper().List(ctx); err != nil || len(listed) != 1 || listed[0] != b {
		t.Fatalf("List after unmapping A = %+v, %v; want only B", listed, err)
	}

	// A again: the data written earlier reached Ceph.
	a, err = m.Map(ctx, imgA, MapOptions{})
	if err != nil {
		t.Fatalf("Map A again: %v", err)
	}
	if got := readDevice(t, a.Device, len(pattern)); !bytes.Equal(got, pattern) {
		t.Fatal("data written through the first mapping of A did not come back")
	}

	// Growing the image: the loop device follows after Resize.
	rc.rbd(t, "resize", "--no-progress", "--size", "128M", imgA.Spec())
	if err := m.(Resizer).Resize(ctx, a); err != nil {
		t.Fatalf("Resize: %v", err)
	}
	mounter := mount.NewHostMounter(mount.Config{Runner: runner})
	if size, err := mounter.DeviceSize(ctx, a.Device); err != nil || size != 128<<20 {
		t.Fatalf("device size after Resize = %d, %v; want %d", size, err, 128<<20)
	}

	// A mounted filesystem makes Unmap fail with ErrBusy naming the mount.
	if err := mounter.Format(ctx, a.Device, "ext4", nil); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := mounter.Mount(ctx, a.Device, target, "ext4", nil); err != nil {
		t.Fatal(err)
	}
	err = m.Unmap(ctx, a, UnmapOptions{})
	if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), target) {
		t.Fatalf("Unmap of a mounted device = %v, want ErrBusy naming %s", err, target)
	}
	requireWatcher(t, rc.watchers(t, imgA), a)
	if err := mounter.Unmount(ctx, target); err != nil {
		t.Fatal(err)
	}

	for _, mp := range []Mapping{a, b} {
		if err := m.Unmap(ctx, mp, UnmapOptions{}); err != nil {
			t.Fatalf("Unmap %s: %v", mp.Image, err)
		}
	}
	for _, img := range []Image{imgA, imgB} {
		if w := rc.watchers(t, img); len(w) != 0 {
			t.Fatalf("%s still watched after Unmap: %+v", img.Spec(), w)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(stateDir, "fuse")); len(entries) != 0 {
		t.Fatalf("mapping directories left behind: %v", entries)
	}
}

// TestFuseRealAdmit: with a real rbd-fuse, Admit runs once rbd-fuse has
// mounted and before it opens the image (nothing watches the image yet),
// so a node may check the image's holders meanwhile; a refusal undoes the
// start and leaves nothing behind.
func TestFuseRealAdmit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Ceph cluster")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts and loop devices")
	}
	rc := realCluster{cephtest.Get(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stateDir := t.TempDir()
	reg, err := NewRegistry(Config{Runner: util.ExecRunner{DefaultTimeout: time.Minute}, StateDir: stateDir})
	if err != nil {
		t.Fatal(err)
	}
	m, err := reg.Get(Fuse)
	if err != nil {
		t.Fatal(err)
	}
	img := rc.image("", "mapper-admit-"+randomSuffix(t))
	rc.createImage(t, img)

	refused := errors.New("held elsewhere")
	var watchedAtAdmit []rbdWatcher
	_, err = m.Map(ctx, img, MapOptions{Admit: func(context.Context) error {
		watchedAtAdmit = rc.watchers(t, img)
		return refused
	}})
	if !errors.Is(err, refused) {
		t.Fatalf("Map = %v, want Admit's refusal", err)
	}
	if len(watchedAtAdmit) != 0 {
		t.Fatalf("the image was watched when Admit ran: %+v", watchedAtAdmit)
	}
	if listed, err := m.List(ctx); err != nil || len(listed) != 0 {
		t.Fatalf("List after a refused Map = %+v, %v; want nothing", listed, err)
	}
	if w := rc.watchers(t, img); len(w) != 0 {
		t.Fatalf("the image is watched after a refused Map: %+v", w)
	}
	if entries, _ := os.ReadDir(filepath.Join(stateDir, "fuse")); len(entries) != 0 {
		t.Fatalf("mapping directories left after a refused Map: %v", entries)
	}

	admitted := false
	var listed atomic.Int32
	mp, err := m.Map(ctx, img, MapOptions{
		Admit: func(context.Context) error {
			admitted, watchedAtAdmit = true, rc.watchers(t, img)
			return nil
		},
		// The caller's lister, not the mapper's own, finds rbd-fuse's client.
		Watchers: func(context.Context) ([]Watcher, error) {
			listed.Add(1)
			ws, err := rc.status(img)
			out := make([]Watcher, 0, len(ws))
			for _, w := range ws {
				out = append(out, Watcher{Addr: w.Address, Client: w.Client})
			}
			return out, err
		},
	})
	if err != nil {
		t.Fatalf("Map admitted: %v", err)
	}
	t.Cleanup(func() { _ = m.Unmap(context.Background(), mp, UnmapOptions{}) })
	if !admitted || len(watchedAtAdmit) != 0 {
		t.Fatalf("Admit called %v, with the image watched by %+v; want called, unwatched", admitted, watchedAtAdmit)
	}
	if listed.Load() == 0 {
		t.Fatal("rbd-fuse's client was learnt without MapOptions.Watchers")
	}
	requireWatcher(t, rc.watchers(t, img), mp)
	// The messenger logging the identity was learnt from is turned off
	// once it is learnt.
	socket := filepath.Join(m.(*fuse).dirFor(img.ClusterID, img.Pool, img.RadosNamespace, img.Name), fuseSocketFile)
	var level []byte
	err = util.WaitFor(ctx, 10*time.Second, "rbd-fuse's messenger logging off", func() (bool, error) {
		out, err := asokCommand(ctx, socket, map[string]any{"prefix": "config get", "var": "debug_ms"})
		level = out
		return bytes.Contains(out, []byte(`"0/0"`)), err
	})
	if err != nil {
		t.Fatalf("%v: debug_ms is %s", err, level)
	}
	if err := m.Unmap(ctx, mp, UnmapOptions{}); err != nil {
		t.Fatal(err)
	}
}

// requireWatcher checks that the mapping's client is among the watchers.
func requireWatcher(t *testing.T, watchers []rbdWatcher, m Mapping) {
	t.Helper()
	if m.ClientAddr == "" {
		t.Fatalf("mapping of %s has no client address", m.Image)
	}
	for _, w := range watchers {
		if w.Address == m.ClientAddr && "client."+strconv.FormatUint(w.Client, 10) == m.ClientID {
			return
		}
	}
	t.Fatalf("no watcher of %s is %s %s: %+v", m.Image, m.ClientAddr, m.ClientID, watchers)
}

func containsMapping(ms []Mapping, m Mapping) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

func writeDevice(t *testing.T, device string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(device, os.O_WRONLY|syscall.O_SYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatalf("writing %s: %v", device, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("syncing %s: %v", device, err)
	}
}

func readDevice(t *testing.T, device string, n int) []byte {
	t.Helper()
	f, err := os.Open(device)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatalf("reading %s: %v", device, err)
	}
	return buf
}

// assertNoFileHolds fails if any file under dir contains secret.
func assertNoFileHolds(t *testing.T, dir, secret string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == fuseMountDir {
			return filepath.SkipDir // the images themselves
		}
		if !d.Type().IsRegular() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err == nil && bytes.Contains(data, []byte(secret)) {
			t.Fatalf("%s holds the key", path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}
