package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
	"github.com/pelagic-csi/pelagic/pkg/util"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

const (
	nodeTestNode  = "node-a"
	nodeTestImage = "csi-vol-node"
	nodeTestDev   = "/dev/fake0" // the first device a FakeMapper hands out
	otherNodeAddr = "192.0.2.9:0/77"
	strangerAddr  = "198.51.100.5:0/5"
)

const (
	singleWriter = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	multiReader  = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	singleReader = csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
)

// nodeEnv is a Node over the fake cluster, fake mappers and a fake mounter,
// with a temporary kubelet directory.
type nodeEnv struct {
	n         *Node
	pool      *FakePool
	krbd, nbd *mapper.FakeMapper
	mnt       *mount.FakeMounter
	root      string // the kubelet directory
	staging   string // created, as kubelet does
	volID     string
}

func nodeVolID(uuid string) string {
	return volumeid.ID{ClusterID: testClusterID, PoolID: testPoolID, UUID: uuid}.String()
}

func newNodeEnv(t *testing.T) *nodeEnv {
	t.Helper()
	cfg, err := ceph.ParseConfig([]byte(`[{"clusterID": "rook-ceph", "monitors": ["10.0.0.1:6789"]}]`))
	if err != nil {
		t.Fatal(err)
	}
	e := &nodeEnv{pool: NewFakePool(testPool, testPoolID), krbd: mapper.NewFakeMapper(mapper.KRBD),
		nbd: mapper.NewFakeMapper(mapper.NBD), mnt: mount.NewFakeMounter(), root: t.TempDir(),
		volID: nodeVolID("0a1b2c3d-0000-4000-8000-000000000001")}
	if err := e.pool.CreateImage(context.Background(), ImageSpec{Name: nodeTestImage, Size: gib}); err != nil {
		t.Fatal(err)
	}
	reg, err := mapper.RegistryOf("", e.krbd, e.nbd)
	if err != nil {
		t.Fatal(err)
	}
	e.staging = filepath.Join(e.root, "plugins/kubernetes.io/csi/rbd.csi.pelagic/abc/globalmount")
	if err := os.MkdirAll(e.staging, 0o750); err != nil {
		t.Fatal(err)
	}
	e.n = NewNode(NodeOptions{Config: cfg, Mappers: reg,
		Connector: &FakeConnector{Clusters: map[string]*FakeCluster{testClusterID: NewFakeCluster(testClusterID, e.pool)}},
		Options: nodefs.Options{NodeID: nodeTestNode, Mounter: e.mnt, KubeletDir: e.root, StateDir: t.TempDir(),
			Topology: true, Labels: map[string]string{"topology.pelagic.csi/zone": "a"}, MaxVolumes: 16}})
	return e
}

// target is a publish path under the kubelet directory, not yet created.
func (e *nodeEnv) target(pod string) string {
	return filepath.Join(e.root, "pods", pod, "volumes/kubernetes.io~csi/pvc-1/mount")
}

func mountCapFS(m csi.VolumeCapability_AccessMode_Mode, fstype string, flags ...string) *csi.VolumeCapability {
	return &csi.VolumeCapability{AccessMode: accessMode(m), AccessType: &csi.VolumeCapability_Mount{
		Mount: &csi.VolumeCapability_MountVolume{FsType: fstype, MountFlags: flags}}}
}

func (e *nodeEnv) stageReq(c *csi.VolumeCapability) *csi.NodeStageVolumeRequest {
	return &csi.NodeStageVolumeRequest{VolumeId: e.volID, StagingTargetPath: e.staging, VolumeCapability: c,
		Secrets: maps.Clone(testSecrets), VolumeContext: map[string]string{
			ParamClusterID: testClusterID, ParamPool: testPool, CtxImageName: nodeTestImage}}
}

func (e *nodeEnv) publishReq(target string, c *csi.VolumeCapability) *csi.NodePublishVolumeRequest {
	return &csi.NodePublishVolumeRequest{VolumeId: e.volID, StagingTargetPath: e.staging, TargetPath: target,
		VolumeCapability: c}
}

func (e *nodeEnv) stage(t *testing.T, req *csi.NodeStageVolumeRequest) {
	t.Helper()
	if _, err := e.n.NodeStageVolume(context.Background(), req); err != nil {
		t.Fatalf("NodeStageVolume: %v", err)
	}
}

func (e *nodeEnv) publish(t *testing.T, req *csi.NodePublishVolumeRequest) {
	t.Helper()
	if _, err := e.n.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatalf("NodePublishVolume(%s): %v", req.GetTargetPath(), err)
	}
}

// calls returns the fake mounter's calls of method.
func (e *nodeEnv) calls(method string) []string {
	var out []string
	for _, c := range e.mnt.CallLog() {
		if strings.HasPrefix(c, method+" ") {
			out = append(out, c)
		}
	}
	return out
}

// hasFilesystem puts a filesystem of fstype on the image that dev maps:
// the image then holds data, so a stage probes it before any format.
func (e *nodeEnv) hasFilesystem(dev, fstype string) {
	e.mnt.Formats[dev] = fstype
	e.pool.SetWritten(nodeTestImage)
}

func (e *nodeEnv) mapCalls() int   { return len(e.krbd.MapCalls()) + len(e.nbd.MapCalls()) }
func (e *nodeEnv) unmapCalls() int { return len(e.krbd.UnmapCalls()) + len(e.nbd.UnmapCalls()) }

// mutating reports the calls that change the node: none may follow a refused request.
func (e *nodeEnv) mutating() []string {
	var out []string
	for _, m := range []string{"Format", "Mount", "BindMount", "Unmount", "ResizeFS"} {
		out = append(out, e.calls(m)...)
	}
	if n := e.mapCalls(); n > 0 {
		out = append(out, fmt.Sprintf("%d Map calls", n))
	}
	if n := e.unmapCalls(); n > 0 {
		out = append(out, fmt.Sprintf("%d Unmap calls", n))
	}
	return out
}

func (e *nodeEnv) record(t *testing.T) *stageRecord {
	t.Helper()
	rec, err := readStageRecord(e.staging)
	if err != nil {
		t.Fatalf("stage record: %v", err)
	}
	return rec
}

func (e *nodeEnv) setMeta(t *testing.T, key string, v any) {
	t.Helper()
	b, _ := json.Marshal(v)
	if err := e.pool.SetMetadata(context.Background(), nodeTestImage, map[string]string{key: string(b)}); err != nil {
		t.Fatal(err)
	}
}

// otherNodeMaps records node-b as mapping the image and watching it.
func (e *nodeEnv) otherNodeMaps(t *testing.T) {
	e.setMeta(t, metaMapPrefix+"node-b", NodeMapping{Node: "node-b", ClientAddr: otherNodeAddr, ClientID: "client.77"})
	e.pool.SetWatchers(nodeTestImage, Watcher{Addr: otherNodeAddr, ID: 77})
}

