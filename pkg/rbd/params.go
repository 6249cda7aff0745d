package rbd

import (
	"fmt"
	"sort"
	"strings"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

// StorageClass parameters, spelled as ceph-csi spells them so an existing
// rook-ceph-block class works unchanged.
const (
	ParamClusterID      = "clusterID"
	ParamPool           = "pool"
	ParamDataPool       = "dataPool"
	ParamRadosNamespace = "radosNamespace"
	ParamImageFormat    = "imageFormat"
	ParamImageFeatures  = "imageFeatures"
	ParamNamePrefix     = "volumeNamePrefix"
	ParamMounter        = "mounter"
	ParamMapOptions     = "mapOptions"
	ParamUnmapOptions   = "unmapOptions"
	ParamMkfsOptions    = "mkfsOptions"
	ParamFSType         = "csi.storage.k8s.io/fstype"
	ParamPVCName        = "csi.storage.k8s.io/pvc/name"
	ParamPVCNamespace   = "csi.storage.k8s.io/pvc/namespace"
	ParamPVName         = "csi.storage.k8s.io/pv/name"

	// Keys only the volume context carries.
	CtxImageName = "imageName"

	DefaultNamePrefix = "csi-vol-"
	DefaultFSType     = "ext4"
)

// legacyParams maps in-tree kubernetes.io/rbd parameter names that have a
// clean meaning here. "monitors" does not: the cluster config owns them.
// Other parameters (adminId, userId, secret names) are consumed by the
// provisioner or by credentialsFrom; unknown ones are ignored, as ceph-csi does.
var legacyParams = map[string]string{
	"fsType": ParamFSType,
}

// Parameters that change what the volume is and that we do not implement.
var refusedParams = map[string]string{
	"encrypted":                "encryption is not supported",
	"thickProvision":           "thick provisioning is not supported",
	"topologyConstrainedPools": "topology-constrained pools are not supported",
	"monitors":                 "monitors come from the cluster config; use clusterID",
}

var knownFeatures = map[string]uint64{
	"layering":       librbd.FeatureLayering,
	"exclusive-lock": librbd.FeatureExclusiveLock,
	"object-map":     librbd.FeatureObjectMap,
	"fast-diff":      librbd.FeatureFastDiff,
	"deep-flatten":   librbd.FeatureDeepFlatten,
	"journaling":     librbd.FeatureJournaling,
}

// featureNeeds lists each feature's prerequisite.
var featureNeeds = map[string]string{
	"object-map": "exclusive-lock",
	"fast-diff":  "object-map",
	"journaling": "exclusive-lock",
}

// VolumeParams are the validated creation parameters.
type VolumeParams struct {
	ClusterID      string
	Pool           string
	DataPool       string
	RadosNamespace string // from the cluster config
	Features       uint64
	FeatureNames   string
	NamePrefix     string
	FSType         string
	Mounter        string
	MapOptions     string
	UnmapOptions   string
	MkfsOptions    string
	PVCName        string
	PVCNamespace   string
	PVName         string
}

// ParseVolumeParams validates a CreateVolume parameter map.
func ParseVolumeParams(in map[string]string) (*VolumeParams, error) {
	p := &VolumeParams{NamePrefix: DefaultNamePrefix}
	params := make(map[string]string, len(in))
	for k, v := range in {
		if why, refused := refusedParams[k]; refused && v != "" && v != "false" {
			return nil, fmt.Errorf("parameter %q: %s", k, why)
		}
		if modern, ok := legacyParams[k]; ok {
			if _, both := in[modern]; both {
				continue // the CSI name wins over the in-tree one
			}
			k = modern
		}
		params[k] = v
	}
	p.ClusterID = params[ParamClusterID]
	if p.ClusterID == "" {
		return nil, fmt.Errorf("parameter %q is required", ParamClusterID)
	}
	p.Pool = params[ParamPool]
	if p.Pool == "" {
		return nil, fmt.Errorf("parameter %q is required", ParamPool)
	}
	p.DataPool = params[ParamDataPool]
	if f := params[ParamImageFormat]; f != "" && f != "2" {
		return nil, fmt.Errorf("parameter %q=%q: only format 2 is supported", ParamImageFormat, f)
	}
	var err error
	if p.Features, p.FeatureNames, err = parseFeatures(params[ParamImageFeatures]); err != nil {
		return nil, err
	}
	if v, ok := params[ParamNamePrefix]; ok {
		if v == "" || strings.ContainsAny(v, "/@ ") {
			return nil, fmt.Errorf("parameter %q=%q: must be non-empty without '/', '@' or spaces", ParamNamePrefix, v)
		}
		p.NamePrefix = v
	}
	p.FSType = params[ParamFSType]
	if err := validateFSType(p.FSType); err != nil {
		return nil, err
	}
	p.Mounter = params[ParamMounter]
	p.MapOptions = params[ParamMapOptions]
	p.UnmapOptions = params[ParamUnmapOptions]
	p.MkfsOptions = params[ParamMkfsOptions]
	p.PVCName, p.PVCNamespace, p.PVName = params[ParamPVCName], params[ParamPVCNamespace], params[ParamPVName]
	return p, nil
}

func validateFSType(fs string) error {
	switch fs {
	case "", "ext4", "xfs", "ext3":
		return nil
	}
	return fmt.Errorf("filesystem %q is not supported (ext4, ext3 or xfs)", fs)
}

// parseFeatures validates a comma-separated feature list; empty means layering.
func parseFeatures(list string) (uint64, string, error) {
	if strings.TrimSpace(list) == "" {
		list = "layering"
	}
	names := map[string]bool{}
	var bits uint64
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		bit, ok := knownFeatures[f]
		if !ok {
			return 0, "", fmt.Errorf("parameter %q: unknown or unsupported image feature %q (supported: %s)",
				ParamImageFeatures, f, strings.Join(sortedKeys(knownFeatures), ", "))
		}
		names[f] = true
		bits |= bit
	}
	for f := range names {
		if need, ok := featureNeeds[f]; ok && !names[need] {
			return 0, "", fmt.Errorf("parameter %q: feature %q needs %q", ParamImageFeatures, f, need)
		}
	}
	return bits, strings.Join(sortedKeys(names), ","), nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// journalParams are the parameters recorded in the journal and compared on
// a repeated CreateVolume: what defines the volume, not who asked for it.
func (p *VolumeParams) journalParams() map[string]string {
	return map[string]string{
		ParamClusterID: p.ClusterID, ParamPool: p.Pool, ParamDataPool: p.DataPool,
		ParamImageFeatures: p.FeatureNames, ParamNamePrefix: p.NamePrefix,
	}
}

// volumeContext is what NodeStage needs to map and format the image.
func (p *VolumeParams) volumeContext(image string) map[string]string {
	ctx := map[string]string{
		ParamClusterID: p.ClusterID, ParamPool: p.Pool, CtxImageName: image,
		ParamImageFeatures: p.FeatureNames,
	}
	for k, v := range map[string]string{
		ParamDataPool: p.DataPool, ParamRadosNamespace: p.RadosNamespace, ParamMounter: p.Mounter,
		ParamMapOptions: p.MapOptions, ParamUnmapOptions: p.UnmapOptions, ParamMkfsOptions: p.MkfsOptions,
	} {
		if v != "" {
			ctx[k] = v
		}
	}
	return ctx
}

// Access modes a filesystem on RBD can serve safely: one writer node, or
// many readers. Block volumes allow every mode (the application coordinates).
func validateCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return fmt.Errorf("volume capability is nil")
	}
	if c.GetAccessMode() == nil || c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_UNKNOWN {
		return fmt.Errorf("volume capability has no access mode")
	}
	switch {
	case c.GetBlock() != nil:
		return nil
	case c.GetMount() != nil:
		if err := validateFSType(c.GetMount().GetFsType()); err != nil {
			return err
		}
		switch c.GetAccessMode().GetMode() {
		case csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER, csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER:
			return fmt.Errorf("access mode %s needs a block volume: a filesystem on RBD cannot be written from several nodes",
				c.GetAccessMode().GetMode())
		}
		return nil
	default:
		return fmt.Errorf("volume capability has no access type (mount or block)")
	}
}

func validateCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return fmt.Errorf("volume capabilities are missing")
	}
	for _, c := range caps {
		if err := validateCapability(c); err != nil {
			return err
		}
	}
	return nil
}
