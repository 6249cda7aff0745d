package rbd

import (
	"cmp"
	"fmt"
	"sort"
	"strconv"
	"strings"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
)

// StorageClass parameters, spelled as ceph-csi spells them so an existing
// rook-ceph-block class works unchanged.
const (
	ParamClusterID        = "clusterID"
	ParamPool             = "pool"
	ParamDataPool         = "dataPool"
	ParamRadosNamespace   = "radosNamespace"
	ParamJournalPool      = "journalPool"
	ParamImageFormat      = "imageFormat"
	ParamImageFeatures    = "imageFeatures"
	ParamNamePrefix       = "volumeNamePrefix"
	ParamMounter          = "mounter"
	ParamTryOtherMounters = "tryOtherMounters"
	ParamMapOptions       = "mapOptions"
	ParamUnmapOptions     = "unmapOptions"
	ParamMkfsOptions      = "mkfsOptions"
	ParamStripeUnit       = "stripeUnit"
	ParamStripeCount      = "stripeCount"
	ParamObjectSize       = "objectSize"
	ParamFSType           = "csi.storage.k8s.io/fstype"
	ParamPVCName          = "csi.storage.k8s.io/pvc/name"
	ParamPVCNamespace     = "csi.storage.k8s.io/pvc/namespace"
	ParamPVName           = "csi.storage.k8s.io/pv/name"

	// In-tree kubernetes.io/rbd names of the cephx users whose keys the
	// secrets' "key" field holds: adminId provisions, userId maps.
	ParamAdminID = ceph.ParamAdminID
	ParamUserID  = ceph.ParamUserID

	// Keys only the volume context carries.
	CtxImageName = "imageName"

	DefaultNamePrefix = "csi-vol-"
	DefaultFSType     = "ext4"
)

// coPrefix marks parameters the CO and its sidecars own (secret names,
// PVC metadata); they need nothing from the driver.
const coPrefix = "csi.storage.k8s.io/"

// legacyParams maps in-tree kubernetes.io/rbd parameter names that have a
// clean meaning here.
var legacyParams = map[string]string{
	"fsType": ParamFSType,
}

// refusal says which values of a parameter Pelagic does not implement it
// accepts (those that ask for nothing it lacks) and why it refuses others.
type refusal struct {
	accepts func(value string) bool
	why     string
}

func isEmpty(v string) bool { return strings.TrimSpace(v) == "" }

func isFalse(v string) bool {
	b, err := strconv.ParseBool(v)
	return isEmpty(v) || (err == nil && !b)
}

var secretNameRefusal = refusal{isEmpty,
	"CSI names secrets with csi.storage.k8s.io/provisioner-secret-name, csi.storage.k8s.io/node-stage-secret-name and the other csi.storage.k8s.io/*-secret-name parameters"}

var refusedParams = map[string]refusal{
	"encrypted":                {isFalse, "encryption is not supported"},
	"thickProvision":           {isFalse, "thick provisioning is not supported"},
	"topologyConstrainedPools": {isEmpty, "topology-constrained pools are not supported"},
	"monitors":                 {isEmpty, "monitors come from the cluster config; use clusterID"},
	ParamRadosNamespace:        {isEmpty, "the RADOS namespace comes from the cluster config (rbd.radosNamespace)"},
	"cephLogStrategy": {func(v string) bool { return isEmpty(v) || v == "remove" },
		"Pelagic's mappers keep no per-volume client log, so there is none to compress or preserve"},
	"adminSecretName": secretNameRefusal, "adminSecretNamespace": secretNameRefusal,
	"userSecretName": secretNameRefusal, "userSecretNamespace": secretNameRefusal,
}

// inertParams are accepted and change nothing, exactly as in ceph-csi: the
// encryption details matter only with encrypted: "true", which is refused;
// cephLogDir places rbd-nbd's per-volume log, which Pelagic does not write;
// and journalPool places no journal (ceph-csi, as measured, kept every
// entry in the image's pool whatever it said, and Pelagic does too).
var inertParams = map[string]bool{
	"encryptionKMSID": true, "encryptionType": true, "encryptionSectorSize": true, "encryptionCipher": true,
	"encryptionKeySize": true, "integrityMode": true, "cephLogDir": true, ParamJournalPool: true,
}

