package volume

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// Errors a driver's backend wraps so that Status picks the right code
// whatever the driver: an RBD image or a CephFS subvolume that is not
// there, that is there already, or that someone uses.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInUse    = errors.New("in use")
)

// Status turns an error into the gRPC status a CSI caller should see; a
// status passes through. Messages are the errors' own: they name volumes,
// pools and clusters, never a key. What only one driver knows (its mapper,
// its mgr's refusals) that driver maps before.
func Status(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(code(err), err.Error())
}

func code(err error) codes.Code {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, ErrInUse):
		return codes.FailedPrecondition
	case errors.Is(err, ErrNotFound), errors.Is(err, journal.ErrNotFound):
		return codes.NotFound
	case errors.Is(err, ErrExists):
		return codes.AlreadyExists
	case errors.Is(err, journal.ErrNameTaken):
		return codes.Aborted
	case errors.Is(err, ceph.ErrMissingCredentials), errors.Is(err, ceph.ErrUnknownCluster), errors.Is(err, ceph.ErrPoolNotFound):
		return codes.InvalidArgument
	}
	return ceph.Code(err) // by the errno a Ceph error carries; Internal without one
}

// Final reports whether a CreateVolume that failed with st (a gRPC status)
// is over for the external-provisioner. On any other code it calls again,
// even after the claim's deletion, until the call succeeds or fails
// finally; so a reservation stays for that retry, whose create may be
// under way in Ceph or in another replica meanwhile.
func Final(st error) bool {
	switch status.Code(st) {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return false
	}
	return true
}