// leftMapping maps the image with the default mapper, as a NodeStage that
// died before recording the mapping leaves it, dead or alive, and returns
// the watch of its client.
func (e *nodeEnv) leftMapping(t *testing.T, dead bool) Watcher {
	t.Helper()
	m, err := e.krbd.Map(context.Background(), mapper.Image{ClusterID: testClusterID, Pool: testPool, Name: nodeTestImage}, mapper.MapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if dead {
		e.krbd.Kill(m.Device)
	}
	return Watcher{Addr: m.ClientAddr, ID: 4000}
}

func wantNodeErr(t *testing.T, err error, code codes.Code, substrings ...string) {
	t.Helper()
	wantCode(t, err, code)
	for _, s := range substrings {
		if !strings.Contains(status.Convert(err).Message(), s) {
			t.Errorf("message %q does not contain %q", status.Convert(err).Message(), s)
		}
	}
}

func TestNodePathValidation(t *testing.T) {
	ctx := context.Background()
	type call func(e *nodeEnv, path string) error
	stage := func(e *nodeEnv, p string) error {
		req := e.stageReq(mountCap(rwo))
		req.StagingTargetPath = p
		_, err := e.n.NodeStageVolume(ctx, req)
		return err
	}
	unstage := func(e *nodeEnv, p string) error {
		_, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: e.volID, StagingTargetPath: p})
		return err
	}
	publishStaging := func(e *nodeEnv, p string) error {
		req := e.publishReq(e.target("pod1"), mountCap(rwo))
		req.StagingTargetPath = p
		_, err := e.n.NodePublishVolume(ctx, req)
		return err
	}
	publishTarget := func(e *nodeEnv, p string) error {
		_, err := e.n.NodePublishVolume(ctx, e.publishReq(p, mountCap(rwo)))
		return err
	}
	unpublish := func(e *nodeEnv, p string) error {
		_, err := e.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: e.volID, TargetPath: p})
		return err
	}
	expand := func(e *nodeEnv, p string) error {
		_, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: e.volID, VolumePath: p})
		return err
	}
	calls := map[string]call{"stage": stage, "unstage": unstage, "publish-staging": publishStaging,
		"publish-target": publishTarget, "unpublish": unpublish, "expand": expand}
	paths := map[string]func(e *nodeEnv, outside string) string{
		"empty":         func(*nodeEnv, string) string { return "" },
		"relative":      func(*nodeEnv, string) string { return "plugins/x/globalmount" },
		"dotdot-escape": func(e *nodeEnv, _ string) string { return e.root + "/pods/../../etc" },
		"dotdot-inside": func(e *nodeEnv, _ string) string { return e.root + "/pods/../plugins/x/globalmount" },
		"outside":       func(_ *nodeEnv, outside string) string { return filepath.Join(outside, "globalmount") },
		"kubelet-dir":   func(e *nodeEnv, _ string) string { return e.root },
		"sibling":       func(e *nodeEnv, _ string) string { return e.root + "-evil/globalmount" },
	}
	for cname, c := range calls {
		for pname, p := range paths {
			t.Run(cname+"/"+pname, func(t *testing.T) {
				e := newNodeEnv(t)
				path := p(e, t.TempDir())
				err := c(e, path)
				want := codes.InvalidArgument
				if cname == "publish-staging" && pname == "empty" {
					want = codes.FailedPrecondition // staging comes first when STAGE_UNSTAGE is advertised
				}
				wantCode(t, err, want)
				if got := e.mutating(); len(got) > 0 {
					t.Errorf("a refused path led to %q", got)
				}
			})
		}
	}
}

func TestNodeMissingArguments(t *testing.T) {
	ctx := context.Background()
	e := newNodeEnv(t)
	tests := []struct {
		name string
		call func() error
	}{
		{"unstage without ID", func() error {
			_, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{StagingTargetPath: e.staging})
			return err
		}},
		{"publish without ID", func() error {
			req := e.publishReq(e.target("p"), mountCap(rwo))
			req.VolumeId = ""
			_, err := e.n.NodePublishVolume(ctx, req)
			return err
		}},
		{"publish without capability", func() error {
			_, err := e.n.NodePublishVolume(ctx, e.publishReq(e.target("p"), nil))
			return err
		}},
		{"publish with an unsupported capability", func() error {
			_, err := e.n.NodePublishVolume(ctx, e.publishReq(e.target("p"), mountCap(rwx)))
			return err
		}},
		{"unpublish without ID", func() error {
			_, err := e.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{TargetPath: e.target("p")})
			return err
		}},
		{"stats without ID", func() error {
			_, err := e.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumePath: e.staging})
			return err
		}},
		{"stats without path", func() error {
			_, err := e.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: e.volID})
			return err
		}},
		{"expand without ID", func() error {
			_, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumePath: e.staging})
			return err
		}},
		{"expand without path", func() error {
			_, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: e.volID})
			return err
		}},
		{"health without ID", func() error {
			_, err := e.n.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{StagingTargetPath: e.staging})
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.call(), codes.InvalidArgument)
		})
	}
	if got := e.mutating(); len(got) > 0 {
		t.Errorf("refused requests led to %q", got)
	}
}

func TestNodeStageInvalidArgument(t *testing.T) {
	const badKey = "c2VjcmV0LWtleS1zaG91bGQtbm90LWxlYWs!!" // not base64
	tests := []struct {
		name   string
		mutate func(*csi.NodeStageVolumeRequest)
	}{
		{"missing volume ID", func(r *csi.NodeStageVolumeRequest) { r.VolumeId = "" }},
		{"missing capability", func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = nil }},
		{"capability without access mode", func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability.AccessMode = nil }},
		{"capability without access type", func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability.AccessType = nil }},
		{"filesystem written from several nodes", func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = mountCap(rwx) }},
		{"unsupported filesystem", func(r *csi.NodeStageVolumeRequest) { r.VolumeCapability = mountCapFS(rwo, "btrfs") }},
		{"missing clusterID", func(r *csi.NodeStageVolumeRequest) { delete(r.VolumeContext, ParamClusterID) }},
		{"missing pool", func(r *csi.NodeStageVolumeRequest) { delete(r.VolumeContext, ParamPool) }},
		{"missing imageName", func(r *csi.NodeStageVolumeRequest) { delete(r.VolumeContext, CtxImageName) }},
		{"nil volume context", func(r *csi.NodeStageVolumeRequest) { r.VolumeContext = nil }},
		{"unknown cluster", func(r *csi.NodeStageVolumeRequest) { r.VolumeContext[ParamClusterID] = "ghost" }},
		{"unknown mounter", func(r *csi.NodeStageVolumeRequest) { r.VolumeContext[ParamMounter] = "iscsi" }},
		{"missing secrets", func(r *csi.NodeStageVolumeRequest) { r.Secrets = nil }},
		{"user without key", func(r *csi.NodeStageVolumeRequest) { delete(r.Secrets, "userKey") }},
		{"malformed key", func(r *csi.NodeStageVolumeRequest) { r.Secrets["userKey"] = badKey }},
		{"malformed admin key", func(r *csi.NodeStageVolumeRequest) {
			r.Secrets = map[string]string{"adminID": "admin", "adminKey": badKey}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			req := e.stageReq(mountCap(rwo))
			tc.mutate(req)
			_, err := e.n.NodeStageVolume(context.Background(), req)
			wantCode(t, err, codes.InvalidArgument)
			for _, secret := range []string{badKey, testKey} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q carries a key", err)
				}
			}
			if got := e.mutating(); len(got) > 0 {
				t.Errorf("a refused stage led to %q", got)
			}
			if _, err := os.Stat(nodefs.RecordPath(e.staging)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused stage left a record: %v", err)
			}
		})
	}
}

