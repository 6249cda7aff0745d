package daemonhost

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

func TestAllowed(t *testing.T) {
	daemons := []string{"rbd-fuse", "rbd-nbd"}
	for _, tt := range []struct {
		name string
		args []string
		ok   bool
	}{
		{"rbd-fuse", []string{"-c", "conf", "mnt"}, true},
		{"rbd-nbd", []string{"map", "rbd/img"}, true},
		{"nsenter", []string{"--net=/run/netns/a", "--", "rbd-fuse", "mnt"}, true},
		{"/tmp/rbd-fuse", nil, false},
		{"sh", []string{"-c", "rbd-fuse"}, false},
		{"nsenter", []string{"--net=/run/netns/a", "--", "sh"}, false},
		{"nsenter", []string{"--mount=/proc/1/ns/mnt", "--", "rbd-fuse"}, false},
		{"nsenter", []string{"--net=/run/netns/a", "rbd-fuse"}, false},
	} {
		if err := allowed(tt.name, tt.args, daemons); (err == nil) != tt.ok {
			t.Errorf("allowed(%s %q) = %v, want allowed %v", tt.name, tt.args, err, tt.ok)
		}
	}
}

// scriptedRunner answers commands by name.
type scriptedRunner struct {
	calls    chan []string
	deadline chan time.Duration
}

func (r *scriptedRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	r.calls <- append([]string{name}, args...)
	if d, ok := ctx.Deadline(); ok {
		r.deadline <- time.Until(d)
	} else {
		r.deadline <- 0
	}
	switch args[0] {
	case "fail":
		return []byte("rbd-fuse: no such image\n"), &util.ExecError{Cmd: name, ExitCode: 2, Output: "rbd-fuse: no such image\n",
			Err: errors.New("exit status 2")}
	case "missing":
		return nil, &util.ExecError{Cmd: name, ExitCode: -1, Err: exec.ErrNotFound}
	case "slow":
		<-ctx.Done()
		return nil, &util.ExecError{Cmd: name, ExitCode: -1, Err: ctx.Err()}
	}
	return []byte("mapped\n"), nil
}

func TestServeAndRun(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "host", "daemons.sock")
	runner := &scriptedRunner{calls: make(chan []string, 10), deadline: make(chan time.Duration, 10)}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, Options{Socket: socket, Runner: runner}) }()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	c := NewClient(socket)
	call, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitListening(call, socket); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}

	out, err := c.Run(call, "rbd-fuse", "ok", "--keyfile", "/state/keys/key-1/keyfile")
	if err != nil || string(out) != "mapped\n" {
		t.Fatalf("Run = %q, %v", out, err)
	}
	if got := <-runner.calls; strings.Join(got, " ") != "rbd-fuse ok --keyfile /state/keys/key-1/keyfile" {
		t.Fatalf("the host ran %q", got)
	}
	if d := <-runner.deadline; d <= 0 || d > 30*time.Second {
		t.Fatalf("the host ran it with deadline %v; want the caller's", d)
	}

	_, err = c.Run(call, "rbd-fuse", "fail")
	var ee *util.ExecError
	if !errors.As(err, &ee) || ee.ExitCode != 2 || !strings.Contains(err.Error(), "no such image") ||
		strings.Count(err.Error(), "no such image") != 1 {
		t.Fatalf("failed command: %v; want an ExecError with exit code 2 and the output once", err)
	}
	<-runner.calls
	<-runner.deadline

	if _, err := c.Run(call, "rbd-nbd", "missing"); !errors.Is(err, exec.ErrNotFound) {
		t.Fatalf("missing command: %v; want exec.ErrNotFound", err)
	}
	<-runner.calls
	<-runner.deadline

	short, cancelShort := context.WithTimeout(call, 200*time.Millisecond)
	defer cancelShort()
	if _, err := c.Run(short, "rbd-fuse", "slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow command: %v; want DeadlineExceeded", err)
	}
	<-runner.calls
	<-runner.deadline

	if _, err := c.Run(call, "sh", "-c", "id"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("a command that is not a daemon: %v; want refused", err)
	}
	select {
	case got := <-runner.calls:
		t.Fatalf("the host ran %q", got)
	default:
	}

	if _, err := NewClient(filepath.Join(t.TempDir(), "none.sock")).Run(call, "rbd-fuse"); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("no host: %v; want ErrUnreachable", err)
	}
}

func waitListening(ctx context.Context, socket string) error {
	for {
		if _, err := os.Stat(socket); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