// readParams are the parameters ParseVolumeParams reads.
var readParams = map[string]bool{
	ParamClusterID: true, ParamPool: true, ParamDataPool: true, ParamImageFormat: true,
	ParamImageFeatures: true, ParamNamePrefix: true, ParamMounter: true, ParamTryOtherMounters: true,
	ParamMapOptions: true, ParamUnmapOptions: true, ParamMkfsOptions: true, ParamStripeUnit: true,
	ParamStripeCount: true, ParamObjectSize: true, ParamAdminID: true, ParamUserID: true,
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
	// Mounter is the canonical mapper name ("" leaves it to the node).
	Mounter      string
	MapOptions   string // as the class spells them; the node picks its mapper's part
	UnmapOptions string
	MkfsOptions  string
	// Striping; 0 leaves librbd's default.
	ObjectSize, StripeUnit, StripeCount uint64
	// In-tree user names (see ParamAdminID).
	AdminID, UserID string
	PVCName         string
	PVCNamespace    string
	PVName          string
}

// ParseVolumeParams validates a CreateVolume parameter map. Every parameter
// either works or is refused here, naming it, so that no volume is created
// that a node would later refuse to stage.
func ParseVolumeParams(in map[string]string) (*VolumeParams, error) {
	params, err := normalizeParams(in)
	if err != nil {
		return nil, err
	}
	p := &VolumeParams{NamePrefix: DefaultNamePrefix}
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
	if err := p.parseMapping(params); err != nil {
		return nil, err
	}
	if err := p.parseStriping(params); err != nil {
		return nil, err
	}
	p.MkfsOptions = params[ParamMkfsOptions]
	p.AdminID, p.UserID = params[ParamAdminID], params[ParamUserID]
	p.PVCName, p.PVCNamespace, p.PVName = params[ParamPVCName], params[ParamPVCNamespace], params[ParamPVName]
	return p, nil
}

// normalizeParams renames in-tree names, refuses unknown parameters and
// values Pelagic does not implement, and drops the inert ones.
func normalizeParams(in map[string]string) (map[string]string, error) {
	params := make(map[string]string, len(in))
	for k, v := range in {
		if r, refused := refusedParams[k]; refused {
			if !r.accepts(v) {
				return nil, fmt.Errorf("parameter %q=%q: %s", k, v, r.why)
			}
			continue
		}
		if modern, ok := legacyParams[k]; ok {
			if _, both := in[modern]; both {
				continue // the CSI name wins over the in-tree one
			}
			k = modern
		}
		switch {
		case inertParams[k]:
			continue
		case !readParams[k] && !strings.HasPrefix(k, coPrefix):
			return nil, fmt.Errorf("parameter %q is unknown (Pelagic reads ceph-csi's RBD StorageClass parameters; see its README)", k)
		}
		params[k] = v
	}
	return params, nil
}

// parseMapping validates the mapper, its options and the image features
// against each other, as the node would map them.
func (p *VolumeParams) parseMapping(params map[string]string) error {
	named, err := mapper.CanonicalName(params[ParamMounter])
	if err != nil {
		return fmt.Errorf("parameter %q: %w", ParamMounter, err)
	}
	fallback := false
	if v := params[ParamTryOtherMounters]; v != "" {
		if fallback, err = strconv.ParseBool(v); err != nil {
			return fmt.Errorf("parameter %q=%q: must be true or false", ParamTryOtherMounters, v)
		}
	}
	p.Mounter = named
	// A class that names no mapper is mapped by each node's default, krbd
	// unless the node says otherwise: it must suit krbd, as in ceph-csi.
	if bad := mapper.UnmappableFeatures(cmp.Or(named, mapper.KRBD), strings.Split(p.FeatureNames, ",")); len(bad) > 0 {
		switch {
		case fallback:
			p.Mounter = mapper.NBD // ceph-csi's fallback, decided here rather than on every node
		case named == "":
			return fmt.Errorf("parameter %q: krbd cannot map %s (the Linux 6.1 rbd driver does not support it), and this class names no mounter, so nodes whose default is krbd would map it; set mounter to rbd-nbd or fuse (or tryOtherMounters to true)",
				ParamImageFeatures, strings.Join(bad, ", "))
		default:
			return fmt.Errorf("parameter %q: mounter %q (krbd) cannot map %s (the Linux 6.1 rbd driver does not support it); use mounter rbd-nbd or fuse",
				ParamImageFeatures, params[ParamMounter], strings.Join(bad, ", "))
		}
	}
	for _, o := range []struct {
		param string
		check func(mapperName, options string) error
	}{{ParamMapOptions, mapper.CheckMapOptions}, {ParamUnmapOptions, mapper.CheckUnmapOptions}} {
		opts, err := mapper.ParseClassOptions(params[o.param])
		if err != nil {
			return fmt.Errorf("parameter %q=%q: %w", o.param, params[o.param], err)
		}
		if opts.Plain() && named != "" && named != mapper.KRBD {
			return fmt.Errorf("parameter %q=%q: options without a mapper prefix are krbd's (as in ceph-csi), and this class maps with %s; write them as %s:OPTIONS",
				o.param, params[o.param], named, strings.TrimPrefix(named, "rbd-"))
		}
		for _, m := range opts.Mappers() {
			if err := o.check(m, opts.For(m)); err != nil {
				return fmt.Errorf("parameter %q=%q: %w", o.param, params[o.param], err)
			}
		}
	}
	p.MapOptions, p.UnmapOptions = params[ParamMapOptions], params[ParamUnmapOptions]
	return nil
}

