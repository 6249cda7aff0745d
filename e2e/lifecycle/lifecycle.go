// Package lifecycle walks volumes through their whole life over CSI
// against running Pelagic drivers, printing each step and its time: an RBD
// volume (Run) and a CephFS volume shared by two nodes (RunCephFS). They
// are the main job's demo, and tests of the same paths.
package lifecycle

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
)

// Config names what the walk needs besides the driver connection.
type Config struct {
	ClusterID, Pool string
	Secrets         map[string]string // userID/userKey
	WorkDir         string            // staging and target paths go here
}

// Run walks a volume through create, attach, stage, publish, write,
// restage, read, snapshot, restore, expand and delete, writing each step to out.
func Run(conn *grpc.ClientConn, cfg Config, out io.Writer) error {
	d := &demo{
		id: csi.NewIdentityClient(conn), ctrl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn),
		secrets: cfg.Secrets,
		params:  map[string]string{"clusterID": cfg.ClusterID, "pool": cfg.Pool, "imageFeatures": "layering"},
		work:    cfg.WorkDir, out: out,
	}
	start := time.Now()
	if err := d.run(); err != nil {
		return err
	}
	fmt.Fprintf(out, "volume lifecycle complete in %v\n", time.Since(start).Round(time.Millisecond))
	return nil
}

type demo struct {
	id   csi.IdentityClient
	ctrl csi.ControllerClient
	node csi.NodeClient

	secrets map[string]string
	params  map[string]string
	work    string
	step    int
	out     io.Writer
}

// do runs one step and prints its name and time.
func (d *demo) do(name string, fn func(ctx context.Context) (string, error)) error {
	d.step++
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t := time.Now()
	detail, err := fn(ctx)
	took := time.Since(t).Round(100 * time.Microsecond)
	if err != nil {
		fmt.Fprintf(d.out, "%2d. %-28s FAILED after %v\n", d.step, name, took)
		return fmt.Errorf("%s: %w", name, err)
	}
	fmt.Fprintf(d.out, "%2d. %-28s %10v  %s\n", d.step, name, took, detail)
	return nil
}

var fsCap = &csi.VolumeCapability{
	AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "xfs"}},
	AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

func (d *demo) run() error {
	var vol, restored *csi.Volume
	var snap *csi.Snapshot
	payload := []byte(fmt.Sprintf("written by the pelagic demo at %s\n", time.Now().Format(time.RFC3339Nano)))
	steps := []struct {
		name string
		fn   func(ctx context.Context) (string, error)
	}{
		{"probe", d.probe},
		{"create volume (1 GiB)", func(ctx context.Context) (s string, err error) {
			vol, err = d.create(ctx, "demo-vol", 1<<30, nil)
			return vol.GetVolumeId(), err
		}},
		{"attach + stage", func(ctx context.Context) (string, error) { return d.stage(ctx, vol) }},
		{"publish", func(ctx context.Context) (string, error) { return d.publish(ctx, vol) }},
		{"write a file", func(ctx context.Context) (string, error) {
			return fmt.Sprintf("%d bytes, synced", len(payload)), writeSynced(d.file(vol), payload)
		}},
		{"unpublish", func(ctx context.Context) (string, error) { return d.unpublish(ctx, vol) }},
		{"unstage + detach", func(ctx context.Context) (string, error) { return d.unstage(ctx, vol) }},
		{"attach + stage again", func(ctx context.Context) (string, error) { return d.stage(ctx, vol) }},
		{"publish again", func(ctx context.Context) (string, error) { return d.publish(ctx, vol) }},
		{"read it back", func(ctx context.Context) (string, error) { return d.check(vol, payload) }},
		{"snapshot", func(ctx context.Context) (string, error) {
			r, err := d.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
				Name: "demo-snap", SourceVolumeId: vol.GetVolumeId(), Secrets: d.secrets})
			snap = r.GetSnapshot()
			return snap.GetSnapshotId(), err
		}},
		{"restore to a new volume", func(ctx context.Context) (s string, err error) {
			restored, err = d.create(ctx, "demo-restored", 1<<30, &csi.VolumeContentSource{
				Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{
					SnapshotId: snap.GetSnapshotId()}}})
			return restored.GetVolumeId(), err
		}},
		{"attach + stage restored", func(ctx context.Context) (string, error) { return d.stage(ctx, restored) }},
		{"publish restored", func(ctx context.Context) (string, error) { return d.publish(ctx, restored) }},
		{"check restored data", func(ctx context.Context) (string, error) { return d.check(restored, payload) }},
		{"expand to 2 GiB", func(ctx context.Context) (string, error) {
			r, err := d.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
				VolumeId: vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 30},
				Secrets: d.secrets, VolumeCapability: fsCap})
			if err != nil {
				return "", err
			}
			_, err = d.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
				VolumeId: vol.GetVolumeId(), VolumePath: d.target(vol), StagingTargetPath: d.staging(vol),
				CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 30}, VolumeCapability: fsCap})
			return fmt.Sprintf("image %d bytes", r.GetCapacityBytes()), err
		}},
		{"filesystem grew", func(ctx context.Context) (string, error) {
			r, err := d.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{
				VolumeId: vol.GetVolumeId(), VolumePath: d.target(vol)})
			if err != nil {
				return "", err
			}
			for _, u := range r.GetUsage() {
				if u.GetUnit() == csi.VolumeUsage_BYTES {
					if u.GetTotal() < 3<<29 {
						return "", fmt.Errorf("filesystem is %d bytes, want about 2 GiB", u.GetTotal())
					}
					return fmt.Sprintf("%d bytes", u.GetTotal()), nil
				}
			}
			return "", fmt.Errorf("no byte usage reported")
		}},
		{"tear down restored", func(ctx context.Context) (string, error) { return d.teardown(ctx, restored) }},
		{"tear down original", func(ctx context.Context) (string, error) { return d.teardown(ctx, vol) }},
		{"delete snapshot", func(ctx context.Context) (string, error) {
			_, err := d.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId(), Secrets: d.secrets})
			return "", err
		}},
		{"delete volumes", func(ctx context.Context) (string, error) {
			for _, v := range []*csi.Volume{restored, vol} {
				if _, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: d.secrets}); err != nil {
					return "", err
				}
			}
			return "2 deleted", nil
		}},
	}
	for _, s := range steps {
		if err := d.do(s.name, s.fn); err != nil {
			return err
		}
	}
	return nil
}

