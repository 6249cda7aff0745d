package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
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
			dying, proc := startControllerProcess(t, "rbd", e.cfgPath, tc.step)
			_, err := dying.CreateVolume(ctx, req)
			if err == nil {
				t.Fatal("the controller that was to die at " + tc.step + " created the volume")
			}
			waitKilled(t, proc.Wait, err)
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

// waitKilled waits for a driver process to die of SIGKILL, its call
// having failed with callErr.
func waitKilled(t *testing.T, died func() error, callErr error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- died() }()
	select {
	case werr := <-done:
		var exit *exec.ExitError
		if !errors.As(werr, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("the driver process ended with %v; want killed by SIGKILL (its call: %v)", werr, callErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the driver process lives on after its call failed with %v", callErr)
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

// TestCreateDeleteStormWithCancellations runs 200 CreateVolume calls over
// 100 names (each name twice, at once, on two controllers) and a
// DeleteVolume for half the names, with a third of all calls cancelled at
// a random moment. Every successful create of a name reports the same
// volume, a successful delete leaves no image, and once the retries a
// provisioner makes are done every kept name has exactly one image, the
// deleted none, and no journal entry is left without its image.
func TestCreateDeleteStormWithCancellations(t *testing.T) {
	e := newControllerEnv(t)
	ctrls := []*rbd.Controller{e.controller(nil), e.controller(nil)}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	const names = 100
	type outcome struct {
		ids      []string // of the creates that succeeded
		deleted  bool     // a delete succeeded
		keep     bool     // the name is not to be deleted
		cancels  [3]time.Duration
		cancelOK [3]bool
	}
	out := make([]outcome, names)
	for i := range out {
		out[i].keep = i%2 == 0
		for j := range out[i].cancels {
			out[i].cancelOK[j] = rng.IntN(3) == 0
			out[i].cancels[j] = time.Duration(rng.IntN(400)) * time.Millisecond
		}
	}
	name := func(i int) string { return fmt.Sprintf("pvc-storm-%03d", i) }
	call := func(i, j int) (context.Context, context.CancelFunc) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if out[i].cancelOK[j] {
			time.AfterFunc(out[i].cancels[j], cancel)
		}
		return ctx, cancel
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var creates sync.WaitGroup
			for j := range 2 {
				creates.Add(1)
				go func() {
					defer creates.Done()
					ctx, cancel := call(i, j)
					defer cancel()
					resp, err := ctrls[j].CreateVolume(ctx, e.createReq(name(i), 16<<20))
					if err == nil {
						mu.Lock()
						out[i].ids = append(out[i].ids, resp.GetVolume().GetVolumeId())
						mu.Unlock()
					}
				}()
			}
			creates.Wait()
			if out[i].keep || len(out[i].ids) == 0 {
				return
			}
			ctx, cancel := call(i, 2)
			defer cancel()
			_, err := ctrls[i%2].DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: out[i].ids[0], Secrets: e.secrets})
			out[i].deleted = err == nil
		}()
	}
	wg.Wait()

	// What the surviving calls said holds before any retry.
	images := e.images(t)
	for i, o := range out {
		for _, id := range o.ids {
			if id != o.ids[0] {
				t.Fatalf("%s: creates returned %s and %s", name(i), o.ids[0], id)
			}
		}
		// A delete that failed (cancelled) may have been done or not.
		if len(o.ids) > 0 && (o.keep || o.deleted) {
			has := slices.Contains(images, backingOf(t, o.ids[0]))
			if has == o.deleted {
				t.Fatalf("%s: created as %s, deleted %v, but its image exists = %v", name(i), o.ids[0], o.deleted, has)
			}
		}
	}
	// The provisioner retries until each call succeeds.
	ctx := testContext(t, 3*time.Minute)
	var kept []*csi.Volume
	for i, o := range out {
		if o.deleted {
			continue
		}
		if len(o.ids) > 0 && !o.keep {
			// Its delete failed: the provisioner retries the delete (it may
			// have been done before its answer was lost), not the create.
			retryAborted(ctx, t, name(i)+": retried delete", func() (*csi.DeleteVolumeResponse, error) {
				return ctrls[i%2].DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: o.ids[0], Secrets: e.secrets})
			})
			continue
		}
		resp, _ := retryAborted(ctx, t, name(i)+": retried create", func() (*csi.CreateVolumeResponse, error) {
			return ctrls[i%2].CreateVolume(ctx, e.createReq(name(i), 16<<20))
		})
		if len(o.ids) > 0 && resp.GetVolume().GetVolumeId() != o.ids[0] {
			t.Fatalf("%s: retried create = %s, earlier %s", name(i), resp.GetVolume().GetVolumeId(), o.ids[0])
		}
		if o.keep {
			kept = append(kept, resp.GetVolume())
			continue
		}
		retryAborted(ctx, t, name(i)+": retried delete", func() (*csi.DeleteVolumeResponse, error) {
			return ctrls[i%2].DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.GetVolume().GetVolumeId(), Secrets: e.secrets})
		})
	}
	e.assertExactly(t, ctx, kept)
}