// mapperOptions picks the named mapper's part of the map and unmap options
// a volume context carries (see mapper.ParseClassOptions).
func mapperOptions(vctx map[string]string, mapperName string) (mapOpts, unmapOpts string, err error) {
	m, err := mapper.ParseClassOptions(vctx[ParamMapOptions])
	if err != nil {
		return "", "", fmt.Errorf("volume context %q: %w", ParamMapOptions, err)
	}
	u, err := mapper.ParseClassOptions(vctx[ParamUnmapOptions])
	if err != nil {
		return "", "", fmt.Errorf("volume context %q: %w", ParamUnmapOptions, err)
	}
	return m.For(mapperName), u.For(mapperName), nil
}

// Object sizes librbd accepts: orders 12 to 25.
const (
	minObjectSize     = 4 << 10
	maxObjectSize     = 32 << 20
	defaultObjectSize = 4 << 20
)

// parseStriping reads objectSize, stripeUnit and stripeCount, in bytes and
// objects, and checks them as librbd would: a power-of-two object size,
// and a stripe unit dividing it, given together with the stripe count.
func (p *VolumeParams) parseStriping(params map[string]string) error {
	for _, f := range []struct {
		param string
		into  *uint64
	}{{ParamObjectSize, &p.ObjectSize}, {ParamStripeUnit, &p.StripeUnit}, {ParamStripeCount, &p.StripeCount}} {
		v := strings.TrimSpace(params[f.param])
		if v == "" {
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return fmt.Errorf("parameter %q=%q: must be a positive whole number", f.param, v)
		}
		*f.into = n
	}
	if o := p.ObjectSize; o != 0 && (o&(o-1) != 0 || o < minObjectSize || o > maxObjectSize) {
		return fmt.Errorf("parameter %q=%d: must be a power of two from %d to %d bytes", ParamObjectSize, o, minObjectSize, maxObjectSize)
	}
	if (p.StripeUnit == 0) != (p.StripeCount == 0) {
		return fmt.Errorf("parameters %q and %q go together: give both or neither", ParamStripeUnit, ParamStripeCount)
	}
	if object := cmp.Or(p.ObjectSize, defaultObjectSize); p.StripeUnit != 0 && object%p.StripeUnit != 0 {
		return fmt.Errorf("parameter %q=%d: must divide the object size (%d bytes)", ParamStripeUnit, p.StripeUnit, object)
	}
	return nil
}

// checkAdminID refuses a class whose in-tree adminId names another user
// than the provisioner secret authenticates as. DeleteVolume,
// ControllerExpandVolume and the snapshot calls carry the secret but never
// the class, so they can only use the secret's own user (for a bare key:
// the adminId the secret itself holds, else client.admin).
func (p *VolumeParams) checkAdminID(secrets map[string]string) error {
	if p.AdminID == "" {
		return nil
	}
	creds, err := ceph.CredentialsFrom(secrets, nil)
	if err != nil || creds.ID == p.AdminID {
		return nil // a broken secret is reported by the connection, in its own words
	}
	if ceph.IsLegacySecret(secrets) {
		return fmt.Errorf("parameter %q=%q: the secret holds only a key, and DeleteVolume, ControllerExpandVolume and the snapshot calls never see the class, so they would use it as %s; add %s: %s to the secret (as ceph-csi's migration secrets do), or give it %s and %s",
			ParamAdminID, p.AdminID, creds, ceph.SecretLegacyAdminID, p.AdminID, ceph.SecretUserID, ceph.SecretUserKey)
	}
	return fmt.Errorf("parameter %q=%q: the provisioner secret is %s's", ParamAdminID, p.AdminID, creds)
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
	out := map[string]string{
		ParamClusterID: p.ClusterID, ParamPool: p.Pool, ParamDataPool: p.DataPool,
		ParamImageFeatures: p.FeatureNames, ParamNamePrefix: p.NamePrefix,
	}
	// Only when set, so records written before striping was read still match.
	for k, v := range map[string]uint64{ParamObjectSize: p.ObjectSize, ParamStripeUnit: p.StripeUnit, ParamStripeCount: p.StripeCount} {
		if v != 0 {
			out[k] = strconv.FormatUint(v, 10)
		}
	}
	return out
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
		// The node's user for an in-tree node-stage secret, a bare key;
		// in-tree, userId defaults to adminId.
		ParamUserID: cmp.Or(p.UserID, p.AdminID),
	} {
		if v != "" {
			ctx[k] = v
		}
	}
	return ctx
}