func TestNodeStage(t *testing.T) {
	tests := []struct {
		name      string
		cap       *csi.VolumeCapability
		ctx       map[string]string // added to the volume context
		existing  string            // filesystem already on the device
		written   bool              // the image holds data (without a filesystem unless existing)
		mapper    string            // the mapper expected to map
		readOnly  bool              // expected MapOptions.ReadOnly
		exclusive bool              // expected MapOptions.Exclusive
		format    string            // expected Format call, "" for none
		fstype    string            // mounted filesystem; "" for no mount (block)
		options   []string
	}{
		{name: "blank ext4 on the default mapper", cap: mountCap(rwo), mapper: mapper.KRBD,
			format: "FormatBlank /dev/fake0 ext4 ", fstype: "ext4"},
		{name: "no fstype means ext4", cap: mountCapFS(rwo, ""), mapper: mapper.KRBD,
			format: "FormatBlank /dev/fake0 ext4 ", fstype: "ext4"},
		{name: "blank xfs mounts nouuid", cap: mountCapFS(rwo, "xfs"), mapper: mapper.KRBD,
			format: "FormatBlank /dev/fake0 xfs ", fstype: "xfs", options: []string{"nouuid"}},
		{name: "mkfs options", cap: mountCap(rwo), ctx: map[string]string{ParamMkfsOptions: "-m0  -E nodiscard"},
			mapper: mapper.KRBD, format: "FormatBlank /dev/fake0 ext4 -m0 -E nodiscard", fstype: "ext4"},
		{name: "mount flags", cap: mountCapFS(rwo, "ext4", "discard", "noatime"), mapper: mapper.KRBD,
			format: "FormatBlank /dev/fake0 ext4 ", fstype: "ext4", options: []string{"discard", "noatime"}},
		{name: "data but no filesystem is probed first", cap: mountCap(rwo), written: true, mapper: mapper.KRBD,
			format: "Format /dev/fake0 ext4 ", fstype: "ext4"},
		{name: "existing ext4 is kept when xfs is asked", cap: mountCapFS(rwo, "xfs"), existing: "ext4",
			mapper: mapper.KRBD, fstype: "ext4"},
		{name: "existing xfs is kept when ext4 is asked", cap: mountCap(rwo), existing: "xfs",
			mapper: mapper.KRBD, fstype: "xfs", options: []string{"nouuid"}},
		{name: "existing ext4", cap: mountCap(rwo), existing: "ext4", mapper: mapper.KRBD, fstype: "ext4"},
		{name: "mounter rbd-nbd", cap: mountCap(rwo), ctx: map[string]string{ParamMounter: "rbd-nbd"},
			mapper: mapper.NBD, format: "FormatBlank /dev/fake0 ext4 ", fstype: "ext4"},
		{name: "mounter nbd (ceph-csi spelling)", cap: mountCap(rwo), ctx: map[string]string{ParamMounter: "nbd"},
			mapper: mapper.NBD, format: "FormatBlank /dev/fake0 ext4 ", fstype: "ext4"},
		{name: "mounter krbd", cap: mountCap(rwo), ctx: map[string]string{ParamMounter: "krbd"},
			mapper: mapper.KRBD, format: "FormatBlank /dev/fake0 ext4 ", fstype: "ext4"},
		{name: "krbd exclusive with exclusive-lock", cap: mountCap(singleWriter),
			ctx:    map[string]string{ParamImageFeatures: "exclusive-lock,layering"},
			mapper: mapper.KRBD, exclusive: true, format: "FormatBlank /dev/fake0 ext4 ", fstype: "ext4"},
		{name: "nbd never exclusive", cap: mountCap(rwo),
			ctx:    map[string]string{ParamImageFeatures: "exclusive-lock,layering", ParamMounter: "rbd-nbd"},
			mapper: mapper.NBD, format: "FormatBlank /dev/fake0 ext4 ", fstype: "ext4"},
		{name: "multi-node reader mounts ro", cap: mountCap(multiReader), existing: "ext4", mapper: mapper.KRBD,
			readOnly: true, fstype: "ext4", options: []string{"ro"}},
		{name: "single-node reader xfs mounts ro,nouuid", cap: mountCapFS(singleReader, "xfs"), existing: "xfs",
			mapper: mapper.KRBD, readOnly: true, fstype: "xfs", options: []string{"nouuid", "ro"}},
		{name: "block", cap: blockCap(rwo), mapper: mapper.KRBD},
		{name: "block multi-node", cap: blockCap(rwx), mapper: mapper.KRBD},
		{name: "block on a device with a filesystem", cap: blockCap(rwo), existing: "ext4", mapper: mapper.KRBD},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			if tc.existing != "" {
				e.hasFilesystem(nodeTestDev, tc.existing)
			}
			if tc.written {
				e.pool.SetWritten(nodeTestImage)
			}
			req := e.stageReq(tc.cap)
			maps.Copy(req.VolumeContext, tc.ctx)
			e.stage(t, req)

			used, unused := e.krbd, e.nbd
			if tc.mapper == mapper.NBD {
				used, unused = e.nbd, e.krbd
			}
			calls := used.MapCalls()
			if len(calls) != 1 || len(unused.MapCalls()) != 0 {
				t.Fatalf("%d Map calls on %s, %d on the other mapper; want 1 and 0", len(calls), tc.mapper, len(unused.MapCalls()))
			}
			c := calls[0]
			if c.Image.Pool != testPool || c.Image.Name != nodeTestImage || c.Image.ClusterID != testClusterID ||
				!slices.Equal(c.Image.Monitors, []string{"10.0.0.1:6789"}) || c.Image.Creds.ID != testSecrets["userID"] {
				t.Errorf("mapped %+v", c.Image)
			}
			if c.Opts.ReadOnly != tc.readOnly || c.Opts.Exclusive != tc.exclusive {
				t.Errorf("map options %+v, want readOnly=%v exclusive=%v", c.Opts, tc.readOnly, tc.exclusive)
			}

			formats := append(e.calls("Format"), e.calls("FormatBlank")...)
			switch {
			case tc.format == "" && len(formats) > 0:
				t.Errorf("formatted: %q", formats)
			case tc.format != "" && !slices.Equal(formats, []string{tc.format}):
				t.Errorf("Format calls %q, want %q", formats, tc.format)
			}
			m, mounted := e.mnt.Mounts[e.staging]
			if tc.fstype == "" {
				if mounted || len(e.calls("Mount")) > 0 {
					t.Errorf("a block volume was mounted: %q", e.calls("Mount"))
				}
			} else if !mounted || m.Device != nodeTestDev || m.FSType != tc.fstype ||
				!slices.Equal(m.Options, tc.options) {
				t.Errorf("staging mount %+v (mounted %v), want %s on %s with %q", m, mounted, tc.fstype, nodeTestDev, tc.options)
			}

			rec := e.record(t)
			if rec.VolumeID != e.volID || rec.ClusterID != testClusterID || rec.Mapping.Mapper != tc.mapper ||
				rec.Mapping.Device != nodeTestDev || rec.Block != (tc.fstype == "") {
				t.Errorf("stage record %+v", rec)
			}

			// This node's mapping is in the image metadata, as the mapper's client.
			raw := e.pool.Image(nodeTestImage).meta[metaMapPrefix+nodeTestNode]
			var nm NodeMapping
			if err := json.Unmarshal([]byte(raw), &nm); err != nil {
				t.Fatalf("mapping record %q: %v", raw, err)
			}
			if nm.Node != nodeTestNode || nm.ClientAddr != rec.Mapping.ClientAddr || nm.ClientAddr == "" ||
				nm.ClientID != rec.Mapping.ClientID || nm.Mapper != tc.mapper {
				t.Errorf("mapping record %+v, want node %s client %s", nm, nodeTestNode, rec.Mapping.ClientAddr)
			}

			// Staging again is a no-op.
			nMounts, nFormats := len(e.calls("Mount")), len(e.calls("Format"))
			e.stage(t, req)
			if n := len(used.MapCalls()); n != 1 {
				t.Errorf("second stage: %d Map calls", n)
			}
			if len(e.calls("Mount")) != nMounts || len(e.calls("Format")) != nFormats {
				t.Errorf("second stage mounted or formatted again: %q", e.mnt.CallLog())
			}
		})
	}
}

