package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

// driverClient is a plain CSI client of the driver under test, as a CO's
// sidecars and kubelet would call it.
type driverClient struct {
	ident   csi.IdentityClient
	ctrl    csi.ControllerClient
	node    csi.NodeClient
	params  map[string]string
	secrets map[string]string
	nodeID  string
	workDir string // staging and target paths
}

func newDriverClient(conn *grpc.ClientConn, o options, secrets map[string]string) *driverClient {
	return &driverClient{
		ident: csi.NewIdentityClient(conn), ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn),
		params:  map[string]string{"clusterID": o.clusterID, "pool": o.pool, "imageFeatures": "layering"},
		secrets: secrets, workDir: filepath.Join(o.workDir, "driver"),
	}
}

// mountCap is an ext4 filesystem volume for one node, the common PVC.
var mountCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

// waitReady polls Probe until the driver answers ready, then learns the node ID.
func (d *driverClient) waitReady(ctx context.Context, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	if err := waitProbe(ctx, d.ident); err != nil {
		return fmt.Errorf("driver not ready within %v: %w", within, err)
	}
	info, err := d.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		return fmt.Errorf("NodeGetInfo: %w", err)
	}
	d.nodeID = info.GetNodeId()
	return nil
}

// waitProbe polls Probe until the driver answers ready, or ctx ends.
func waitProbe(ctx context.Context, ident csi.IdentityClient) error {
	for {
		r, err := ident.Probe(ctx, &csi.ProbeRequest{})
		if err == nil && r.GetReady().GetValue() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("last Probe: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (d *driverClient) createVolume(ctx context.Context, name string, size int64, src *csi.VolumeContentSource) (*csi.Volume, error) {
	r, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap}, Parameters: d.params, Secrets: d.secrets,
		VolumeContentSource: src,
	})
	return r.GetVolume(), err
}

func (d *driverClient) deleteVolume(ctx context.Context, v *csi.Volume) error {
	_, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: d.secrets})
	return err
}

func (d *driverClient) createSnapshot(ctx context.Context, name string, v *csi.Volume) (*csi.Snapshot, error) {
	r, err := d.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: v.GetVolumeId(), Secrets: d.secrets})
	return r.GetSnapshot(), err
}

func (d *driverClient) deleteSnapshot(ctx context.Context, s *csi.Snapshot) error {
	_, err := d.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s.GetSnapshotId(), Secrets: d.secrets})
	return err
}

func (d *driverClient) expand(ctx context.Context, v *csi.Volume, size int64) error {
	_, err := d.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.GetVolumeId(),
		CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: mountCap, Secrets: d.secrets})
	return err
}

func fromSnapshot(s *csi.Snapshot) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: s.GetSnapshotId()}}}
}

func fromVolume(v *csi.Volume) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
		Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.GetVolumeId()}}}
}

func (d *driverClient) staging(i int) string {
	return filepath.Join(d.workDir, "staging", strconv.Itoa(i))
}
func (d *driverClient) target(i int) string {
	return filepath.Join(d.workDir, "target", strconv.Itoa(i), "mount")
}

func (d *driverClient) publishToNode(ctx context.Context, v *csi.Volume) error {
	_, err := d.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: v.GetVolumeId(),
		NodeId: d.nodeID, VolumeCapability: mountCap, Secrets: d.secrets})
	return err
}

func (d *driverClient) unpublishFromNode(ctx context.Context, v *csi.Volume) error {
	_, err := d.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: v.GetVolumeId(),
		NodeId: d.nodeID, Secrets: d.secrets})
	return err
}

func (d *driverClient) stage(ctx context.Context, i int, v *csi.Volume) error {
	_, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.GetVolumeId(),
		StagingTargetPath: d.staging(i), VolumeCapability: mountCap, VolumeContext: v.GetVolumeContext(),
		Secrets: d.secrets})
	return err
}

func (d *driverClient) publish(ctx context.Context, i int, v *csi.Volume) error {
	_, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.GetVolumeId(),
		StagingTargetPath: d.staging(i), TargetPath: d.target(i), VolumeCapability: mountCap,
		VolumeContext: v.GetVolumeContext()})
	return err
}

func (d *driverClient) unpublish(ctx context.Context, i int, v *csi.Volume) error {
	_, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: d.target(i)})
	return err
}

func (d *driverClient) unstage(ctx context.Context, i int, v *csi.Volume) error {
	_, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: d.staging(i)})
	return err
}

// memory is what /proc/PID/status tells of the driver's memory, in bytes.
// File-backed RSS is mostly the Ceph client libraries' pages, which every
// process using them shares; anonymous RSS is the driver's own.
type memory struct {
	RSS  int64 `json:"rssBytes"`
	Anon int64 `json:"rssAnonBytes"`
	File int64 `json:"rssFileBytes"`
	Peak int64 `json:"peakRSSBytes"` // VmHWM: the most RSS the process ever had
}

func readMemory(pid int) (memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}, err
	}
	defer f.Close()
	var m memory
	fields := map[string]*int64{"VmRSS": &m.RSS, "RssAnon": &m.Anon, "RssFile": &m.File, "VmHWM": &m.Peak}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), ":")
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if field, ok := fields[key]; ok && err == nil {
			*field = kb << 10
		}
	}
	return m, sc.Err()
}
