package util

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
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
}

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
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
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