// TestCreateWithStalledOSD stops the OSD of a private cluster with
// SIGSTOP right after a CreateVolume reserved its name. The call returns
// DeadlineExceeded or Unavailable within its deadline, the name's lock is
// free again (a second call is not Aborted), and after SIGCONT a retry
// makes the volume with no orphan.
func TestCreateWithStalledOSD(t *testing.T) {
	c := cephtest.Start(t)
	e := newControllerEnvOn(t, c)
	osd := newOSDStaller(t, c)
	// Every pass reaches CreateStepReserved, a retry finding the
	// reservation too: the OSD is stopped at the first only.
	ctrl := e.controller(func(step string) {
		if step == rbd.CreateStepReserved {
			osd.stop()
		}
	})
	req := e.createReq("pvc-stalled", 16<<20)
	var resp *csi.CreateVolumeResponse
	stallCreate(t, osd, func(ctx context.Context) (err error) {
		resp, err = ctrl.CreateVolume(ctx, req)
		return err
	})
	e.assertExactly(t, testContext(t, time.Minute), []*csi.Volume{resp.GetVolume()})
}

// stallCreate makes a CreateVolume, under which the controller's hook
// stops the OSD once its name is reserved, then a second for the name:
// each returns DeadlineExceeded or Unavailable by its deadline. The
// reservation stays, as the create may land once the OSD is back: the
// name's lock is free at once, and the second call stalls in turn. Once
// the OSD continues, the provisioner's retries succeed; the first may time
// out in librados while the OSD catches up.
func stallCreate(t *testing.T, osd *osdStaller, create func(context.Context) error) {
	t.Helper()
	callStalled(t, "in-flight CreateVolume", 5*time.Second, time.Second, create)
	if !osd.stopped.Load() {
		t.Fatal("the OSD was never stopped")
	}
	callStalled(t, "a second CreateVolume", 3*time.Second, time.Second, create)
	osd.thaw()
	ctx := testContext(t, 2*time.Minute)
	eventually(t, 90*time.Second, "CreateVolume after SIGCONT", func() error { return create(ctx) })
	if t.Failed() {
		t.FailNow()
	}
}

// osdStaller stops the OSD of a private cluster (SIGSTOP) once, and
// continues it (SIGCONT) when told or when the test ends.
type osdStaller struct {
	t       *testing.T
	pid     int
	once    sync.Once
	stopped atomic.Bool
}

func newOSDStaller(t *testing.T, c *cephtest.Cluster) *osdStaller {
	s := &osdStaller{t: t, pid: c.PIDs["osd"]}
	if s.pid <= 0 {
		t.Fatalf("no OSD pid in %s", c.Dir)
	}
	t.Cleanup(s.thaw)
	return s
}

func (s *osdStaller) stop() {
	s.once.Do(func() {
		if err := syscall.Kill(s.pid, syscall.SIGSTOP); err != nil {
			s.t.Error(err)
		}
		s.stopped.Store(true)
	})
}

func (s *osdStaller) thaw() {
	if s.stopped.CompareAndSwap(true, false) {
		if err := syscall.Kill(s.pid, syscall.SIGCONT); err != nil {
			s.t.Error(err)
		}
	}
}

// callStalled makes a call the stopped OSD holds up, on a context with
// deadline: it must return DeadlineExceeded or Unavailable, at most margin
// past the deadline.
func callStalled(t *testing.T, what string, deadline, margin time.Duration, call func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	err := call(ctx)
	took := time.Since(start)
	if took > deadline+margin {
		t.Fatalf("%s with the OSD stopped took %v, past its deadline of %v (%v)", what, took, deadline, err)
	}
	wantStalled(t, what, err)
	t.Logf("%s with the OSD stopped: %v after %v", what, status.Code(err), took.Round(time.Millisecond))
}

// wantStalled fails the test unless a call the stalled OSD held up
// returned DeadlineExceeded or Unavailable.
func wantStalled(t *testing.T, what string, err error) {
	t.Helper()
	if code := status.Code(err); code != codes.DeadlineExceeded && code != codes.Unavailable {
		t.Fatalf("%s with the OSD stopped = %v; want DeadlineExceeded or Unavailable", what, err)
	}
}

// backingOf names the image of a volume ID made with the default prefix.
func backingOf(t *testing.T, volumeID string) string {
	t.Helper()
	id, err := volumeid.Parse(volumeID)
	if err != nil {
		t.Fatal(err)
	}
	return rbd.DefaultNamePrefix + id.UUID
}
