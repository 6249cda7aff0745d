package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pelagic-csi/pelagic/cmd/pelagicctl/ctl"
	"github.com/pelagic-csi/pelagic/pkg/cephfs"
	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

var update = flag.Bool("update", false, "rewrite the golden JSON files in testdata/golden")

// world is every fake pelagicctl reaches: a pool with a volume in use on
// node-a (its PVC, PV and pod in Kubernetes), a stale one, a fenced one,
// a snapshot with a clone, the trash, a CephFS subvolume and a node's
// mapping with its stage record.
type world struct {
	*env
	busy, busyID, stale, staleID, fenced string
	fsID, stateDir                       string
}

func newWorld(t *testing.T) *world {
	w := &world{env: newEnv(t)}
	w.busy, w.busyID = w.addVolume(merge(attachRec("node-a"), mapRec("node-a", addrA, 4124)), watcher(addrA, 4124))
	w.stale, w.staleID = w.addVolume(mapRec("node-b", addrB, 4200))
	w.fenced, _ = w.addVolume(fenceRec("node-c", "10.0.0.9:0/9", 900, testNow.Add(time.Hour)))
	w.catalog.Used = map[string]int64{w.busy: 5 << 20, w.stale: 1 << 20}
	w.catalog.Snaps = map[string][]ctl.SnapEntry{w.busy: {{ID: 4, Name: "csi-snap-1", SizeBytes: 1 << 30,
		Created: testNow.Add(-2 * time.Hour), Namespace: "user"}}}
	w.catalog.ImageList = []string{w.busy, w.stale, w.fenced, "leftover"}
	w.catalog.TrashList = []ctl.TrashEntry{{ID: "abc123", Name: "csi-vol-gone", Deleted: testNow.Add(-time.Hour),
		DeferEnds: testNow.Add(-time.Hour)}, {ID: "def456", Name: "by-hand", Deleted: testNow.Add(-time.Hour)}}

	kube := fake.NewClientset(
		&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "data-1"},
			Spec:   corev1.PersistentVolumeClaimSpec{VolumeName: "pvc-1"},
			Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}},
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1"}, Spec: corev1.PersistentVolumeSpec{
			ClaimRef: &corev1.ObjectReference{Namespace: "default", Name: "data-1"},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: "rbd.csi.pelagic.dev", VolumeHandle: w.busyID}}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "app-0", UID: "uid-app-0"},
			Spec: corev1.PodSpec{NodeName: "node-a", Volumes: []corev1.Volume{{Name: "d", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data-1"}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{
				{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}},
	)
	fss := cephfs.NewFakeVolumes(cephfs.FSInfo{Name: "cephfs", ID: 1, MetadataPool: "cephfs_metadata", DataPools: []string{"cephfs_data"}})
	ctx := context.Background()
	uuid := "00000000-0000-4000-8000-00000000f5f5"
	if err := fss.EnsureGroup(ctx, "cephfs", "csi"); err != nil {
		t.Fatal(err)
	}
	sv := cephfs.Subvolume{FS: "cephfs", Group: "csi", Name: "csi-vol-" + uuid}
	if err := fss.CreateSubvolume(ctx, sv, cephfs.SubvolumeSpec{Size: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	path, err := fss.SubvolumePath(ctx, sv)
	if err != nil {
		t.Fatal(err)
	}
	w.fsID = volumeid.ID{ClusterID: testClusterID, PoolID: 1, UUID: uuid}.String()
	fsys := &ctl.FakeFileSystems{Fake: fss, FSNames: []string{"cephfs"}, SessionList: map[string][]ctl.FSSession{
		"cephfs": {{ID: 4567, Addr: "10.0.0.2:0/777", Host: "node-a", Root: path, Entity: "csi-cephfs-node"}}}}

	w.stateDir = filepath.Join(w.dir, "state")
	staging := filepath.Join(w.dir, "kubelet/plugins/kubernetes.io/csi/rbd.csi.pelagic.dev/abc/globalmount")
	target := filepath.Join(w.dir, "kubelet/pods/uid-app-0/volumes/kubernetes.io~csi/pvc-1/mount")
	m := mapper.Mapping{Mapper: "krbd", Pool: "rbd", Image: w.busy, Device: "/dev/fake0", ClientAddr: addrA, ClientID: "client.4124"}
	if err := (nodefs.StagedIndex{Dir: w.stateDir}).Put(w.busyID, staging); err != nil {
		t.Fatal(err)
	}
	if err := nodefs.WriteRecord(staging, map[string]any{"volumeID": w.busyID, "mapping": m,
		"targets": []nodefs.Publication{{Path: target}}}); err != nil {
		t.Fatal(err)
	}
	krbd := mapper.NewFakeMapper("krbd")
	if _, err := krbd.Map(ctx, mapper.Image{Pool: "rbd", Name: w.busy}, mapper.MapOptions{}); err != nil {
		t.Fatal(err)
	}
	host := &ctl.Host{Mappers: []mapper.Mapper{krbd}, Mounts: mount.NewFakeMounter(), ProcRoot: t.TempDir(), NodeID: "node-a"}
	w.extra = func(tool *ctl.Tool) {
		tool.Kube, tool.Host = kube, host
		tool.FileSystems = func(rbd.Cluster) (ctl.FileSystems, error) { return fsys, nil }
	}
	return w
}

// goldenCases is one command line per command (the mutating ones last).
func (w *world) goldenCases() []struct{ name, args string } {
	node := "--state-dir " + w.stateDir + " --kubelet-dir " + filepath.Join(w.dir, "kubelet")
	return []struct{ name, args string }{
		{"status", "status default/data-1"},
		{"status-cephfs", "status " + w.fsID},
		{"ls", "ls --orphans"},
		{"volumes", "volumes rbd"},
		{"du", "du"},
		{"snapshots", "snapshots " + w.busyID},
		{"clones", "clones pvc-1"},
		{"trash-ls", "trash ls"},
		{"fence-ls", "fence ls"},
		{"showmapped", "showmapped " + node},
		{"doctor", "doctor rbd/" + w.stale},
		{"trash-purge", "trash purge"},
		{"fence", "fence node-b --reason golden"},
		{"doctor-fix", "doctor rbd/" + w.fenced + " --fix"},
		{"fence-lift", "fence lift rbd/" + w.fenced + " 10.0.0.9:0/9 --force"},
		{"unmap", "unmap /dev/fake0 " + node},
	}
}

var (
	stampNow = regexp.MustCompile(`"20[0-2][0-9]-[0-9-]+T[0-9:.]+Z"`) // times the fakes took from the clock, not testNow
	reasonBy = regexp.MustCompile(`\(by [^)]*\)`)
)

// normalize replaces what differs between runs: the temporary directory,
// the clock's times, and who ran the test.
func (w *world) normalize(out string) string {
	out = strings.ReplaceAll(out, w.dir, "DIR")
	out = stampNow.ReplaceAllString(out, `"NOW"`)
	return reasonBy.ReplaceAllString(out, "(by USER@HOST)")
}

// TestGoldenJSON keeps every command's JSON output as documented in
// docs/pelagicctl.md: a change shows as a diff of testdata/golden.
func TestGoldenJSON(t *testing.T) {
	w := newWorld(t)
	for _, tc := range w.goldenCases() {
		code, out, errOut := w.run(append(strings.Fields(tc.args), "-o", "json")...)
		if code != ctl.ExitOK {
			t.Fatalf("%s: exit %d: %s", tc.args, code, errOut)
		}
		got := w.normalize(out)
		path := filepath.Join("testdata", "golden", tc.name+".json")
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestGoldenJSON -update to write it)", err)
		}
		if got != string(want) {
			t.Errorf("%s -o json changed; if on purpose, update docs/pelagicctl.md and rerun with -update:\n--- got\n%s\n--- want\n%s",
				tc.args, got, want)
		}
	}
}

// TestNoCommandPrintsTheKey runs every command in every format, and the
// failing ones too, and scans all they print for the key.
func TestNoCommandPrintsTheKey(t *testing.T) {
	for _, format := range []string{"text", "json", "yaml"} {
		w := newWorld(t)
		lines := w.goldenCases()
		lines = append(lines, struct{ name, args string }{"refused", "fence node-a"},
			struct{ name, args string }{"missing", "status rbd/nope"}, struct{ name, args string }{"completion", "completion bash"})
		for _, tc := range lines {
			code, out, errOut := w.run(append(strings.Fields(tc.args), "-o", format)...)
			if strings.Contains(out+errOut, testKey) || strings.Contains(out+errOut, testKey[:16]) {
				t.Errorf("%s -o %s (exit %d) printed the key:\n%s%s", tc.args, format, code, out, errOut)
			}
			if format == "text" {
				for _, line := range strings.Split(out, "\n") {
					if n := len([]rune(line)); n > 120 {
						t.Errorf("%s: a %d-column line: %q", tc.args, n, line)
					}
				}
			}
		}
	}
}