func TestNodeStageRefused(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		setup   func(t *testing.T, e *nodeEnv)
		cap     *csi.VolumeCapability
		code    codes.Code
		want    []string // in the message
		wantMap bool     // the mapper was asked to map; if not, nothing was mapped (Admit refused)
	}{
		{name: "staging path holds another volume", cap: mountCap(rwo), code: codes.FailedPrecondition,
			setup: func(t *testing.T, e *nodeEnv) {
				other := e.stageReq(mountCap(rwo))
				other.VolumeId = nodeVolID("0a1b2c3d-0000-4000-8000-0000000000ff")
				e.stage(t, other)
			},
			want: []string{"0a1b2c3d-0000-4000-8000-0000000000ff", nodeTestDev}},
		{name: "mapper unavailable", cap: mountCap(rwo), code: codes.FailedPrecondition,
			setup: func(_ *testing.T, e *nodeEnv) {
				e.krbd.CheckErr = fmt.Errorf("%w: krbd: kernel has no rbd module", mapper.ErrUnavailable)
			},
			want: []string{"krbd", nodeTestNode, "kernel has no rbd module"}},
		{name: "single writer, another node watches", cap: mountCap(rwo), code: codes.FailedPrecondition,
			setup: func(t *testing.T, e *nodeEnv) { e.otherNodeMaps(t) },
			want:  []string{"node-b", otherNodeAddr, nodeTestImage}},
		{name: "single-node single writer, another node watches", cap: mountCap(singleWriter), code: codes.FailedPrecondition,
			setup: func(t *testing.T, e *nodeEnv) { e.otherNodeMaps(t) },
			want:  []string{"node-b", otherNodeAddr}},
		{name: "single-node reader, another node watches", cap: blockCap(singleReader), code: codes.FailedPrecondition,
			setup: func(t *testing.T, e *nodeEnv) { e.otherNodeMaps(t) },
			want:  []string{"node-b", otherNodeAddr}},
		{name: "single writer block, another node attached and watching", cap: blockCap(rwo), code: codes.FailedPrecondition,
			setup: func(t *testing.T, e *nodeEnv) {
				e.otherNodeMaps(t)
				e.setMeta(t, metaAttachPrefix+"node-b", Attachment{Node: "node-b", Mode: rwo.String()})
			},
			want: []string{"node-b", otherNodeAddr, "attached since"}},
		{name: "single writer, an unknown client watches", cap: mountCap(rwo), code: codes.FailedPrecondition,
			setup: func(_ *testing.T, e *nodeEnv) {
				e.pool.SetWatchers(nodeTestImage, Watcher{Addr: strangerAddr, ID: 5})
			},
			want: []string{"no node recorded", strangerAddr, "client.5"}},
		{name: "unknown watcher with a v2 prefix", cap: mountCap(rwo), code: codes.FailedPrecondition,
			setup: func(_ *testing.T, e *nodeEnv) {
				e.pool.SetWatchers(nodeTestImage, Watcher{Addr: "v2:" + strangerAddr, ID: 5})
			},
			want: []string{strangerAddr}},
		{name: "multi-node reader, another node watches", cap: mountCap(multiReader), code: codes.OK, wantMap: true,
			setup: func(t *testing.T, e *nodeEnv) { e.otherNodeMaps(t); e.mnt.Formats[nodeTestDev] = "ext4" }},
		{name: "multi-node reader, an unknown client watches", cap: mountCap(multiReader), code: codes.OK, wantMap: true,
			setup: func(_ *testing.T, e *nodeEnv) {
				e.pool.SetWatchers(nodeTestImage, Watcher{Addr: strangerAddr, ID: 5})
				e.hasFilesystem(nodeTestDev, "ext4")
			}},
		{name: "multi-node writer block, another node watches", cap: blockCap(rwx), code: codes.OK, wantMap: true,
			setup: func(t *testing.T, e *nodeEnv) { e.otherNodeMaps(t) }},
		{name: "own node's earlier mapping", cap: mountCap(rwo), code: codes.OK, wantMap: true,
			setup: func(t *testing.T, e *nodeEnv) {
				e.setMeta(t, metaMapPrefix+nodeTestNode, NodeMapping{Node: nodeTestNode, ClientAddr: otherNodeAddr})
				e.pool.SetWatchers(nodeTestImage, Watcher{Addr: otherNodeAddr, ID: 77})
			}},
		{name: "own node's mapping a killed plugin left unrecorded", cap: mountCap(rwo), code: codes.OK, wantMap: true,
			setup: func(t *testing.T, e *nodeEnv) { e.pool.SetWatchers(nodeTestImage, e.leftMapping(t, false)) }},
		{name: "own node's dead unrecorded mapping still watching", cap: mountCap(rwo), code: codes.FailedPrecondition,
			setup: func(t *testing.T, e *nodeEnv) { e.pool.SetWatchers(nodeTestImage, e.leftMapping(t, true)) },
			want:  []string{"no node recorded"}},
		{name: "a controller's short open is not a holder", cap: mountCap(rwo), code: codes.OK, wantMap: true,
			setup: func(_ *testing.T, e *nodeEnv) {
				_ = e.pool.UpdateObjectMap(ctx, controllersObject, map[string]string{"v1:10.0.0.1:0/1": "{}"}, nil)
				e.pool.SetWatchers(nodeTestImage, Watcher{Addr: "10.0.0.1:0/1", ID: 1})
			}},
		{name: "an unwatched mapping of a node still attached", cap: mountCap(rwo), code: codes.FailedPrecondition,
			setup: func(t *testing.T, e *nodeEnv) {
				e.setMeta(t, metaMapPrefix+"node-b", NodeMapping{Node: "node-b", ClientAddr: otherNodeAddr})
				e.setMeta(t, metaAttachPrefix+"node-b", Attachment{Node: "node-b", Mode: rwo.String()})
			},
			want: []string{"node node-b", otherNodeAddr, "its watch is gone"}},
		{name: "an unwatched, unfenced mapping of a node no longer attached", cap: mountCap(rwo), code: codes.FailedPrecondition,
			setup: func(t *testing.T, e *nodeEnv) {
				e.setMeta(t, metaMapPrefix+"node-b", NodeMapping{Node: "node-b", ClientAddr: otherNodeAddr})
			},
			want: []string{"node node-b", otherNodeAddr}},
		{name: "a fenced mapping of a node no longer attached", cap: mountCap(rwo), code: codes.OK, wantMap: true,
			setup: func(t *testing.T, e *nodeEnv) {
				e.setMeta(t, metaMapPrefix+"node-b", NodeMapping{Node: "node-b", ClientAddr: otherNodeAddr})
				e.setMeta(t, metaFencePrefix+otherNodeAddr, Fence{Node: "node-b", ClientAddr: otherNodeAddr,
					Expires: time.Now().Add(time.Hour), State: FenceDone})
			}},
		{name: "map unavailable", cap: mountCap(rwo), code: codes.FailedPrecondition, wantMap: true,
			setup: func(_ *testing.T, e *nodeEnv) {
				e.krbd.MapErr = fmt.Errorf("%w: rbd: sysfs write failed", mapper.ErrUnavailable)
			},
			want: []string{"replicapool/" + nodeTestImage, "sysfs write failed"}},
		{name: "map option unsupported", cap: mountCap(rwo), code: codes.InvalidArgument, wantMap: true,
			setup: func(_ *testing.T, e *nodeEnv) {
				e.krbd.MapErr = fmt.Errorf("%w: bogus", mapper.ErrUnsupportedOption)
			}},
		{name: "map fails", cap: mountCap(rwo), code: codes.Internal, wantMap: true,
			setup: func(_ *testing.T, e *nodeEnv) { e.krbd.MapErr = errors.New("rbd: map failed: (5) EIO") }},
		{name: "read-only stage of a blank device", cap: mountCap(multiReader), code: codes.FailedPrecondition, wantMap: true,
			want: []string{"no filesystem"}},
		{name: "image gone", cap: mountCap(rwo), code: codes.NotFound,
			setup: func(_ *testing.T, e *nodeEnv) { _ = e.pool.Trash(ctx, nodeTestImage) }},
		{name: "connect fails", cap: mountCap(rwo), code: codes.Internal,
			setup: func(_ *testing.T, e *nodeEnv) {
				e.n.opts.Connector = &FakeConnector{Err: errors.New("connection refused")}
			}},
		{name: "pool gone", cap: mountCap(rwo), code: codes.NotFound,
			setup: func(_ *testing.T, e *nodeEnv) {
				e.n.opts.Connector = &FakeConnector{Clusters: map[string]*FakeCluster{testClusterID: NewFakeCluster(testClusterID)}}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			if tc.setup != nil {
				tc.setup(t, e)
			}
			asked0, maps0, calls0 := len(e.krbd.MapCalls()), e.krbd.NewMappings(), len(e.mnt.CallLog())
			_, err := e.n.NodeStageVolume(ctx, e.stageReq(tc.cap))
			wantNodeErr(t, err, tc.code, tc.want...)
			if asked := len(e.krbd.MapCalls()) > asked0; tc.wantMap && !asked {
				t.Error("the mapper was not asked to map")
			}
			if mapped := e.krbd.NewMappings() > maps0; !tc.wantMap && mapped {
				t.Error("mapped, though the stage was refused")
			}
			if err := util.WaitFor(ctx, 10*time.Second, "the holder check's view to close", func() (bool, error) {
				return e.pool.OpenViews() == 0, nil
			}); err != nil {
				t.Error(err)
			}
			if tc.code == codes.OK {
				return
			}
			for _, c := range e.mnt.CallLog()[calls0:] {
				if strings.HasPrefix(c, "Format ") || strings.HasPrefix(c, "Mount ") {
					t.Errorf("a refused stage called %s", c)
				}
			}
		})
	}
}

