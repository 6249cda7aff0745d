package util

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// Runner runs host commands. Every call carries a deadline; the real
// implementation kills the command when it passes.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExecRunner runs commands with os/exec. DefaultTimeout applies when the
// context has no deadline of its own.
type ExecRunner struct {
	DefaultTimeout time.Duration

	// kill ends a command whose context is done; nil is SIGKILL. Tests
	// replace it to stand for a process the kernel holds in uninterruptible
	// sleep, which SIGKILL cannot end.
	kill func(*exec.Cmd) error
}

// killGrace is how long a killed command may take to be reaped before the
// call returns without it.
const killGrace = 2 * time.Second

// ExecError reports a failed command with its exit code and output.
type ExecError struct {
	Cmd      string
	ExitCode int
	Output   string
	Err      error
}

func (e *ExecError) Error() string {
	out := strings.TrimSpace(e.Output)
	if len(out) > 512 {
		out = out[:512] + "..."
	}
	if out == "" {
		return fmt.Sprintf("%s: %v", e.Cmd, e.Err)
	}
	return fmt.Sprintf("%s: %v: %s", e.Cmd, e.Err, out)
}

func (e *ExecError) Unwrap() error { return e.Err }

// Run executes name with args and returns combined output.
func (r ExecRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		timeout := r.DefaultTimeout
		if timeout <= 0 {
			timeout = 2 * time.Minute
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, name, args...)
	if r.kill != nil {
		cmd.Cancel = func() error { return r.kill(cmd) }
	}
	cmd.WaitDelay = killGrace
	var out LockedBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := wait(ctx, cmd)
	if err == nil {
		return out.Bytes(), nil
	}
	ee := &ExecError{Cmd: name, ExitCode: -1, Output: out.String(), Err: err}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		ee.ExitCode = exitErr.ExitCode()
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		ee.Err = ctxErr
	}
	return out.Bytes(), ee
}

// wait runs cmd and returns when it ends, or at the latest killGrace after
// ctx is done: a process in uninterruptible sleep (mkfs writing to a device
// whose OSD stalled) outlives SIGKILL, and the caller's deadline must hold
// anyway. Such a process is reaped in the background once it can exit.
func wait(ctx context.Context, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	select {
	case err := <-done:
		return err
	case <-time.After(killGrace):
		return fmt.Errorf("killed at its deadline, still not ended after %v: %w", killGrace, ctx.Err())
	}
}

// LockedBuffer is a buffer one goroutine writes while another reads it: a
// command's output, which a command that outlived its call may still write.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

func (l *LockedBuffer) String() string { return string(l.Bytes()) }
