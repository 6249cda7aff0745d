package cephfs

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// StorageClass parameters, spelled as ceph-csi spells them so that Rook's
// rook-cephfs class works unchanged.
const (
	ParamClusterID          = "clusterID"
	ParamFSName             = "fsName"
	ParamPool               = "pool"
	ParamMounter            = "mounter"
	ParamKernelMountOptions = "kernelMountOptions"
	ParamFuseMountOptions   = "fuseMountOptions"
	ParamNamePrefix         = "volumeNamePrefix"
	ParamSubvolumeGroup     = "subvolumeGroup"
	ParamBackingSnapshot    = "backingSnapshot"

	// Keys only the volume context carries (ceph-csi's names).
	CtxSubvolumeName = "subvolumeName"
	CtxSubvolumePath = "subvolumePath"

	MounterKernel     = "kernel"
	MounterFuse       = "fuse"
	DefaultNamePrefix = "csi-vol-"
)

// coPrefix marks parameters the CO and its sidecars own (secret names,
// PVC metadata).
const coPrefix = "csi.storage.k8s.io/"

// refused are parameters ceph-csi knows that Pelagic accepts only with a
// value that asks for nothing it lacks; inert ones it accepts and ignores.
var (
	refused = map[string]string{
		"encrypted":      "encryption is not supported",
		"radosNamespace": "the RADOS namespace of the journal comes from the cluster config (cephFS.radosNamespace)",
		"monitors":       "monitors come from the cluster config; use clusterID",
	}
	inert = map[string]bool{"encryptionKMSID": true}
)

// kernelOwned are the kernel mount options the node sets itself.
var kernelOwned = []string{"name", "secret", "secretfile", "mds_namespace", "fs", "mon_addr"}

// VolumeParams are the validated creation parameters.
type VolumeParams struct {
	ClusterID, FSName  string
	Pool               string // data pool layout; "" for the filesystem's default
	Mounter            string // "kernel", "fuse", or "" for the node's choice
	KernelMountOptions string
	FuseMountOptions   string
	NamePrefix         string
	Group              string // "" until the cluster config's default fills it in
	BackingSnapshot    bool
}

// ParseVolumeParams validates a StorageClass's parameters. Anything
// unknown, or that a node would refuse, is refused here.
func ParseVolumeParams(p map[string]string) (*VolumeParams, error) {
	v := &VolumeParams{ClusterID: p[ParamClusterID], FSName: p[ParamFSName], Pool: p[ParamPool],
		Mounter: p[ParamMounter], KernelMountOptions: p[ParamKernelMountOptions], FuseMountOptions: p[ParamFuseMountOptions],
		NamePrefix: p[ParamNamePrefix], Group: p[ParamSubvolumeGroup]}
	var errs []string
	for _, k := range slices.Sorted(maps.Keys(p)) {
		if why := checkParam(k, p[k]); why != "" {
			errs = append(errs, fmt.Sprintf("%s: %s", k, why))
		}
	}
	if v.ClusterID == "" || v.FSName == "" {
		errs = append(errs, fmt.Sprintf("%s and %s are required", ParamClusterID, ParamFSName))
	}
	if b := p[ParamBackingSnapshot]; b != "" {
		var err error
		if v.BackingSnapshot, err = strconv.ParseBool(b); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %q is not a boolean", ParamBackingSnapshot, b))
		}
	}
	if v.NamePrefix == "" {
		v.NamePrefix = DefaultNamePrefix
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid parameters: %s", strings.Join(errs, "; "))
	}
	return v, nil
}

// checkParam says what is wrong with one parameter; "" when nothing is.
func checkParam(k, v string) string {
	switch k {
	case ParamClusterID, ParamFSName, ParamBackingSnapshot:
		return ""
	case ParamPool, ParamNamePrefix, ParamSubvolumeGroup:
		return checkName(v)
	case ParamMounter:
		if v != "" && v != MounterKernel && v != MounterFuse {
			return fmt.Sprintf("%q: must be %s or %s", v, MounterKernel, MounterFuse)
		}
		return ""
	case ParamKernelMountOptions:
		return CheckMountOptions(v, kernelOwned)
	case ParamFuseMountOptions:
		return CheckMountOptions(v, nil)
	}
	if why, ok := refused[k]; ok && v != "" && v != "false" {
		return why
	}
	if _, ok := refused[k]; ok || inert[k] || strings.HasPrefix(k, coPrefix) {
		return ""
	}
	return "unknown parameter"
}