func TestNodeStageAbortedWhileLocked(t *testing.T) {
	e := newNodeEnv(t)
	if !e.n.vols.Locks.TryLock(e.volID) {
		t.Fatal("lock taken")
	}
	_, err := e.n.NodeStageVolume(context.Background(), e.stageReq(mountCap(rwo)))
	wantCode(t, err, codes.Aborted)
	_, err = e.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: e.volID, StagingTargetPath: e.staging})
	wantCode(t, err, codes.Aborted)
	e.n.vols.Locks.Unlock(e.volID)
	e.stage(t, e.stageReq(mountCap(rwo)))
}

func TestNodeUnstage(t *testing.T) {
	ctx := context.Background()
	unstage := func(e *nodeEnv, volID string) error {
		_, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: volID, StagingTargetPath: e.staging})
		return err
	}
	for _, tc := range []struct {
		name   string
		cap    *csi.VolumeCapability
		ctx    map[string]string
		mapper string
	}{
		{"filesystem", mountCap(rwo), nil, mapper.KRBD},
		{"block", blockCap(rwo), nil, mapper.KRBD},
		{"rbd-nbd, from the record alone", mountCap(rwo), map[string]string{ParamMounter: "rbd-nbd"}, mapper.NBD},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			req := e.stageReq(tc.cap)
			maps.Copy(req.VolumeContext, tc.ctx)
			e.stage(t, req)
			if err := unstage(e, e.volID); err != nil {
				t.Fatalf("NodeUnstageVolume: %v", err)
			}
			if !slices.Contains(e.calls("Unmount"), "Unmount "+e.staging) {
				t.Errorf("staging path not unmounted: %q", e.calls("Unmount"))
			}
			if _, ok := e.mnt.Mounts[e.staging]; ok {
				t.Error("staging path still mounted")
			}
			fm := map[string]*mapper.FakeMapper{mapper.KRBD: e.krbd, mapper.NBD: e.nbd}[tc.mapper]
			if u := fm.UnmapCalls(); len(u) != 1 || u[0].Mapping.Device != nodeTestDev || u[0].Opts.Force {
				t.Errorf("Unmap calls %+v, want one of %s", u, nodeTestDev)
			}
			if l, _ := fm.List(ctx); len(l) != 0 {
				t.Errorf("still mapped: %+v", l)
			}
			if _, err := os.Stat(nodefs.RecordPath(e.staging)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("stage record left: %v", err)
			}
			if raw, ok := e.pool.Image(nodeTestImage).meta[metaMapPrefix+nodeTestNode]; ok {
				t.Errorf("mapping record left: %s", raw)
			}
			// Again: nothing is staged, which is success.
			if err := unstage(e, e.volID); err != nil {
				t.Fatalf("second NodeUnstageVolume: %v", err)
			}
			if n := e.unmapCalls(); n != 1 {
				t.Errorf("second unstage: %d Unmap calls in all", n)
			}
		})
	}

	t.Run("never staged", func(t *testing.T) {
		e := newNodeEnv(t)
		if err := unstage(e, e.volID); err != nil {
			t.Fatalf("NodeUnstageVolume: %v", err)
		}
		if n := e.unmapCalls(); n != 0 {
			t.Errorf("%d Unmap calls", n)
		}
	})

	t.Run("staging path gone", func(t *testing.T) {
		e := newNodeEnv(t)
		e.staging = filepath.Join(e.root, "plugins/never/created/globalmount")
		if err := unstage(e, e.volID); err != nil {
			t.Fatalf("NodeUnstageVolume: %v", err)
		}
	})

	t.Run("device busy names the holders", func(t *testing.T) {
		e := newNodeEnv(t)
		e.stage(t, e.stageReq(mountCap(rwo)))
		target := e.target("pod1")
		e.publish(t, e.publishReq(target, mountCap(rwo)))
		e.krbd.BusyDevices[nodeTestDev] = true
		err := unstage(e, e.volID)
		wantNodeErr(t, err, codes.FailedPrecondition, nodeTestDev, target, e.volID)
		if _, err := os.Stat(nodefs.RecordPath(e.staging)); err != nil {
			t.Errorf("stage record lost on a busy device: %v", err)
		}
		if _, ok := e.pool.Image(nodeTestImage).meta[metaMapPrefix+nodeTestNode]; !ok {
			t.Error("mapping record removed though the image is still mapped")
		}
		// Once the pod is gone the unstage goes through.
		if _, err := e.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: e.volID, TargetPath: target}); err != nil {
			t.Fatal(err)
		}
		delete(e.krbd.BusyDevices, nodeTestDev)
		if err := unstage(e, e.volID); err != nil {
			t.Fatalf("NodeUnstageVolume after unpublish: %v", err)
		}
	})

	t.Run("unmap fails", func(t *testing.T) {
		e := newNodeEnv(t)
		e.stage(t, e.stageReq(mountCap(rwo)))
		e.krbd.UnmapErr = errors.New("rbd: unmap failed: (5) EIO")
		wantNodeErr(t, unstage(e, e.volID), codes.Internal, "EIO")
		if _, err := os.Stat(nodefs.RecordPath(e.staging)); err != nil {
			t.Errorf("stage record lost on a failed unmap: %v", err)
		}
	})

	t.Run("unmount fails", func(t *testing.T) {
		e := newNodeEnv(t)
		e.stage(t, e.stageReq(mountCap(rwo)))
		e.mnt.Errors["Unmount"] = errors.New("umount: target is busy")
		wantNodeErr(t, unstage(e, e.volID), codes.Internal, "target is busy")
		if n := e.unmapCalls(); n != 0 {
			t.Errorf("unmapped a mounted device: %d Unmap calls", n)
		}
	})

	t.Run("staging path holds another volume", func(t *testing.T) {
		e := newNodeEnv(t)
		e.stage(t, e.stageReq(mountCap(rwo)))
		err := unstage(e, nodeVolID("0a1b2c3d-0000-4000-8000-0000000000ff"))
		wantNodeErr(t, err, codes.FailedPrecondition, e.volID)
		if n := e.unmapCalls(); n != 0 {
			t.Errorf("unmapped another volume: %d Unmap calls", n)
		}
		if _, err := os.Stat(nodefs.RecordPath(e.staging)); err != nil {
			t.Errorf("another volume's record removed: %v", err)
		}
	})
}

