package ceph

import (
	"encoding/json"
	"errors"
	"syscall"

	"google.golang.org/grpc/codes"
)

// Errno returns the Ceph errno carried by err (as a positive number), or
// 0 when err carries none. go-ceph errors expose it through ErrorCode.
func Errno(err error) syscall.Errno {
	var coded interface{ ErrorCode() int }
	if errors.As(err, &coded) {
		c := coded.ErrorCode()
		if c < 0 {
			c = -c
		}
		return syscall.Errno(c)
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return 0
}

// Code maps a Ceph error to the gRPC code a CSI caller should see.
func Code(err error) codes.Code {
	switch Errno(err) {
	case 0:
		return codes.Internal
	case syscall.ENOENT:
		return codes.NotFound
	case syscall.EEXIST:
		return codes.AlreadyExists
	case syscall.EACCES, syscall.EPERM:
		return codes.PermissionDenied
	case syscall.ETIMEDOUT:
		return codes.DeadlineExceeded
	case syscall.EBUSY, syscall.ENOTEMPTY:
		return codes.FailedPrecondition
	case syscall.ENOSPC, syscall.EDQUOT:
		return codes.ResourceExhausted
	case syscall.EINVAL, syscall.ERANGE:
		return codes.InvalidArgument
	default:
		return codes.Internal
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
