package rbd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/mapper"
)

// stageRecord is written beside the staging path once the image is mapped,
// so unstage, publish, expand and the replacement of a dead mapping work
// after a driver restart.
type stageRecord struct {
	VolumeID  string         `json:"volumeID"`
	ClusterID string         `json:"clusterID"`
	Mapping   mapper.Mapping `json:"mapping"`
	Block     bool           `json:"block"`
	FSType    string         `json:"fsType,omitempty"`
	// Mode and MountFlags are the staged access mode and mount flags; ""
	// and none in records of older versions.
	Mode       string        `json:"mode,omitempty"`
	MountFlags []string      `json:"mountFlags,omitempty"`
	Staged     time.Time     `json:"staged"`
	Targets    []publication `json:"targets,omitempty"` // where it is published
	// UnmapOptions are the mapper's part of the StorageClass's
	// unmapOptions, for the unstage.
	UnmapOptions string `json:"unmapOptions,omitempty"`
	// VolumeContext is the stage's volume context (no secrets), for
	// mapping the volume again when its mapping dies.
	VolumeContext map[string]string `json:"volumeContext,omitempty"`
}

// publication is one target the volume is published at.
type publication struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readOnly,omitempty"`
	// Capability is capabilityKey of the publish; "" in records of older
	// versions, which stored the path alone.
	Capability string `json:"capability,omitempty"`
}

// UnmarshalJSON also reads the bare path older versions stored.
func (p *publication) UnmarshalJSON(b []byte) error {
	var path string
	if json.Unmarshal(b, &path) == nil {
		*p = publication{Path: path}
		return nil
	}
	type plain publication
	return json.Unmarshal(b, (*plain)(p))
}

// capabilityKey is what makes two capabilities the same for a node: access
// mode and type, and for a filesystem its type and mount flags.
func capabilityKey(c *csi.VolumeCapability) string {
	key := c.GetAccessMode().GetMode().String()
	if c.GetBlock() != nil {
		return key + "/block"
	}
	flags := slices.Clone(c.GetMount().GetMountFlags())
	slices.Sort(flags)
	return key + "/" + fsTypeOf(c) + "/" + strings.Join(flags, ",")
}

func (r *stageRecord) target(path string) (publication, bool) {
	for _, p := range r.Targets {
		if p.Path == path {
			return p, true
		}
	}
	return publication{}, false
}

// capability is the capability the volume was staged with, as far as the
// record tells: what mapping it again needs.
func (r *stageRecord) capability() *csi.VolumeCapability {
	mode := csi.VolumeCapability_AccessMode_Mode(csi.VolumeCapability_AccessMode_Mode_value[r.Mode])
	if mode == csi.VolumeCapability_AccessMode_UNKNOWN {
		mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	}
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode}}
	if r.Block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: r.FSType,
			MountFlags: r.MountFlags}}
	}
	return c
}

// stageConflict says why a stage request does not match what is staged:
// another access type, or a read-only mode where the mapping is writable
// (or the other way round). "" when it matches.
func stageConflict(r *stageRecord, c *csi.VolumeCapability) string {
	if block := c.GetBlock() != nil; block != r.Block {
		return fmt.Sprintf("staged as a %s volume, asked for a %s volume", accessType(r.Block), accessType(block))
	}
	if r.Mode != "" && readOnlyMode(r.capability()) != readOnlyMode(c) {
		return fmt.Sprintf("staged with access mode %s, asked for %s", r.Mode, c.GetAccessMode().GetMode())
	}
	return ""
}

// publishConflict says why a publish request does not match what is
// published at its target; "" when it matches.
func publishConflict(p publication, c *csi.VolumeCapability, readOnly bool) string {
	if p.Capability == "" {
		return "" // recorded by an older version: nothing to compare
	}
	if key := capabilityKey(c); key != p.Capability || readOnly != p.ReadOnly {
		return fmt.Sprintf("published as %s, read-only %v; asked for %s, read-only %v", p.Capability, p.ReadOnly, key, readOnly)
	}
	return ""
}

func accessType(block bool) string {
	if block {
		return "block"
	}
	return "filesystem"
}

