package util

import (
	"context"
	"errors"
	"io/fs"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestExecRunner(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	tests := []struct {
		name     string
		runner   ExecRunner
		timeout  time.Duration // 0: no deadline on the context
		args     []string
		wantOut  string
		wantCode int // -2: no error expected
		wantErr  error
	}{
		{"success", ExecRunner{}, time.Second, []string{"sh", "-c", "echo hello"}, "hello\n", -2, nil},
		{"exit code and output", ExecRunner{}, time.Second, []string{"sh", "-c", "echo oops >&2; exit 3"}, "oops\n", 3, nil},
		{"killed at the deadline", ExecRunner{}, 100 * time.Millisecond, []string{"sleep", "10"}, "", -1, context.DeadlineExceeded},
		{"default timeout", ExecRunner{DefaultTimeout: 100 * time.Millisecond}, 0, []string{"sleep", "10"}, "", -1, context.DeadlineExceeded},
		{"missing command", ExecRunner{}, time.Second, []string{"/nonexistent/pelagic-cmd"}, "", -1, fs.ErrNotExist},
		// A process in uninterruptible sleep outlives SIGKILL: the call still ends.
		{"unkillable at the deadline", ExecRunner{kill: func(*exec.Cmd) error { return nil }}, 100 * time.Millisecond,
			[]string{"sleep", "4"}, "", -1, context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			start := time.Now()
			out, err := tc.runner.Run(ctx, tc.args[0], tc.args[1:]...)
			if d := time.Since(start); d > tc.timeout+killGrace+time.Second {
				t.Errorf("Run took %v", d)
			}
			if string(out) != tc.wantOut {
				t.Errorf("output %q, want %q", out, tc.wantOut)
			}
			if tc.wantCode == -2 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ee *ExecError
			if !errors.As(err, &ee) || ee.ExitCode != tc.wantCode || ee.Cmd != tc.args[0] {
				t.Fatalf("got %#v, want an ExecError with exit code %d", err, tc.wantCode)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v does not wrap %v", err, tc.wantErr)
			}
			if tc.wantOut != "" && !strings.Contains(err.Error(), strings.TrimSpace(tc.wantOut)) {
				t.Errorf("error %q lacks the output", err)
			}
		})
	}
}

func TestExecErrorTruncatesOutput(t *testing.T) {
	e := &ExecError{Cmd: "mkfs.ext4", ExitCode: 1, Output: strings.Repeat("x", 2000), Err: errors.New("exit status 1")}
	if msg := e.Error(); len(msg) > 600 || !strings.HasSuffix(msg, "...") || !strings.HasPrefix(msg, "mkfs.ext4: exit status 1: ") {
		t.Errorf("message of %d bytes: %.80q", len(msg), msg)
	}
}