func TestNodePublish(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		stage    *csi.VolumeCapability // nil: nothing staged
		cap      *csi.VolumeCapability
		readonly bool
		code     codes.Code
		source   string // bind source; "staging" for the staging path
		ro       bool
	}{
		{name: "not staged", cap: mountCap(rwo), code: codes.FailedPrecondition},
		{name: "not staged, block", cap: blockCap(rwo), code: codes.FailedPrecondition},
		{name: "filesystem", stage: mountCap(rwo), cap: mountCap(rwo), source: "staging"},
		{name: "filesystem read-only", stage: mountCap(rwo), cap: mountCap(rwo), readonly: true, source: "staging", ro: true},
		{name: "filesystem multi-node reader", stage: mountCap(multiReader), cap: mountCap(multiReader), source: "staging", ro: true},
		{name: "filesystem single-node reader", stage: mountCap(singleReader), cap: mountCap(singleReader), source: "staging", ro: true},
		{name: "block", stage: blockCap(rwo), cap: blockCap(rwo), source: nodeTestDev},
		{name: "block read-only", stage: blockCap(rwx), cap: blockCap(rwx), readonly: true, source: nodeTestDev, ro: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			e.hasFilesystem(nodeTestDev, "ext4") // readers need a filesystem
			if tc.stage != nil {
				e.stage(t, e.stageReq(tc.stage))
			}
			target := e.target("pod1")
			req := e.publishReq(target, tc.cap)
			req.Readonly = tc.readonly
			_, err := e.n.NodePublishVolume(ctx, req)
			wantCode(t, err, tc.code)
			if tc.code != codes.OK {
				if got := e.calls("BindMount"); len(got) > 0 {
					t.Errorf("bind-mounted: %q", got)
				}
				return
			}
			source := tc.source
			if source == "staging" {
				source = e.staging
			}
			m, ok := e.mnt.Mounts[target]
			if !ok || m.BindOf != source || m.ReadOnly != tc.ro {
				t.Errorf("target mount %+v (mounted %v), want bind of %s ro=%v", m, ok, source, tc.ro)
			}
			fi, err := os.Stat(target)
			if err != nil {
				t.Fatalf("target: %v", err)
			}
			if wantDir := tc.cap.GetBlock() == nil; fi.IsDir() != wantDir {
				t.Errorf("target is a directory: %v, want %v", fi.IsDir(), wantDir)
			}
			if rec := e.record(t); !slices.Equal(targetPaths(rec), []string{target}) {
				t.Errorf("recorded targets %q", targetPaths(rec))
			}
			// Again at the same target: nothing more to do.
			e.publish(t, req)
			if got := e.calls("BindMount"); len(got) != 1 {
				t.Errorf("BindMount calls %q", got)
			}
		})
	}

	t.Run("staging path holds another volume", func(t *testing.T) {
		e := newNodeEnv(t)
		e.stage(t, e.stageReq(mountCap(rwo)))
		req := e.publishReq(e.target("pod1"), mountCap(rwo))
		req.VolumeId = nodeVolID("0a1b2c3d-0000-4000-8000-0000000000ff")
		_, err := e.n.NodePublishVolume(ctx, req)
		wantNodeErr(t, err, codes.FailedPrecondition, e.volID)
	})

	t.Run("bind mount fails", func(t *testing.T) {
		e := newNodeEnv(t)
		e.stage(t, e.stageReq(mountCap(rwo)))
		e.mnt.Errors["BindMount"] = errors.New("mount: permission denied")
		_, err := e.n.NodePublishVolume(ctx, e.publishReq(e.target("pod1"), mountCap(rwo)))
		wantNodeErr(t, err, codes.Internal, "permission denied")
		if rec := e.record(t); len(rec.Targets) != 0 {
			t.Errorf("a failed publish was recorded: %q", targetPaths(rec))
		}
	})

	t.Run("single writer", func(t *testing.T) {
		e := newNodeEnv(t)
		e.stage(t, e.stageReq(mountCap(singleWriter)))
		t1, t2 := e.target("pod1"), e.target("pod2")
		e.publish(t, e.publishReq(t1, mountCap(singleWriter)))
		_, err := e.n.NodePublishVolume(ctx, e.publishReq(t2, mountCap(singleWriter)))
		wantNodeErr(t, err, codes.FailedPrecondition, t1)
		if _, ok := e.mnt.Mounts[t2]; ok {
			t.Error("second target mounted")
		}
		e.publish(t, e.publishReq(t1, mountCap(singleWriter))) // republish: fine
		// Once the first pod is gone the second may have it.
		if _, err := e.n.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: e.volID, TargetPath: t1}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(t1); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("unpublished target left: %v", err)
		}
		e.publish(t, e.publishReq(t2, mountCap(singleWriter)))
		if rec := e.record(t); !slices.Equal(targetPaths(rec), []string{t2}) {
			t.Errorf("recorded targets %q, want only %s", targetPaths(rec), t2)
		}
	})

	t.Run("single-node writer may publish twice", func(t *testing.T) {
		e := newNodeEnv(t)
		e.stage(t, e.stageReq(mountCap(rwo)))
		t1, t2 := e.target("pod1"), e.target("pod2")
		e.publish(t, e.publishReq(t1, mountCap(rwo)))
		e.publish(t, e.publishReq(t2, mountCap(rwo)))
		if rec := e.record(t); !slices.Equal(targetPaths(rec), []string{t1, t2}) {
			t.Errorf("recorded targets %q", targetPaths(rec))
		}
	})
}

func TestNodeGetVolumeStats(t *testing.T) {
	ctx := context.Background()
	fsStats := mount.VolumeStats{TotalBytes: 10 * gib, UsedBytes: 3 * gib, AvailableBytes: 7 * gib,
		TotalInodes: 1000, UsedInodes: 10, FreeInodes: 990}
	tests := []struct {
		name  string
		setup func(t *testing.T, e *nodeEnv, path string) string // returns the path to ask about
		code  codes.Code
		want  []*csi.VolumeUsage
	}{
		{name: "path missing", code: codes.NotFound,
			setup: func(_ *testing.T, _ *nodeEnv, p string) string { return filepath.Join(p, "gone") }},
		{name: "not a mount", code: codes.NotFound,
			setup: func(_ *testing.T, _ *nodeEnv, p string) string { return p }},
		{name: "mount check fails", code: codes.NotFound,
			setup: func(_ *testing.T, e *nodeEnv, p string) string {
				e.mnt.Mounts[p] = mount.FakeMount{Device: nodeTestDev}
				e.mnt.Errors["IsMountPoint"] = errors.New("cannot read mountinfo")
				return p
			}},
		{name: "filesystem", setup: func(_ *testing.T, e *nodeEnv, p string) string {
			e.mnt.Mounts[p] = mount.FakeMount{Device: nodeTestDev, BindOf: e.staging}
			e.mnt.StatsByPath[p] = fsStats
			return p
		}, want: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: 10 * gib, Used: 3 * gib, Available: 7 * gib},
			{Unit: csi.VolumeUsage_INODES, Total: 1000, Used: 10, Available: 990},
		}},
		{name: "statfs fails", code: codes.Internal, setup: func(_ *testing.T, e *nodeEnv, p string) string {
			e.mnt.Mounts[p] = mount.FakeMount{Device: nodeTestDev}
			return p // no StatsByPath entry
		}},
		{name: "block", setup: func(t *testing.T, e *nodeEnv, p string) string {
			f := filepath.Join(p, "dev")
			if err := nodefs.MakeFile(f); err != nil {
				t.Fatal(err)
			}
			e.mnt.Mounts[f] = mount.FakeMount{Device: nodeTestDev, BindOf: nodeTestDev}
			e.mnt.Sizes[f] = 5 * gib
			return f
		}, want: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: 5 * gib}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			dir := e.target("pod1")
			if err := os.MkdirAll(dir, 0o750); err != nil {
				t.Fatal(err)
			}
			path := tc.setup(t, e, dir)
			resp, err := e.n.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: e.volID, VolumePath: path})
			wantCode(t, err, tc.code)
			if err != nil {
				return
			}
			got := resp.GetUsage()
			if len(got) != len(tc.want) {
				t.Fatalf("usage %v, want %v", got, tc.want)
			}
			for i := range got {
				g, w := got[i], tc.want[i]
				if g.Unit != w.Unit || g.Total != w.Total || g.Used != w.Used || g.Available != w.Available {
					t.Errorf("usage[%d] = %v, want %v", i, g, w)
				}
			}
		})
	}
}

func TestNodeExpandVolume(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		volID    string // default: the staged volume
		block    bool
		noMount  bool
		noPath   bool
		resizeFS error
		code     codes.Code
		want     []string
		resized  bool
	}{
		{name: "filesystem", resized: true},
		{name: "malformed volume ID", volID: "pvc-0a1b2c3d", code: codes.NotFound, want: []string{"pvc-0a1b2c3d"}},
		{name: "volume ID of another version", volID: "0002-0009-rook-ceph-x", code: codes.NotFound},
		{name: "path missing", noPath: true, code: codes.NotFound},
		{name: "nothing mounted", noMount: true, code: codes.NotFound},
		{name: "block", block: true},
		{name: "online resize not permitted", code: codes.FailedPrecondition, resized: true,
			resizeFS: fmt.Errorf("resize2fs: %w", mount.ErrOnlineResizeNotPermitted),
			want:     []string{"CAP_SYS_RESOURCE", nodeTestDev}},
		{name: "resize fails", code: codes.Internal, resized: true, resizeFS: errors.New("xfs_growfs: EIO"),
			want: []string{"EIO"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			e.hasFilesystem(nodeTestDev, "ext4")
			capab := mountCap(rwo)
			if tc.block {
				capab = blockCap(rwo)
			}
			e.stage(t, e.stageReq(capab))
			target := e.target("pod1")
			if !tc.noPath {
				e.publish(t, e.publishReq(target, capab))
			}
			if tc.noMount {
				delete(e.mnt.Mounts, target)
			}
			e.mnt.Sizes[nodeTestDev] = 2 * gib
			if tc.resizeFS != nil {
				e.mnt.Errors["ResizeFS"] = tc.resizeFS
			}
			volID := e.volID
			if tc.volID != "" {
				volID = tc.volID
			}
			resp, err := e.n.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: volID, VolumePath: target,
				StagingTargetPath: e.staging, VolumeCapability: capab, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib}})
			wantNodeErr(t, err, tc.code, tc.want...)
			resizes := e.calls("ResizeFS")
			if tc.resized != (len(resizes) > 0) {
				t.Errorf("ResizeFS calls %q, want some: %v", resizes, tc.resized)
			}
			if tc.resized && !slices.Equal(resizes, []string{"ResizeFS " + nodeTestDev + " " + target}) {
				t.Errorf("ResizeFS calls %q", resizes)
			}
			if err == nil && !tc.block && resp.GetCapacityBytes() != 2*gib {
				t.Errorf("capacity %d, want %d", resp.GetCapacityBytes(), 2*gib)
			}
		})
	}
}

