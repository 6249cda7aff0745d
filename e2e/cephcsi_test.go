package e2e

// Helpers of the tests that provision with the reference driver, ceph-csi, and check what it wrote
// (docs/ceph-csi-format.md) by reading the cluster with the admin user.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// Request parameters the external provisioner and snapshotter add (--extra-create-metadata).
const (
	pvcNameKey         = "csi.storage.k8s.io/pvc/name"
	pvcNamespaceKey    = "csi.storage.k8s.io/pvc/namespace"
	pvNameKey          = "csi.storage.k8s.io/pv/name"
	snapNameKey        = "csi.storage.k8s.io/volumesnapshot/name"
	snapNamespaceKey   = "csi.storage.k8s.io/volumesnapshot/namespace"
	snapContentNameKey = "csi.storage.k8s.io/volumesnapshotcontent/name"
	clusterNameKey     = "csi.ceph.com/cluster/name" // with ceph-csi's --clustername
)

// adminConn is a RADOS connection as client.admin, for reading what a driver wrote.
func adminConn(t testing.TB, c *cephtest.Cluster) *rados.Conn {
	t.Helper()
	conn, err := rados.NewConnWithUser(c.AdminID)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.ReadConfigFile(c.Conf); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{"rados_osd_op_timeout": "30", "rados_mon_op_timeout": "30", "client_mount_timeout": "30"} {
		if err := conn.SetConfigOption(k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Connect(); err != nil {
		t.Fatalf("connecting as %s: %v", c.AdminID, err)
	}
	t.Cleanup(conn.Shutdown)
	return conn
}

func openIOContext(t testing.TB, conn *rados.Conn, pool, namespace string) *rados.IOContext {
	t.Helper()
	ioctx, err := conn.OpenIOContext(pool)
	if err != nil {
		t.Fatalf("opening pool %s: %v", pool, err)
	}
	ioctx.SetNamespace(namespace)
	t.Cleanup(ioctx.Destroy)
	return ioctx
}

// omapOf returns an object's whole omap as strings, the empty key included (a listing "after ”"
// skips it), or nil when the object does not exist.
func omapOf(t testing.TB, ioctx *rados.IOContext, oid string) map[string]string {
	t.Helper()
	op := rados.CreateReadOp()
	defer op.Release()
	all := op.GetOmapValues("", "", 10000)
	empty := op.GetOmapValuesByKeys([]string{""})
	if err := op.Operate(ioctx, oid, rados.OperationNoFlag); err != nil {
		if errors.Is(err, rados.ErrNotFound) {
			return nil
		}
		t.Fatalf("reading omap of %s: %v", oid, err)
	}
	out := map[string]string{}
	for {
		kv, err := all.Next()
		if err != nil {
			t.Fatal(err)
		}
		if kv == nil {
			break
		}
		out[kv.Key] = string(kv.Value)
	}
	for {
		kv, err := empty.Next()
		if err != nil {
			t.Fatal(err)
		}
		if kv == nil {
			break
		}
		out[kv.Key] = string(kv.Value)
	}
	return out
}

// objectsWithPrefix lists the objects of ioctx's namespace whose names start with prefix.
func objectsWithPrefix(t testing.TB, ioctx *rados.IOContext, prefix string) []string {
	t.Helper()
	var out []string
	if err := ioctx.ListObjects(func(oid string) {
		if strings.HasPrefix(oid, prefix) {
			out = append(out, oid)
		}
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// journalEntry reads a ceph-csi journal entry: the directory's value for the request name (the
// UUID) and the UUID object's omap. kind is "volume" or "snap".
func journalEntry(t testing.TB, ioctx *rados.IOContext, kind, requestName string) (uuid string, entry map[string]string) {
	t.Helper()
	uuid = omapOf(t, ioctx, "csi."+kind+"s.default")["csi."+kind+"."+requestName]
	if uuid == "" {
		return "", nil
	}
	return uuid, omapOf(t, ioctx, "csi."+kind+"."+uuid)
}

// wantMap reports a difference between two string maps.
func wantMap(t testing.TB, what string, got, want map[string]string) {
	t.Helper()
	if !maps.Equal(got, want) {
		t.Errorf("%s:\n got  %v\n want %v", what, got, want)
	}
}

func withParams(base map[string]string, kv ...string) map[string]string {
	out := make(map[string]string, len(base)+len(kv)/2)
	maps.Copy(out, base)
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// parseID parses a volume or snapshot ID and checks its cluster and location.
func parseID(t testing.TB, id, clusterID string, location int64) volumeid.ID {
	t.Helper()
	vid, err := volumeid.Parse(id)
	if err != nil {
		t.Fatalf("ceph-csi's ID does not parse: %v", err)
	}
	if vid.ClusterID != clusterID || vid.PoolID != location {
		t.Errorf("ID %s: cluster %q location %d, want %q and %d", id, vid.ClusterID, vid.PoolID, clusterID, location)
	}
	return vid
}

// retryAborted repeats call while it answers Aborted (work in progress), as the sidecars do, and
// reports how many times it did.
func retryAborted[T any](ctx context.Context, t testing.TB, what string, call func() (T, error)) (T, int) {
	t.Helper()
	for aborted := 0; ; aborted++ {
		resp, err := call()
		if status.Code(err) != codes.Aborted {
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			return resp, aborted
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: still %v when the test's deadline came", what, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// eventually polls cond every half second until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s, still after %v: %v", what, d, err)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// mgrTasks returns the rbd_support mgr module's task list.
func mgrTasks(t testing.TB, conn *rados.Conn) []mgrTask {
	t.Helper()
	cmd, _ := json.Marshal(map[string]string{"prefix": "rbd task list", "format": "json"})
	out, info, err := conn.MgrCommand([][]byte{cmd})
	if err != nil {
		t.Fatalf("rbd task list: %v %s", err, info)
	}
	var tasks []mgrTask
	if err := json.Unmarshal(out, &tasks); err != nil {
		t.Fatalf("rbd task list: %v: %s", err, out)
	}
	return tasks
}

type mgrTask struct {
	Refs struct {
		Action    string `json:"action"`
		Pool      string `json:"pool_name"`
		Namespace string `json:"pool_namespace"`
		ImageName string `json:"image_name"`
		ImageID   string `json:"image_id"`
	} `json:"refs"`
}

func hasTask(tasks []mgrTask, action, pool, imageName, imageID string) bool {
	return slices.ContainsFunc(tasks, func(k mgrTask) bool {
		return k.Refs.Action == action && k.Refs.Pool == pool &&
			(imageName == "" || k.Refs.ImageName == imageName) && (imageID == "" || k.Refs.ImageID == imageID)
	})
}

// image is an open, read-only RBD image.
type image struct{ *librbd.Image }

func openImage(t testing.TB, ioctx *rados.IOContext, name string) image {
	t.Helper()
	img, err := librbd.OpenImageReadOnly(ioctx, name, librbd.NoSnapshot)
	if err != nil {
		t.Fatalf("opening image %s: %v", name, err)
	}
	t.Cleanup(func() { img.Close() })
	return image{img}
}

func (i image) id(t testing.TB) string {
	t.Helper()
	id, err := i.GetId()
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (i image) metadata(t testing.TB) map[string]string {
	t.Helper()
	md, err := i.ListMetadata()
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func (i image) features(t testing.TB) uint64 {
	t.Helper()
	f, err := i.GetFeatures()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// userSnaps lists the names of the image's user (not trash) snapshots.
func (i image) userSnaps(t testing.TB) []string {
	t.Helper()
	snaps, err := i.GetSnapshotNames()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range snaps {
		names = append(names, s.Name)
	}
	return names
}

// parentLink describes an image's parent: its name and the snapshot the image was cloned from,
// with the snapshot's namespace and, for a trashed snapshot, its original name.
type parentLink struct {
	Image, Snap string
	Trash       bool
}

func (l parentLink) String() string {
	if l.Trash {
		return fmt.Sprintf("%s@(trash: %s)", l.Image, l.Snap)
	}
	return l.Image + "@" + l.Snap
}

// parent returns the image's parent link, or the zero link when it has none.
func (i image) parent(t testing.TB, ioctx *rados.IOContext) parentLink {
	t.Helper()
	p, err := i.GetParent()
	if errors.Is(err, librbd.ErrNotFound) {
		return parentLink{}
	}
	if err != nil {
		t.Fatal(err)
	}
	pimg, err := librbd.OpenImageByIdReadOnly(ioctx, p.Image.ImageID, librbd.NoSnapshot)
	if err != nil {
		t.Fatalf("opening parent %s: %v", p.Image.ImageName, err)
	}
	defer pimg.Close()
	nsType, err := pimg.GetSnapNamespaceType(p.Snap.ID)
	if err != nil {
		t.Fatal(err)
	}
	link := parentLink{Image: p.Image.ImageName, Snap: p.Snap.SnapName}
	if nsType == librbd.SnapNamespaceTypeTrash {
		link.Trash = true
		if link.Snap, err = pimg.GetSnapTrashNamespace(p.Snap.ID); err != nil {
			t.Fatal(err)
		}
	}
	return link
}

func imageNames(t testing.TB, ioctx *rados.IOContext) []string {
	t.Helper()
	names, err := librbd.GetImageNames(ioctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func trashNames(t testing.TB, ioctx *rados.IOContext) []string {
	t.Helper()
	items, err := librbd.GetTrashList(ioctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, it := range items {
		names = append(names, it.Name)
	}
	slices.Sort(names)
	return names
}