// checkName allows what a subvolume, group or pool name may hold without
// quoting anywhere: letters, digits, '-', '_', '.'.
func checkName(v string) string {
	for _, r := range v {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Sprintf("%q: only letters, digits, '-', '_' and '.' are allowed", v)
		}
	}
	return ""
}

// CheckMountOptions says what is wrong with a comma-separated option list
// ("" when nothing is): an empty or blank option, or one of owned, which
// the node sets itself (credentials never travel in options).
func CheckMountOptions(list string, owned []string) string {
	if list == "" {
		return ""
	}
	for _, o := range strings.Split(list, ",") {
		name, _, _ := strings.Cut(o, "=")
		switch {
		case o == "" || strings.ContainsAny(o, " \t\n"):
			return fmt.Sprintf("%q is not a list of options", list)
		case slices.Contains(owned, name):
			return fmt.Sprintf("%q is set by the node plugin itself", name)
		}
	}
	return ""
}

// journalParams are what define the volume, recorded in its journal entry:
// a retried CreateVolume must ask for the same.
func (p *VolumeParams) journalParams() map[string]string {
	m := map[string]string{ParamFSName: p.FSName, ParamSubvolumeGroup: p.Group, ParamNamePrefix: p.NamePrefix}
	for k, v := range map[string]string{ParamPool: p.Pool, ParamMounter: p.Mounter,
		ParamKernelMountOptions: p.KernelMountOptions, ParamFuseMountOptions: p.FuseMountOptions} {
		if v != "" {
			m[k] = v
		}
	}
	if p.BackingSnapshot {
		m[ParamBackingSnapshot] = "true"
	}
	return m
}

// volumeContext is what the node needs to mount the volume: ceph-csi's
// keys, and the group (which ceph-csi's node reads from the cluster
// config). path, when set, is what to mount (a snapshot's, for a volume
// backed by one); otherwise the node asks the mgr for the subvolume's.
func volumeContext(clusterID string, params map[string]string, subvolume, path string) map[string]string {
	ctx := map[string]string{ParamClusterID: clusterID, CtxSubvolumeName: subvolume}
	for _, k := range []string{ParamFSName, ParamSubvolumeGroup, ParamMounter, ParamKernelMountOptions,
		ParamFuseMountOptions, ParamBackingSnapshot} {
		if v := params[k]; v != "" {
			ctx[k] = v
		}
	}
	if path != "" {
		ctx[CtxSubvolumePath] = path
	}
	return ctx
}

// checkCapabilities accepts filesystem volumes in every access mode; with
// readOnly (a volume backed by a snapshot) only the read-only modes.
func checkCapabilities(caps []*csi.VolumeCapability, readOnly bool) error {
	if len(caps) == 0 {
		return fmt.Errorf("volume capabilities are missing")
	}
	for _, c := range caps {
		if err := checkCapability(c); err != nil {
			return err
		}
		if readOnly && !readOnlyMode(c) {
			return fmt.Errorf("%s: a volume backed by a snapshot is read-only; use a read-only access mode",
				c.GetAccessMode().GetMode())
		}
	}
	return nil
}

func checkCapability(c *csi.VolumeCapability) error {
	switch {
	case c == nil:
		return fmt.Errorf("volume capability is missing")
	case c.GetBlock() != nil:
		return fmt.Errorf("CephFS volumes are filesystems: block access is not supported")
	case c.GetMount() == nil:
		return fmt.Errorf("volume capability names no access type")
	case c.GetAccessMode() == nil || c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_UNKNOWN:
		return fmt.Errorf("volume capability names no access mode")
	}
	return nil
}

func readOnlyMode(c *csi.VolumeCapability) bool {
	switch c.GetAccessMode().GetMode() {
	case csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:
		return true
	}
	return false
}