func TestNodeGetVolumeHealth(t *testing.T) {
	ctx := context.Background()
	other := nodeVolID("0a1b2c3d-0000-4000-8000-0000000000ff")
	tests := []struct {
		name    string
		block   bool
		setup   func(t *testing.T, e *nodeEnv, target string)
		paths   string // which paths the request gives: "both" (default), "staging", "publish", "none"
		volID   string
		code    codes.Code
		reasons []string // of INACCESSIBLE entries, in order
	}{
		{name: "healthy"},
		{name: "healthy block", block: true},
		{name: "no paths given: the node knows where it staged", paths: "none"},
		{name: "publish path not mounted", reasons: []string{"NotPublished"},
			setup: func(t *testing.T, e *nodeEnv, target string) { delete(e.mnt.Mounts, target) }},
		{name: "publish path only, not mounted", paths: "publish", reasons: []string{"NotPublished"},
			setup: func(_ *testing.T, e *nodeEnv, target string) { delete(e.mnt.Mounts, target) }},
		{name: "daemon gone", paths: "none", reasons: []string{"MappingDead"},
			setup: func(t *testing.T, e *nodeEnv, _ string) { e.krbd.Kill(e.record(t).Mapping.Device) }},
		{name: "filesystem unmounted", paths: "staging", reasons: []string{"NotMounted"},
			setup: func(t *testing.T, e *nodeEnv, _ string) { delete(e.mnt.Mounts, e.staging) }},
		{name: "stage record missing", paths: "staging", code: codes.NotFound,
			setup: func(_ *testing.T, e *nodeEnv, _ string) { _ = os.Remove(nodefs.RecordPath(e.staging)) }},
		{name: "unpublished and unstaged", code: codes.NotFound,
			setup: func(_ *testing.T, e *nodeEnv, target string) {
				delete(e.mnt.Mounts, target)
				_ = os.Remove(nodefs.RecordPath(e.staging))
			}},
		{name: "another volume staged there", volID: other, paths: "staging", code: codes.NotFound},
		{name: "unknown volume", volID: other, paths: "none", code: codes.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			capab := mountCap(rwo)
			if tc.block {
				capab = blockCap(rwo)
			}
			e.stage(t, e.stageReq(capab))
			target := e.target("pod1")
			e.publish(t, e.publishReq(target, capab))
			if tc.setup != nil {
				tc.setup(t, e, target)
			}
			req := &csi.NodeGetVolumeHealthRequest{VolumeId: e.volID}
			if tc.volID != "" {
				req.VolumeId = tc.volID
			}
			if tc.paths == "" || tc.paths == "both" || tc.paths == "staging" {
				req.StagingTargetPath = e.staging
			}
			if tc.paths == "" || tc.paths == "both" || tc.paths == "publish" {
				req.VolumePublishPath = target
			}
			resp, err := e.n.NodeGetVolumeHealth(ctx, req)
			wantCode(t, err, tc.code)
			if err != nil {
				return
			}
			h := resp.GetVolumeHealth()
			if h.GetVolumeId() != req.VolumeId {
				t.Errorf("health of %q, want %q", h.GetVolumeId(), req.VolumeId)
			}
			var reasons []string
			for _, s := range h.GetHealthStatuses() {
				if s.GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE || s.GetMessage() == "" {
					t.Errorf("entry %v", s)
				}
				reasons = append(reasons, s.GetReason())
			}
			if !slices.Equal(reasons, tc.reasons) {
				t.Errorf("reasons %q, want %q (%v)", reasons, tc.reasons, h.GetHealthStatuses())
			}
		})
	}
}

func TestNodeGetInfoAndCapabilities(t *testing.T) {
	ctx := context.Background()
	e := newNodeEnv(t)
	info, err := e.n.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetNodeId() != nodeTestNode || info.GetMaxVolumesPerNode() != 16 ||
		!maps.Equal(info.GetAccessibleTopology().GetSegments(), map[string]string{"topology.pelagic.csi/zone": "a"}) {
		t.Errorf("NodeGetInfo = %v", info)
	}

	bare := NewNode(NodeOptions{Options: nodefs.Options{NodeID: "n"}})
	info, err = bare.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || info.GetNodeId() != "n" || info.GetAccessibleTopology() != nil || info.GetMaxVolumesPerNode() != 0 {
		t.Errorf("NodeGetInfo without labels = %v, %v", info, err)
	}
	// Labels without VOLUME_ACCESSIBILITY_CONSTRAINTS advertised: no topology.
	quiet := NewNode(NodeOptions{Options: nodefs.Options{NodeID: "n", Labels: map[string]string{"topology.pelagic.csi/zone": "a"}}})
	info, err = quiet.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil || info.GetAccessibleTopology() != nil {
		t.Errorf("NodeGetInfo with labels but no topology advertised = %v, %v", info, err)
	}

	resp, err := e.n.NodeGetCapabilities(ctx, &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []csi.NodeServiceCapability_RPC_Type
	for _, c := range resp.GetCapabilities() {
		got = append(got, c.GetRpc().GetType())
	}
	for _, want := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
	} {
		if !slices.Contains(got, want) {
			t.Errorf("capabilities %v lack %v", got, want)
		}
	}
}

// Known bug: NodeUnstageVolume unmounts the staging path before it reads
// the stage record, so an unstage naming the wrong volume is refused only
// after it has unmounted the volume that is staged there.
func TestNodeUnstageWrongVolumeKeepsMount(t *testing.T) {
	e := newNodeEnv(t)
	e.stage(t, e.stageReq(mountCap(rwo)))
	_, err := e.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{
		VolumeId: nodeVolID("0a1b2c3d-0000-4000-8000-0000000000ff"), StagingTargetPath: e.staging})
	wantCode(t, err, codes.FailedPrecondition)
	if _, ok := e.mnt.Mounts[e.staging]; !ok {
		t.Errorf("unmounted another volume's staging path: %q", e.calls("Unmount"))
	}
}

// The stage record is written after the mapping record: when recording the
// mapping fails, the retried stage must not find a stage record, skip
// mapping and never record which client maps the image on this node.
func TestNodeStageRetryRecordsMapping(t *testing.T) {
	e := newNodeEnv(t)
	e.pool.SetFail("UpdateRecords", errors.New("rados: ETIMEDOUT"))
	_, err := e.n.NodeStageVolume(context.Background(), e.stageReq(mountCap(rwo)))
	if err == nil {
		t.Fatal("stage succeeded without recording the mapping")
	}
	e.pool.SetFail("UpdateRecords", nil)
	e.stage(t, e.stageReq(mountCap(rwo)))
	if _, ok := e.pool.Image(nodeTestImage).meta[metaMapPrefix+nodeTestNode]; !ok {
		t.Error("after a retried stage the image metadata does not say this node maps it")
	}
}