func (d *demo) create(ctx context.Context, name string, size int64, src *csi.VolumeContentSource) (*csi.Volume, error) {
	r, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{fsCap}, Parameters: d.params, Secrets: d.secrets,
		VolumeContentSource: src,
	})
	return r.GetVolume(), err
}

func (d *demo) staging(v *csi.Volume) string {
	return filepath.Join(d.work, "staging", v.GetVolumeId())
}
func (d *demo) target(v *csi.Volume) string {
	return filepath.Join(d.work, "target", v.GetVolumeId(), "mount")
}
func (d *demo) file(v *csi.Volume) string { return filepath.Join(d.target(v), "hello.txt") }

// stage attaches the volume to the node, as the CO's attacher does, then
// stages it there.
func (d *demo) stage(ctx context.Context, v *csi.Volume) (string, error) {
	if err := os.MkdirAll(d.staging(v), 0o750); err != nil {
		return "", err
	}
	info, err := d.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		return "", err
	}
	if _, err := d.ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: v.GetVolumeId(),
		NodeId: info.GetNodeId(), VolumeCapability: fsCap, Secrets: d.secrets}); err != nil {
		return "", err
	}
	_, err = d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{
		VolumeId: v.GetVolumeId(), StagingTargetPath: d.staging(v), VolumeCapability: fsCap,
		VolumeContext: v.GetVolumeContext(), Secrets: d.secrets})
	return d.staging(v), err
}

func (d *demo) publish(ctx context.Context, v *csi.Volume) (string, error) {
	_, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
		VolumeId: v.GetVolumeId(), StagingTargetPath: d.staging(v), TargetPath: d.target(v),
		VolumeCapability: fsCap, VolumeContext: v.GetVolumeContext()})
	return d.target(v), err
}

func (d *demo) unpublish(ctx context.Context, v *csi.Volume) (string, error) {
	_, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.GetVolumeId(), TargetPath: d.target(v)})
	return "", err
}

// unstage unstages the volume, then detaches it from the node.
func (d *demo) unstage(ctx context.Context, v *csi.Volume) (string, error) {
	if _, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.GetVolumeId(), StagingTargetPath: d.staging(v)}); err != nil {
		return "", err
	}
	info, err := d.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		return "", err
	}
	_, err = d.ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: v.GetVolumeId(),
		NodeId: info.GetNodeId(), Secrets: d.secrets})
	return "", err
}

func (d *demo) teardown(ctx context.Context, v *csi.Volume) (string, error) {
	if _, err := d.unpublish(ctx, v); err != nil {
		return "", err
	}
	return d.unstage(ctx, v)
}

func (d *demo) check(v *csi.Volume, want []byte) (string, error) {
	got, err := os.ReadFile(d.file(v))
	if err != nil {
		return "", err
	}
	if !bytes.Equal(got, want) {
		return "", fmt.Errorf("read %q, want %q", got, want)
	}
	return "data intact", nil
}

// writeSynced writes and fsyncs, so a snapshot taken next holds the data.
func writeSynced(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
