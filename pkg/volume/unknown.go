package volume

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// Leftover describes where a volume whose ID no journal knows would have
// its backing, for DeleteVolume to check that nothing of it is left.
type Leftover struct {
	ID         volumeid.ID
	InstanceID string   // ceph-csi's --instanceid, whose journal was read too
	Where      string   // "pool rbd", "subvolume group csi of filesystem a"
	What       string   // "image", "subvolume"
	Names      []string // the backings there
}

// Check answers the deletion: nil when no backing is named after the ID's
// UUID (the volume's, under any prefix), FailedPrecondition naming those
// that are: nothing records that they belong to this volume, and deleting
// data on a guess cannot be undone.
func (l Leftover) Check() error {
	var left []string
	for _, name := range l.Names {
		if strings.HasSuffix(name, l.ID.UUID) {
			left = append(left, name)
		}
	}
	if len(left) == 0 {
		return nil
	}
	return status.Errorf(codes.FailedPrecondition,
		"volume %s is in no journal (Pelagic's, or ceph-csi's under instance ID %q), yet %s holds %s, named after its UUID; "+
			"not deleting a %s nothing ties to this volume: remove it by hand if it is this volume's data, "+
			"or check the instance ID ceph-csi ran with (--instanceid)",
		l.ID, l.InstanceID, l.Where, strings.Join(left, ", "), l.What)
}