// TestNodeStageListsWatchersOverTheCheck: the mapper lists the image's
// watchers over the holder check's open of the image (one read, where an
// open takes several), and that open is closed once the stage is over.
func TestNodeStageListsWatchersOverTheCheck(t *testing.T) {
	e := newNodeEnv(t)
	const client = "192.0.2.1:0/1000" // the fake mapper's first client
	var listed []mapper.Watcher
	var listErr error
	e.pool.Before = func(method, _ string) {
		if method != "UpdateRecords" || listed != nil {
			return
		}
		// The mapping's record is being written: the map is done, the
		// check's open still held, and the mapping's client watches.
		e.pool.SetWatchers(nodeTestImage, Watcher{Addr: client, ID: 4000})
		calls := e.krbd.MapCalls()
		listed, listErr = calls[len(calls)-1].Opts.Watchers(context.Background())
	}
	e.stage(t, e.stageReq(mountCap(rwo)))
	if listErr != nil || len(listed) != 1 || listed[0].Addr != client || e.pool.Calls("ViewWatchers") != 1 {
		t.Fatalf("the mapper's Watchers = %v, %v after %d lists over the view; want %s once",
			listed, listErr, e.pool.Calls("ViewWatchers"), client)
	}
	if err := util.WaitFor(context.Background(), 10*time.Second, "the holder check's view to close", func() (bool, error) {
		return e.pool.OpenViews() == 0, nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestNodeStageChecksHoldersWhileTheMapperStarts: the holder check and the
// mapper's start overlap; nothing is mapped until the check has passed.
func TestNodeStageChecksHoldersWhileTheMapperStarts(t *testing.T) {
	e := newNodeEnv(t)
	var asked bool
	var mappedEarly int
	e.pool.Before = func(method, _ string) {
		if method != "StageView" {
			return
		}
		// Hold the check until the mapper has been asked to map.
		_ = util.WaitFor(context.Background(), 10*time.Second, "the map call", func() (bool, error) {
			return len(e.krbd.MapCalls()) > 0, nil
		})
		asked, mappedEarly = len(e.krbd.MapCalls()) > 0, e.krbd.NewMappings()
	}
	e.stage(t, e.stageReq(mountCap(rwo)))
	if !asked {
		t.Fatal("the holder check ran to its end before the mapper was asked to map")
	}
	if mappedEarly != 0 {
		t.Fatalf("%d mappings made before the holder check passed", mappedEarly)
	}
	if n := e.krbd.NewMappings(); n != 1 {
		t.Fatalf("%d mappings after the stage, want 1", n)
	}
}

// TestNodeStageRetryProbesBeforeFormatting: a first stage formats a blank
// image without a probe; its retry, which may follow a format cut short,
// probes first, and keeps what it finds.
func TestNodeStageRetryProbesBeforeFormatting(t *testing.T) {
	e := newNodeEnv(t)
	e.mnt.Errors["Mount"] = errors.New("mount: killed")
	if _, err := e.n.NodeStageVolume(context.Background(), e.stageReq(mountCap(rwo))); err == nil {
		t.Fatal("stage succeeded with mount failing")
	}
	delete(e.mnt.Errors, "Mount")
	e.stage(t, e.stageReq(mountCap(rwo)))
	want := []string{"FormatBlank /dev/fake0 ext4 ", "RefusedFormat /dev/fake0 ext4"}
	if got := append(e.calls("FormatBlank"), e.calls("RefusedFormat")...); !slices.Equal(got, want) {
		t.Errorf("format calls %q, want %q", got, want)
	}
}

// TestNodeStageRetryPastItsEndedClient: recording the mapping timed out
// (an OSD stalled), so the stage unmapped by force; the ended client's
// watch lingers until the OSD's watch timeout. The retry maps again at
// once instead of refusing the volume as held by that client, while a
// watcher this node did not end still refuses it.
func TestNodeStageRetryPastItsEndedClient(t *testing.T) {
	for _, tt := range []struct {
		name    string
		lingers func(ended Watcher) Watcher
		want    codes.Code
	}{
		{"the ended client's watch", func(w Watcher) Watcher { return w }, codes.OK},
		{"another client's watch", func(w Watcher) Watcher { return Watcher{Addr: "192.0.2.9:0/77", ID: 9} }, codes.FailedPrecondition},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newNodeEnv(t)
			e.pool.SetFail("UpdateRecords", errors.New("rados: ETIMEDOUT"))
			if _, err := e.n.NodeStageVolume(context.Background(), e.stageReq(mountCap(rwo))); err == nil {
				t.Fatal("stage succeeded without recording the mapping")
			}
			unmaps := e.krbd.UnmapCalls()
			if len(unmaps) != 1 || !unmaps[0].Opts.Force {
				t.Fatalf("unmaps after the failed record: %+v; want one, forced", unmaps)
			}
			ended := unmaps[0].Mapping
			e.pool.SetWatchers(nodeTestImage, tt.lingers(Watcher{Addr: ended.ClientAddr, ID: 4000}))
			e.pool.SetFail("UpdateRecords", nil)
			_, err := e.n.NodeStageVolume(context.Background(), e.stageReq(mountCap(rwo)))
			wantCode(t, err, tt.want)
		})
	}
}

func targetPaths(rec *stageRecord) []string {
	var out []string
	for _, p := range rec.Targets {
		out = append(out, p.Path)
	}
	return out
}

// TestStageGrowsAnExpandedFilesystem: an expansion the node could not do
// online (ext4 without CAP_SYS_RESOURCE) is done at the next stage, before
// the mount; xfs grows once mounted.
func TestStageGrowsAnExpandedFilesystem(t *testing.T) {
	for _, fstype := range []string{"ext4", "xfs"} {
		t.Run(fstype, func(t *testing.T) {
			e := newNodeEnv(t)
			e.hasFilesystem(nodeTestDev, fstype)
			e.mnt.Sizes[nodeTestDev] = 2 * gib
			e.mnt.FSSizes[nodeTestDev] = gib
			e.stage(t, e.stageReq(mountCapFS(rwo, fstype)))
			var order []string
			for _, c := range e.mnt.CallLog() {
				if strings.HasPrefix(c, "ResizeFS ") || strings.HasPrefix(c, "Mount ") {
					order = append(order, strings.Fields(c)[0])
				}
			}
			want := []string{"ResizeFS", "Mount"}
			if fstype == "xfs" {
				want = []string{"Mount", "ResizeFS"}
			}
			if !slices.Equal(order, want) {
				t.Fatalf("calls %v, want %v", order, want)
			}
			// Grown: the next stage has nothing to do.
			e.unstage(t)
			e.hasFilesystem(nodeTestDev, fstype)
			e.mnt.Sizes[nodeTestDev] = 2 * gib
			calls := len(e.calls("ResizeFS"))
			e.stage(t, e.stageReq(mountCapFS(rwo, fstype)))
			if len(e.calls("ResizeFS")) != calls {
				t.Fatal("grew a filesystem that already fills its device")
			}
		})
	}
}

// TestNodeStageChecksMapperUntilItWorks: a mapper's check runs again after
// it failed, and never again once it passed.
func TestNodeStageChecksMapperUntilItWorks(t *testing.T) {
	ctx := context.Background()
	e := newNodeEnv(t)
	e.krbd.CheckErr = fmt.Errorf("%w: krbd: kernel has no rbd module", mapper.ErrUnavailable)
	_, err := e.n.NodeStageVolume(ctx, e.stageReq(mountCap(rwo)))
	wantCode(t, err, codes.FailedPrecondition)
	e.krbd.CheckErr = nil
	e.stage(t, e.stageReq(mountCap(rwo)))
	if _, err := e.n.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: e.volID, StagingTargetPath: e.staging}); err != nil {
		t.Fatal(err)
	}
	e.stage(t, e.stageReq(mountCap(rwo)))
	if n := e.krbd.CheckCalls(); n != 2 {
		t.Errorf("%d checks, want 2: the failed one and the first that passed", n)
	}
}

// TestNodeStageRefusalObserved: a stage refused for a holder elsewhere is
// told to the observer, with the holder's state.
func TestNodeStageRefusalObserved(t *testing.T) {
	e := newNodeEnv(t)
	observed := &holderEvents{}
	e.n.opts.Holders = observed
	e.otherNodeMaps(t)
	_, err := e.n.NodeStageVolume(context.Background(), e.stageReq(mountCap(rwo)))
	wantCode(t, err, codes.FailedPrecondition)
	if len(observed.events) != 1 || !strings.HasPrefix(observed.events[0], "refused stage ") {
		t.Fatalf("observed %v; want one refused stage", observed.events)
	}
}