// volumeFacts are what an existing volume is, for checking the parameters
// and volume context a ValidateVolumeCapabilities request names.
type volumeFacts struct {
	clusterID, pool, namespace, image string
	params                            map[string]string // journalParams as recorded at creation
	// cephCSI: the volume ceph-csi provisioned, whose context holds every
	// class parameter (params are then read from its image).
	cephCSI bool
}

// contextKeys are the volume context keys CreateVolume may return besides
// the defining ones volumeFacts checks.
var contextKeys = map[string]bool{ParamMounter: true, ParamMapOptions: true, ParamUnmapOptions: true,
	ParamMkfsOptions: true, ParamUserID: true, ParamAdminID: true}

// mismatch says why params (the class) or vctx (the volume context) do not
// describe the volume; nothing when they do. The defining parameters must
// be the ones the volume was made with, and its mapping settings ones a
// node would accept for the volume's features.
func (v volumeFacts) mismatch(params, vctx map[string]string) []string {
	var why []string
	if len(params) > 0 {
		p, err := ParseVolumeParams(params)
		if err != nil {
			return []string{err.Error()}
		}
		want := p.journalParams()
		keys := sortedKeys(want)
		for _, k := range sortedKeys(v.params) {
			if _, ok := want[k]; !ok {
				keys = append(keys, k)
			}
		}
		for _, k := range keys {
			if want[k] != v.params[k] {
				why = append(why, fmt.Sprintf("parameter %q is %q, but the volume was made with %q", k, want[k], v.params[k]))
			}
		}
	}
	if len(vctx) > 0 {
		why = append(why, v.contextMismatch(vctx)...)
	}
	return why
}

func (v volumeFacts) contextMismatch(vctx map[string]string) []string {
	var why []string
	defining := map[string]string{ParamClusterID: v.clusterID, ParamPool: v.pool, CtxImageName: v.image,
		ParamImageFeatures: v.params[ParamImageFeatures], ParamDataPool: v.params[ParamDataPool], ParamRadosNamespace: v.namespace}
	for _, k := range []string{ParamClusterID, ParamPool, CtxImageName} {
		if vctx[k] == "" {
			why = append(why, fmt.Sprintf("volume context lacks %q, which NodeStage needs", k))
		}
	}
	for _, k := range sortedKeys(vctx) {
		got := vctx[k]
		if k == ParamImageFeatures {
			if _, names, err := parseFeatures(got); err == nil {
				got = names
			}
		}
		want, isDefining := defining[k]
		switch {
		case isDefining && got != want:
			why = append(why, fmt.Sprintf("volume context %q is %q, but the volume's is %q", k, vctx[k], want))
		case isDefining, contextKeys[k]:
		case v.cephCSI && k == ParamNamePrefix && got != v.params[ParamNamePrefix]:
			why = append(why, fmt.Sprintf("volume context %q is %q, but the volume's image is named %s", k, got, v.image))
		case v.cephCSI && !cephCSIContextKey(k, got):
			why = append(why, fmt.Sprintf("volume context key %q=%q is not a parameter Pelagic accepts", k, got))
		case !v.cephCSI:
			why = append(why, fmt.Sprintf("volume context key %q is not one Pelagic returns", k))
		}
	}
	mapping := map[string]string{ParamClusterID: v.clusterID, ParamPool: v.pool, ParamImageFeatures: v.params[ParamImageFeatures]}
	for _, k := range []string{ParamMounter, ParamMapOptions, ParamUnmapOptions} {
		if vctx[k] != "" {
			mapping[k] = vctx[k]
		}
	}
	if _, err := ParseVolumeParams(mapping); err != nil {
		why = append(why, "volume context: "+err.Error())
	}
	return why
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
