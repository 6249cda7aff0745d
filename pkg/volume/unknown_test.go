package volume

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

func TestLeftoverCheck(t *testing.T) {
	const uuid = "0c4a7a7e-2f61-4b6e-9d1c-8a3c5b1f2e44"
	id := volumeid.ID{ClusterID: "c", PoolID: 1, UUID: uuid}
	tests := []struct {
		names []string
		want  codes.Code
	}{
		{nil, codes.OK},
		{[]string{"csi-vol-11111111-2222-4333-8444-555555555555"}, codes.OK},
		{[]string{"csi-vol-" + uuid}, codes.FailedPrecondition},
		{[]string{"other-" + uuid}, codes.FailedPrecondition},
	}
	for _, tc := range tests {
		err := Leftover{ID: id, Where: "pool p", What: "image", Names: tc.names}.Check()
		if status.Code(err) != tc.want {
			t.Errorf("%v: %v, want %v", tc.names, err, tc.want)
		}
		if err != nil && !strings.Contains(err.Error(), tc.names[0]) {
			t.Errorf("%v: %v does not name it", tc.names, err)
		}
	}
}