func recordPath(stagingPath string) string {
	return filepath.Clean(stagingPath) + ".pelagic.json"
}

func readStageRecord(stagingPath string) (*stageRecord, error) {
	b, err := os.ReadFile(recordPath(stagingPath))
	if err != nil {
		return nil, err
	}
	var r stageRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("corrupt stage record %s: %w", recordPath(stagingPath), err)
	}
	return &r, nil
}

func writeStageRecord(stagingPath string, r *stageRecord) error {
	return writeFileAtomic(recordPath(stagingPath), r)
}

// stagedIndex maps the volumes staged on this node to their staging paths,
// in StateDir/staged: what NodeGetVolumeHealth without paths, and a
// restarted plugin, go by.
type stagedIndex struct{ dir string }

type stagedEntry struct {
	VolumeID    string `json:"volumeID"`
	StagingPath string `json:"stagingPath"`
}

func (x stagedIndex) path(volumeID string) string {
	sum := sha256.Sum256([]byte(volumeID))
	return filepath.Join(x.dir, "staged", hex.EncodeToString(sum[:12])+".json")
}

func (x stagedIndex) put(volumeID, staging string) error {
	if x.dir == "" {
		return nil
	}
	return writeFileAtomic(x.path(volumeID), stagedEntry{VolumeID: volumeID, StagingPath: staging})
}

func (x stagedIndex) remove(volumeID string) error {
	if x.dir == "" {
		return nil
	}
	if err := os.Remove(x.path(volumeID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// stagingPath returns where volumeID is staged, "" if the index does not know.
func (x stagedIndex) stagingPath(volumeID string) string {
	if x.dir == "" {
		return ""
	}
	var e stagedEntry
	if b, err := os.ReadFile(x.path(volumeID)); err == nil && json.Unmarshal(b, &e) == nil && e.VolumeID == volumeID {
		return e.StagingPath
	}
	return ""
}

func (x stagedIndex) all() []stagedEntry {
	if x.dir == "" {
		return nil
	}
	files, _ := filepath.Glob(filepath.Join(x.dir, "staged", "*.json"))
	var out []stagedEntry
	for _, f := range files {
		var e stagedEntry
		if b, err := os.ReadFile(f); err == nil && json.Unmarshal(b, &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// stageSecrets keeps, in memory only, the secrets of each volume's last
// NodeStage: NodePublish carries none, and needs them to map a volume
// again whose mapping died while this process ran.
type stageSecrets struct {
	mu sync.Mutex
	m  map[string]map[string]string
}

func (s *stageSecrets) remember(volumeID string, secrets map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]map[string]string{}
	}
	s.m[volumeID] = maps.Clone(secrets)
}

func (s *stageSecrets) get(volumeID string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[volumeID]
}

func (s *stageSecrets) forget(volumeID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, volumeID)
}

// Adopt looks at the volumes this node had staged before it started: their
// mappings outlive the plugin (see package daemonhost), and their records
// say all the node needs. It logs each, and drops index entries whose
// stage record is gone. A dead mapping is re-established at the volume's
// next NodeStage or NodePublish; NodeGetVolumeHealth reports it until then.
func (n *Node) Adopt(ctx context.Context) {
	log := klog.FromContext(ctx)
	for _, e := range n.staged.all() {
		rec, err := readStageRecord(e.StagingPath)
		if errors.Is(err, os.ErrNotExist) || (err == nil && rec.VolumeID != e.VolumeID) {
			_ = n.staged.remove(e.VolumeID)
			continue
		}
		if err != nil {
			log.Error(err, "staged volume", "volume", e.VolumeID)
			continue
		}
		if dead := n.mappingDead(ctx, rec); dead != nil {
			log.Info("staged volume's mapping is dead; the next NodeStage or NodePublish maps it again",
				"volume", e.VolumeID, "device", rec.Mapping.Device, "reason", dead.Error())
			continue
		}
		log.Info("adopted staged volume", "volume", e.VolumeID, "device", rec.Mapping.Device,
			"client", rec.Mapping.ClientAddr, "targets", len(rec.Targets))
	}
}
