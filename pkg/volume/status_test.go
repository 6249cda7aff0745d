package volume

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// errnoErr carries a (negative) errno the way go-ceph errors do.
type errnoErr int

func (e errnoErr) Error() string  { return fmt.Sprintf("rados: ret=%d", int(e)) }
func (e errnoErr) ErrorCode() int { return int(e) }

func TestStatus(t *testing.T) {
	imageGone := fmt.Errorf("image %w", ErrNotFound) // as a driver wraps it
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"a status passes", status.Error(codes.Unavailable, "x"), codes.Unavailable},
		{"deadline", fmt.Errorf("stat: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"canceled", context.Canceled, codes.Canceled},
		{"in use", fmt.Errorf("image p/i is in use by client.1: %w", fmt.Errorf("image %w", ErrInUse)), codes.FailedPrecondition},
		{"a driver's not found", fmt.Errorf("%w: p/i", imageGone), codes.NotFound},
		{"no journal entry", journal.ErrNotFound, codes.NotFound},
		{"exists", ErrExists, codes.AlreadyExists},
		{"name taken", fmt.Errorf("%w: volume %q", journal.ErrNameTaken, "pvc-1"), codes.Aborted},
		{"credentials", ceph.ErrMissingCredentials, codes.InvalidArgument},
		{"unknown cluster", ceph.ErrUnknownCluster, codes.InvalidArgument},
		{"no such pool", ceph.ErrPoolNotFound, codes.InvalidArgument},
		{"errno", fmt.Errorf("opening: %w", errnoErr(-13)), codes.PermissionDenied},
		{"anything else", errors.New("boom"), codes.Internal},
	}
	for _, tc := range tests {
		err := Status(tc.err)
		if status.Code(err) != tc.want {
			t.Errorf("%s: Status = %v, want %v", tc.name, err, tc.want)
		}
		if s, _ := status.FromError(err); s.Message() != tc.err.Error() && tc.want != codes.Unavailable {
			t.Errorf("%s: message %q, want the error's own %q", tc.name, s.Message(), tc.err)
		}
	}
	if Status(nil) != nil {
		t.Error("Status(nil) is not nil")
	}
}
