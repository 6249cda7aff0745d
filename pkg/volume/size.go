package volume

import (
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// MiB is the unit volume sizes are rounded up to.
const MiB = 1 << 20

// RequestSize is the size a capacity range asks for, in whole MiB: the
// required bytes rounded up, or def (capped by the limit) when none are
// required. InvalidArgument for a range that contradicts itself,
// OutOfRange when rounding passes the limit.
func RequestSize(r *csi.CapacityRange, def int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity must not be negative")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "required bytes %d exceed limit bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = def
		if lim > 0 && lim < size {
			size = max(lim/MiB*MiB, MiB) // the largest whole MiB within the limit
		}
	}
	rounded := (size + MiB - 1) / MiB * MiB
	if lim > 0 && rounded > lim {
		return 0, status.Errorf(codes.OutOfRange, "%d bytes rounded up to whole MiB (%d) exceed the limit %d", size, rounded, lim)
	}
	return rounded, nil
}
