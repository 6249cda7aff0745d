package volume

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	mib = int64(MiB)
	gib = 1024 * mib
)

func TestRequestSize(t *testing.T) {
	tests := []struct {
		name     string
		req, lim int64
		def      int64
		want     int64
		code     codes.Code
	}{
		{"default", 0, 0, gib, gib, codes.OK},
		{"one byte", 1, 0, gib, mib, codes.OK},
		{"exact MiB", 5 * mib, 0, gib, 5 * mib, codes.OK},
		{"rounded up", 5*mib + 1, 0, gib, 6 * mib, codes.OK},
		{"limit caps default", 0, 10 * mib, gib, 10 * mib, codes.OK},
		{"limit equals rounded size", mib + 1, 2 * mib, gib, 2 * mib, codes.OK},
		{"limit below rounded size", 1, 1000, gib, 0, codes.OutOfRange},
		{"limit not a MiB multiple", mib + mib/2, mib + mib/2, gib, 0, codes.OutOfRange},
		{"required above limit", 2 * mib, mib, gib, 0, codes.InvalidArgument},
		{"negative required", -1, 0, gib, 0, codes.InvalidArgument},
		{"negative limit", 0, -1, gib, 0, codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RequestSize(&csi.CapacityRange{RequiredBytes: tc.req, LimitBytes: tc.lim}, tc.def)
			if status.Code(err) != tc.code || got != tc.want {
				t.Errorf("got %d, %v; want %d, %v", got, err, tc.want, tc.code)
			}
		})
	}
}
