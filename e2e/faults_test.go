package e2e

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// TestCreateSurvivesControllerKill kills a controller process with SIGKILL
// at each step of a CreateVolume, of a new volume and of a clone of a
// volume. The same request to a restarted controller converges: one image
// for the name, under one ID, the source left without the clone's
// temporary snapshot, and pelagicctl ls --orphans finds nothing.
func TestCreateSurvivesControllerKill(t *testing.T) {
	e := newControllerEnv(t)
	ctx := testContext(t, 3*time.Minute)
	restarted := e.controller(nil)
	source, err := restarted.CreateVolume(ctx, e.createReq("pvc-kill-source", 16<<20))
	if err != nil {
		t.Fatal(err)
	}
	made := []*csi.Volume{source.GetVolume()}
	cases := []struct {
		name, step string
		clone      bool
	}{
		{"new-reserved", rbd.CreateStepReserved, false},
		{"new-image", rbd.CreateStepImage, false},
		{"clone-reserved", rbd.CreateStepReserved, true},
		{"clone-snapshot", rbd.CreateStepCloneSnap, true},
		{"clone-image", rbd.CreateStepImage, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req := e.createReq("pvc-kill-"+tc.name, 32<<20)
			if tc.clone {
				req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
					Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: source.GetVolume().GetVolumeId()}}}
			}
			dying, died := startControllerProcess(t, e.cfgPath, tc.step)
			_, err := dying.CreateVolume(ctx, req)
			if err == nil {
				t.Fatal("the controller that was to die at " + tc.step + " created the volume")
			}
			waitKilled(t, died, err)
			resp, err := restarted.CreateVolume(ctx, req)
			if err != nil {
				t.Fatalf("the retry after the kill: %v", err)
			}
			again, err := e.controller(nil).CreateVolume(ctx, req)
			if err != nil || again.GetVolume().GetVolumeId() != resp.GetVolume().GetVolumeId() {
				t.Fatalf("a second retry = %v, %v; want %s", again.GetVolume().GetVolumeId(), err, resp.GetVolume().GetVolumeId())
			}
			made = append(made, resp.GetVolume())
			e.assertExactly(t, ctx, made)
			if snaps := e.userSnaps(t, source.GetVolume().GetVolumeContext()[rbd.CtxImageName]); len(snaps) != 0 {
				t.Fatalf("the source keeps snapshots after the clone converged: %v", snaps)
			}
		})
	}
}

// waitKilled waits for a controller process to die of SIGKILL, its call
// having failed with callErr.
func waitKilled(t *testing.T, died func() error, callErr error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- died() }()
	select {
	case werr := <-done:
		var exit *exec.ExitError
		if !errors.As(werr, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("the controller process ended with %v; want killed by SIGKILL (its call: %v)", werr, callErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the controller process lives on after its call failed with %v", callErr)
	}
}

// assertExactly checks that the pool holds the images of vols and nothing
// else, and that pelagicctl ls --orphans, with a PV for each of vols,
// finds no half volume.
func (e *controllerEnv) assertExactly(t *testing.T, ctx context.Context, vols []*csi.Volume) {
	t.Helper()
	var want []string
	for _, v := range vols {
		want = append(want, v.GetVolumeContext()[rbd.CtxImageName])
	}
	slices.Sort(want)
	if got := e.images(t); !slices.Equal(got, want) {
		t.Fatalf("the pool holds images %v; want exactly %v", got, want)
	}
	var pvs []runtime.Object
	for i, v := range vols {
		pvs = append(pvs, &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pv-%d", i)},
			Spec: corev1.PersistentVolumeSpec{PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: "rbd.csi.pelagic.dev", VolumeHandle: v.GetVolumeId(),
				VolumeAttributes: map[string]string{"pool": e.pool, rbd.CtxImageName: v.GetVolumeContext()[rbd.CtxImageName]}}}},
			Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound}})
	}
	c := newCtlRunner(t, e.cfgPath, e.cluster.AdminID, e.cluster.AdminKey, fake.NewClientset(pvs...))
	var ls struct {
		Volumes []struct{ VolumeID string }
		Orphans []struct{ Kind, Image, VolumeID, Why string }
	}
	c.allFormats(ctx, &ls, "ls", "--orphans", "--pool", e.pool)
	if len(ls.Orphans) != 0 || len(ls.Volumes) != len(vols) {
		t.Fatalf("pelagicctl ls --orphans: %d volumes (want %d), orphans %+v", len(ls.Volumes), len(vols), ls.Orphans)
	}
}

// userSnaps lists an image's snapshots, outside the driver, but those in
// the trash namespace: a clone v2 keeps a removed parent snapshot there.
func (e *controllerEnv) userSnaps(t *testing.T, image string) []string {
	t.Helper()
	img, err := librbd.OpenImageReadOnly(e.adminIOContext(t), image, librbd.NoSnapshot)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	snaps, err := img.GetSnapshotNames()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range snaps {
		ns, err := img.GetSnapNamespaceType(s.Id)
		if err != nil {
			t.Fatal(err)
		}
		if ns != librbd.SnapNamespaceTypeTrash {
			names = append(names, s.Name)
		}
	}
	return names
}
