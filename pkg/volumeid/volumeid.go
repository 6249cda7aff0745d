// Package volumeid encodes and parses the self-describing IDs of volumes
// and snapshots: which cluster, which pool, which journal entry.
//
// The layout follows ceph-csi's so IDs read the same to operators:
//
//	0001-LLLL-<clusterID>-<poolID as 16 hex digits>-<uuid>
//
// where LLLL is the length of clusterID in hex.
package volumeid

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

const (
	version      = "0001"
	uuidLen      = 36
	maxClusterID = 0xffff
)

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("malformed ID")

// ID names one volume or snapshot.
type ID struct {
	ClusterID string
	PoolID    int64
	UUID      string
}

// String encodes the ID.
func (id ID) String() string {
	return fmt.Sprintf("%s-%04x-%s-%016x-%s", version, len(id.ClusterID), id.ClusterID, id.PoolID, id.UUID)
}

// Validate checks the fields can be encoded and parsed back.
func (id ID) Validate() error {
	switch {
	case id.ClusterID == "" || len(id.ClusterID) > maxClusterID:
		return fmt.Errorf("%w: cluster ID length %d", ErrMalformed, len(id.ClusterID))
	case id.PoolID < 0:
		return fmt.Errorf("%w: negative pool ID", ErrMalformed)
	case !IsUUID(id.UUID):
		return fmt.Errorf("%w: %q is not a UUID", ErrMalformed, id.UUID)
	}
	return nil
}

// Parse decodes s strictly: every field must be present, of the right
// length, and nothing may follow the UUID.
func Parse(s string) (ID, error) {
	bad := func(why string) (ID, error) {
		return ID{}, fmt.Errorf("%w %q: %s", ErrMalformed, s, why)
	}
	if !strings.HasPrefix(s, version+"-") {
		return bad("unknown version")
	}
	rest := s[len(version)+1:]
	if len(rest) < 5 || rest[4] != '-' {
		return bad("missing cluster ID length")
	}
	n, err := parseHex(rest[:4], 16)
	if err != nil || n == 0 {
		return bad("invalid cluster ID length")
	}
	rest = rest[5:]
	// cluster ID, '-', 16 hex pool ID, '-', UUID
	if uint64(len(rest)) != n+1+16+1+uuidLen {
		return bad("wrong length")
	}
	id := ID{ClusterID: rest[:n]}
	rest = rest[n:]
	if rest[0] != '-' || rest[17] != '-' {
		return bad("missing separator")
	}
	pool, err := parseHex(rest[1:17], 63)
	if err != nil {
		return bad("invalid pool ID")
	}
	id.PoolID = int64(pool)
	id.UUID = rest[18:]
	if !IsUUID(id.UUID) {
		return bad("invalid UUID")
	}
	return id, nil
}

// parseHex accepts lower-case hex only, so every ID has one spelling.
func parseHex(s string, bits int) (uint64, error) {
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseUint(s, 16, bits)
}

// IsUUID reports whether s is a canonical lower-case UUID.
func IsUUID(s string) bool {
	if len(s) != uuidLen {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
				return false
			}
		}
	}
	return true
}

// OfBacking is the ID of the volume whose backing (an RBD image or a
// CephFS subvolume) is named name, in the cluster and location given:
// ceph-csi names a backing with a prefix and the UUID of its journal
// entry. "" when name does not end with a UUID.
func OfBacking(clusterID string, location int64, name string) string {
	if len(name) < uuidLen || !IsUUID(name[len(name)-uuidLen:]) {
		return ""
	}
	return ID{ClusterID: clusterID, PoolID: location, UUID: name[len(name)-uuidLen:]}.String()
}
