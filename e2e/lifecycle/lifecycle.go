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
		secrets: cfg.Secrets, volCap: fsCap,
		params: map[string]string{"clusterID": cfg.ClusterID, "pool": cfg.Pool, "imageFeatures": "layering"},
		work:   cfg.WorkDir, out: out,
	}
	return d.timed("volume", d.run)
}

type demo struct {
	id   csi.IdentityClient
	ctrl csi.ControllerClient
	node csi.NodeClient

	secrets map[string]string
	params  map[string]string
	volCap  *csi.VolumeCapability // of every volume the walk makes
	work    string
	step    int
	out     io.Writer

	vol, restored *csi.Volume // the walk's volume, and the one restored from its snapshot
	snap          *csi.Snapshot
}

// step is one step of a walk: what it does, saying what it did.
type step struct {
	name string
	fn   func(ctx context.Context) (string, error)
}

// timed runs a walk, then prints how long the life of the volume took.
func (d *demo) timed(what string, walk func() error) error {
	start := time.Now()
	if err := walk(); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "%s lifecycle complete in %v\n", what, time.Since(start).Round(time.Millisecond))
	return nil
}

// walk does the steps in order, up to the first that fails.
func (d *demo) walk(steps ...step) error {
	for _, s := range steps {
		if err := d.do(s.name, s.fn); err != nil {
			return err
		}
	}
	return nil
}

// createStep creates the walk's volume.
func (d *demo) createStep(label, name string) step {
	return step{label, func(ctx context.Context) (s string, err error) {
		d.vol, err = d.create(ctx, name, 1<<30, nil)
		return d.vol.GetVolumeId(), err
	}}
}

// snapshotSteps snapshot the volume, then restore the snapshot into a new
// volume; restoredDetail describes it.
func (d *demo) snapshotSteps(snapName, restoredName string, restoredDetail func(*csi.Volume) string) []step {
	return []step{{"snapshot", func(ctx context.Context) (string, error) {
		r, err := d.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: snapName, SourceVolumeId: d.vol.GetVolumeId(), Secrets: d.secrets})
		d.snap = r.GetSnapshot()
		return d.snap.GetSnapshotId(), err
	}}, {"restore to a new volume", func(ctx context.Context) (s string, err error) {
		d.restored, err = d.create(ctx, restoredName, 1<<30, &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: d.snap.GetSnapshotId()}}})
		return restoredDetail(d.restored), err
	}}}
}

// deleteSteps delete the snapshot, then both volumes.
func (d *demo) deleteSteps() []step {
	return []step{{"delete snapshot", func(ctx context.Context) (string, error) {
		_, err := d.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: d.snap.GetSnapshotId(), Secrets: d.secrets})
		return "", err
	}}, {"delete volumes", func(ctx context.Context) (string, error) {
		for _, v := range []*csi.Volume{d.restored, d.vol} {
			if _, err := d.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.GetVolumeId(), Secrets: d.secrets}); err != nil {
				return "", err
			}
		}
		return "2 deleted", nil
	}}}
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
	payload := []byte(fmt.Sprintf("written by the pelagic demo at %s\n", time.Now().Format(time.RFC3339Nano)))
	steps := []step{
		{"probe", d.probe},
		d.createStep("create volume (1 GiB)", "demo-vol"),
		{"attach + stage", func(ctx context.Context) (string, error) { return d.stage(ctx, d.vol) }},
		{"publish", func(ctx context.Context) (string, error) { return d.publish(ctx, d.vol) }},
		{"write a file", func(context.Context) (string, error) {
			return fmt.Sprintf("%d bytes, synced", len(payload)), writeSynced(d.file(d.vol), payload)
		}},
		{"unpublish", func(ctx context.Context) (string, error) { return d.unpublish(ctx, d.vol) }},
		{"unstage + detach", func(ctx context.Context) (string, error) { return d.unstage(ctx, d.vol) }},
		{"attach + stage again", func(ctx context.Context) (string, error) { return d.stage(ctx, d.vol) }},
		{"publish again", func(ctx context.Context) (string, error) { return d.publish(ctx, d.vol) }},
		{"read it back", func(context.Context) (string, error) { return d.check(d.vol, payload) }},
	}
	steps = append(steps, d.snapshotSteps("demo-snap", "demo-restored", (*csi.Volume).GetVolumeId)...)
	steps = append(steps,
		step{"attach + stage restored", func(ctx context.Context) (string, error) { return d.stage(ctx, d.restored) }},
		step{"publish restored", func(ctx context.Context) (string, error) { return d.publish(ctx, d.restored) }},
		step{"check restored data", func(context.Context) (string, error) { return d.check(d.restored, payload) }},
		step{"expand to 2 GiB", d.expand},
		step{"filesystem grew", d.grown},
		step{"tear down restored", func(ctx context.Context) (string, error) { return d.teardown(ctx, d.restored) }},
		step{"tear down original", func(ctx context.Context) (string, error) { return d.teardown(ctx, d.vol) }})
	return d.walk(append(steps, d.deleteSteps()...)...)
}

// expand grows the volume to 2 GiB, then its filesystem on the node.
func (d *demo) expand(ctx context.Context) (string, error) {
	r, err := d.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: d.vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 30},
		Secrets: d.secrets, VolumeCapability: fsCap})
	if err != nil {
		return "", err
	}
	_, err = d.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
		VolumeId: d.vol.GetVolumeId(), VolumePath: d.target(d.vol), StagingTargetPath: d.staging(d.vol),
		CapacityRange: &csi.CapacityRange{RequiredBytes: 2 << 30}, VolumeCapability: fsCap})
	return fmt.Sprintf("image %d bytes", r.GetCapacityBytes()), err
}

// grown checks that the node reports the grown filesystem.
func (d *demo) grown(ctx context.Context) (string, error) {
	r, err := d.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{
		VolumeId: d.vol.GetVolumeId(), VolumePath: d.target(d.vol)})
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
}

func (d *demo) create(ctx context.Context, name string, size int64, src *csi.VolumeContentSource) (*csi.Volume, error) {
	r, err := d.ctrl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{d.volCap}, Parameters: d.params, Secrets: d.secrets,
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
