package ceph

import (
	"errors"
	"fmt"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
)

// radosErr carries a (negative) errno the way go-ceph errors do.
type radosErr int

func (e radosErr) Error() string  { return fmt.Sprintf("rados: ret=%d", int(e)) }
func (e radosErr) ErrorCode() int { return int(e) }

func TestCode(t *testing.T) {
	tests := []struct {
		name  string
		err   error
		errno syscall.Errno
		want  codes.Code
	}{
		{"nil", nil, 0, codes.Internal},
		{"plain", errors.New("boom"), 0, codes.Internal},
		{"ENOENT", radosErr(-2), syscall.ENOENT, codes.NotFound},
		{"positive ENOENT", radosErr(2), syscall.ENOENT, codes.NotFound},
		{"wrapped ENOENT", fmt.Errorf("opening image: %w", radosErr(-2)), syscall.ENOENT, codes.NotFound},
		{"EEXIST", radosErr(-17), syscall.EEXIST, codes.AlreadyExists},
		{"EPERM", radosErr(-1), syscall.EPERM, codes.PermissionDenied},
		{"EACCES", radosErr(-13), syscall.EACCES, codes.PermissionDenied},
		{"ETIMEDOUT", radosErr(-110), syscall.ETIMEDOUT, codes.DeadlineExceeded},
		{"EBUSY", radosErr(-16), syscall.EBUSY, codes.FailedPrecondition},
		{"ENOTEMPTY", radosErr(-39), syscall.ENOTEMPTY, codes.FailedPrecondition},
		{"ENOSPC", radosErr(-28), syscall.ENOSPC, codes.ResourceExhausted},
		{"EDQUOT", radosErr(-122), syscall.EDQUOT, codes.ResourceExhausted},
		{"EINVAL", radosErr(-22), syscall.EINVAL, codes.InvalidArgument},
		{"ERANGE", radosErr(-34), syscall.ERANGE, codes.InvalidArgument},
		{"EIO", radosErr(-5), syscall.EIO, codes.Internal},
		{"syscall.Errno", fmt.Errorf("dial: %w", syscall.EACCES), syscall.EACCES, codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Errno(tc.err); got != tc.errno {
				t.Errorf("Errno = %d, want %d", got, tc.errno)
			}
			if got := Code(tc.err); got != tc.want {
				t.Errorf("Code = %v, want %v", got, tc.want)
			}
		})
	}
}
