package cephfs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mount"
)

// stalledFuse stands for a ceph-fuse whose cluster stalled: it forks its
// daemon (a process whose command line, in a /proc of the test's own,
// names the mount point), then waits for the mount until its deadline.
type stalledFuse struct {
	t        *testing.T
	procRoot string
	daemon   *exec.Cmd
}

func (s *stalledFuse) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	s.daemon = exec.Command("sleep", "60")
	if err := s.daemon.Start(); err != nil {
		s.t.Fatal(err)
	}
	dir := filepath.Join(s.procRoot, strconv.Itoa(s.daemon.Process.Pid))
	cmdline := strings.Join(append([]string{"/usr/bin/" + name}, args...), "\x00") + "\x00"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cmdline"), []byte(cmdline), 0o644); err != nil {
		s.t.Fatal(err)
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// expectDaemonStopped fails with why unless the daemon exits soon.
func (s *stalledFuse) expectDaemonStopped(why string) {
	s.t.Helper()
	exited := make(chan error, 1)
	go func() { exited <- s.daemon.Wait() }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = s.daemon.Process.Kill()
		s.t.Fatal(why)
	}
}

// TestFuseMountStopsItsDaemonAtTheDeadline: a ceph-fuse mount the deadline
// cuts short leaves no daemon to mount later, where no record names it.
func TestFuseMountStopsItsDaemonAtTheDeadline(t *testing.T) {
	runner := &stalledFuse{t: t, procRoot: t.TempDir()}
	f := &FuseMounter{Daemons: runner, KeyDir: t.TempDir(), ProcRoot: runner.procRoot}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := f.Mount(ctx, MountRequest{Monitors: []string{"10.0.0.1:6789"}, FS: "cephfs", Root: "/volumes/csi/v",
		Creds: ceph.Credentials{ID: "csi", Key: "QUJD"}, Dir: filepath.Join(t.TempDir(), "mnt")})
	if err == nil {
		t.Fatal("a mount past its deadline succeeded")
	}
	runner.expectDaemonStopped(fmt.Sprintf("the daemon of the mount cut short lives on (%v)", err))
}

// TestFuseUnmountAwaitsTheClientsExit: unmounted, ceph-fuse exits by
// itself once its session is closed; one that lingers past the call's
// deadline is stopped, so no client outlives the unmount.
func TestFuseUnmountAwaitsTheClientsExit(t *testing.T) {
	runner := &stalledFuse{t: t, procRoot: t.TempDir()}
	dir := filepath.Join(t.TempDir(), "mnt")
	started, cancelStart := context.WithCancel(context.Background())
	cancelStart()
	_, _ = runner.Run(started, fuseBinary, "-c", "/dev/null", dir) // a daemon serving dir, whose mount fails
	mounts := mount.NewFakeMounter()
	mounts.Mounts[dir] = mount.FakeMount{Device: "ceph-fuse"}
	f := &FuseMounter{Mounts: mounts, ProcRoot: runner.procRoot}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := f.Unmount(ctx, Mount{Mounter: MounterFuse, Dir: dir}, false); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Unmount returned %v after its deadline", took)
	}
	runner.expectDaemonStopped("the ceph-fuse that lingered after its unmount lives on")
	if _, mounted := mounts.Mounts[dir]; mounted {
		t.Error("not unmounted")
	}
}
