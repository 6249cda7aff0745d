package nodefs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/mount"
)

// Publication is one target a volume is published at, as its stage
// record keeps it.
type Publication struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Capability is the CapabilityKey of the publish; "" in records of
	// older versions, which stored the path alone.
	Capability string `json:"capability,omitempty"`
}

// UnmarshalJSON also reads the bare path older versions stored.
func (p *Publication) UnmarshalJSON(b []byte) error {
	var path string
	if json.Unmarshal(b, &path) == nil {
		*p = Publication{Path: path}
		return nil
	}
	type plain Publication
	return json.Unmarshal(b, (*plain)(p))
}

// CapabilityKey is what makes two capabilities the same for a node: access
// mode and type, and for a filesystem its type (fsType, with the driver's
// default filled in) and mount flags.
func CapabilityKey(c *csi.VolumeCapability, fsType string) string {
	key := c.GetAccessMode().GetMode().String()
	if c.GetBlock() != nil {
		return key + "/block"
	}
	flags := slices.Clone(c.GetMount().GetMountFlags())
	slices.Sort(flags)
	return key + "/" + fsType + "/" + strings.Join(flags, ",")
}

// Conflict says why a publish with the capability key and read-only flag
// does not match p; "" when it matches.
func (p Publication) Conflict(key string, readOnly bool) string {
	if p.Capability == "" {
		return "" // recorded by an older version: nothing to compare
	}
	if key != p.Capability || readOnly != p.ReadOnly {
		return fmt.Sprintf("published as %s, read-only %v; asked for %s, read-only %v", p.Capability, p.ReadOnly, key, readOnly)
	}
	return ""
}

// Bind binds source at the publication's path, read-only when it is: a
// staged filesystem onto a directory, a block device (block) onto a file.
// Both are made when missing.
func Bind(ctx context.Context, m mount.Mounter, source string, block bool, p Publication) error {
	if block {
		if err := MakeFile(p.Path); err != nil {
			return status.Error(codes.Internal, err.Error())
		}
	} else if err := os.MkdirAll(p.Path, 0o750); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	if err := m.BindMount(ctx, source, p.Path, p.ReadOnly); err != nil {
		return status.Errorf(codes.Internal, "bind-mounting %s at %s: %v", source, p.Path, err)
	}
	return nil
}

// MakeFile creates an empty file at path, and its directory.
func MakeFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}

// Unpublish unmounts target and removes it; a target already gone is
// success.
func Unpublish(ctx context.Context, m mount.Mounter, target string) error {
	if err := m.Unmount(ctx, target); err != nil {
		return status.Errorf(codes.Internal, "unmounting %s: %v", target, err)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return status.Error(codes.Internal, err.Error())
	}
	return nil
}

// Target is a publish of a staged volume: Source (a staged filesystem, or
// the device of a Block volume) bound at the publication's path.
type Target struct {
	Publication
	VolumeID     string
	Source       string
	Block        bool
	SingleWriter bool // SINGLE_NODE_SINGLE_WRITER: one target at most
}

// Staged is a driver's stage record as publishing needs it.
type Staged interface {
	Target(req *csi.NodePublishVolumeRequest) Target // the publish req asks for
	Published() *[]Publication                       // where the record keeps its targets
}

// Publish binds t unless it is in place already, then adds it to the
// targets of rec, the stage record of staging, and writes rec. AlreadyExists
// when the path holds something else, or the volume published otherwise;
// FailedPrecondition when a single-writer volume is published elsewhere.
// Targets no longer mounted are forgotten.
func Publish(ctx context.Context, m mount.Mounter, t Target, staging string, rec Staged) error {
	targets := rec.Published()
	if mounted, _ := m.IsMountPoint(ctx, t.Path); mounted {
		return t.inPlace(*targets)
	}
	*targets = slices.DeleteFunc(*targets, func(p Publication) bool {
		mounted, _ := m.IsMountPoint(ctx, p.Path)
		return !mounted
	})
	if t.SingleWriter && len(*targets) > 0 {
		return status.Errorf(codes.FailedPrecondition, "volume %s is single-writer and already published at %s",
			t.VolumeID, (*targets)[0].Path)
	}
	if err := Bind(ctx, m, t.Source, t.Block, t.Publication); err != nil {
		return err
	}
	*targets = append(*targets, t.Publication)
	if err := WriteRecord(staging, rec); err != nil {
		return status.Errorf(codes.Internal, "recording the publication: %v", err)
	}
	return nil
}

// inPlace checks that what is mounted at the target is t as targets
// record it.
func (t Target) inPlace(targets []Publication) error {
	i := slices.IndexFunc(targets, func(p Publication) bool { return p.Path == t.Path })
	if i < 0 {
		return status.Errorf(codes.AlreadyExists, "target %s already holds a mount that is not volume %s", t.Path, t.VolumeID)
	}
	if why := targets[i].Conflict(t.Capability, t.ReadOnly); why != "" {
		return status.Errorf(codes.AlreadyExists, "volume %s is already published at %s incompatibly: %s", t.VolumeID, t.Path, why)
	}
	return nil
}
