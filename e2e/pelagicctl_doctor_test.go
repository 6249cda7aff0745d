package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/pelagic-csi/pelagic/cmd/pelagicctl/ctl"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// ctlRunner runs pelagicctl in-process against a test cluster, with a
// Kubernetes the test describes (client-go's fake clientset), and checks
// that no output, in any format, carries the admin key.
type ctlRunner struct {
	t       *testing.T
	cfgPath string
	keyFile string
	user    string
	key     string
	kube    *fake.Clientset
	host    *ctl.Host
	samples string // when set, outputs are saved here for the README
}

func newCtlRunner(t *testing.T, cfgPath, user, key string, kube *fake.Clientset) *ctlRunner {
	keyFile := filepath.Join(t.TempDir(), "admin.key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return &ctlRunner{t: t, cfgPath: cfgPath, keyFile: keyFile, user: user, key: key, kube: kube,
		samples: os.Getenv("PELAGIC_CTL_SAMPLES")}
}

// run runs one command line and returns its exit code, stdout and stderr.
func (c *ctlRunner) run(ctx context.Context, args ...string) (int, string, string) {
	c.t.Helper()
	var out, errOut bytes.Buffer
	tool := ctl.Tool{Stdout: &out, Stderr: &errOut, Host: c.host}
	if c.kube != nil {
		tool.Kube = c.kube
	}
	code := tool.Run(ctx, append([]string{"--config", c.cfgPath, "--keyfile", c.keyFile, "--id", c.user}, args...))
	if strings.Contains(out.String()+errOut.String(), c.key) {
		c.t.Errorf("pelagicctl %v printed the key", args)
	}
	if c.samples != "" {
		name := strings.NewReplacer("/", "_", " ", "_").Replace(strings.Join(args, " "))
		_ = os.WriteFile(filepath.Join(c.samples, name+".txt"), []byte(out.String()+errOut.String()), 0o644)
	}
	return code, out.String(), errOut.String()
}

// allFormats runs the command in text, JSON and YAML, requires success,
// and returns the JSON decoded into v (and the text).
func (c *ctlRunner) allFormats(ctx context.Context, v any, args ...string) string {
	c.t.Helper()
	var text string
	for _, format := range []string{"text", "json", "yaml"} {
		code, out, errOut := c.run(ctx, append(args, "-o", format)...)
		if code != ctl.ExitOK {
			c.t.Fatalf("pelagicctl %v -o %s: exit %d: %s", args, format, code, errOut)
		}
		switch format {
		case "text":
			text = out
			for _, line := range strings.Split(out, "\n") {
				if n := len([]rune(line)); n > 120 {
					c.t.Errorf("pelagicctl %v: a %d-column line: %q", args, n, line)
				}
			}
		case "json":
			if err := json.Unmarshal([]byte(out), v); err != nil {
				c.t.Fatalf("pelagicctl %v -o json printed %q: %v", args, out, err)
			}
		case "yaml":
			if !strings.Contains(out, ":") {
				c.t.Errorf("pelagicctl %v -o yaml printed %q", args, out)
			}
		}
	}
	return text
}

// kubeObjects describes a StatefulSet pod's PVC, its PV, the two nodes and
// the VolumeAttachment of node-a, as Kubernetes shows them while node-a
// holds the volume and the pod was rescheduled to node-b.
func kubeObjects(v *csi.Volume, pool string) []runtime.Object {
	sc := "rook-ceph-block"
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "data-db-0"},
		Spec: corev1.PersistentVolumeClaimSpec{VolumeName: "pv-db-0", StorageClassName: &sc,
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv-db-0"},
		Spec: corev1.PersistentVolumeSpec{ClaimRef: &corev1.ObjectReference{Namespace: "shop", Name: "data-db-0"},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: "rbd.csi.pelagic.dev", VolumeHandle: v.GetVolumeId(),
				VolumeAttributes: map[string]string{"pool": pool, rbd.CtxImageName: v.GetVolumeContext()[rbd.CtxImageName]}}}},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-0", UID: types.UID("0b5f3c2e-1111-4aaa-9bbb-000000000001")},
		Spec: corev1.PodSpec{NodeName: "node-b", Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data-db-0"}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodPending, ContainerStatuses: []corev1.ContainerStatus{{Name: "db",
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}}}}
	event := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "db-0.multiattach"},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "db-0"}, Type: corev1.EventTypeWarning,
		Reason: "FailedAttachVolume", LastTimestamp: metav1.Now(),
		Message: `Multi-Attach error for volume "pv-db-0" Volume is already exclusively attached to one node and can't be attached to another`}
	node := func(name string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	}
	pvName := "pv-db-0"
	va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "csi-3f1e0c2a9b7d"},
		Spec: storagev1.VolumeAttachmentSpec{Attacher: "rbd.csi.pelagic.dev", NodeName: "node-a",
			Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}},
		Status: storagev1.VolumeAttachmentStatus{Attached: true}}
	return []runtime.Object{pvc, pv, pod, event, node("node-a"), node("node-b"), va}
}

// TestPelagicctlDoctorStaleHolder is the Multi-Attach case for real: node
// A maps the volume (rbd-fuse in its own network namespace). While A's
// attachment is current, doctor --fix refuses to fence it. Then A freezes
// past the OSD's watch timeout and the CO unpublishes it (Kubernetes marks
// A NotReady and deletes its VolumeAttachment): B's stage is refused,
// status and doctor say STALE, doctor --fix fences exactly A's client, and
// B's stage succeeds.
func TestPelagicctlDoctorStaleHolder(t *testing.T) {
	e := newTwoNodes(t)
	a, b := e.nodes["node-a"], e.nodes["node-b"]
	rwo := mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	vol := e.create(t, "pvc-doctor", rwo)
	ctx := testContext(t, 10*time.Minute)
	kube := fake.NewClientset(kubeObjects(vol, e.cluster.Pool)...)
	c := newCtlRunner(t, e.cfgPath, e.cluster.AdminID, e.cluster.AdminKey, kube)

	if err := e.publish(ctx, vol, a.id, rwo); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, a, vol, rwo); err != nil {
		t.Fatal(err)
	}
	instanceA := a.mappedInstance(t, vol)

	// A current holder: status says attached, doctor --fix refuses.
	var st struct {
		Verdict    struct{ State, Text string } `json:"verdict"`
		Kubernetes struct {
			Pods []struct {
				Name, Node, Stuck string
			} `json:"pods"`
		} `json:"kubernetes"`
	}
	c.allFormats(ctx, &st, "status", "shop/data-db-0")
	if st.Verdict.State != "attached" || len(st.Kubernetes.Pods) != 1 || !strings.Contains(st.Kubernetes.Pods[0].Stuck, "Multi-Attach") {
		t.Errorf("status of a current holder = %+v", st)
	}
	code, out, errOut := c.run(ctx, "doctor", "-n", "shop", "data-db-0", "--fix")
	t.Logf("doctor --fix on a current holder:\n%s%s", out, errOut)
	if code != ctl.ExitFailed || !strings.Contains(out, "refused") || !strings.Contains(errOut, "did not apply every fix") {
		t.Errorf("doctor --fix of a current holder: exit %d, want a refusal", code)
	}
	for _, addr := range e.blocklisted(t, ctx) {
		if strings.HasPrefix(addr, e.net.subnet+".") {
			t.Fatalf("doctor --fix fenced %s although its attachment is current", addr)
		}
	}
	if code, _, errOut := c.run(ctx, "fence", "node-a"); code != ctl.ExitFailed || !strings.Contains(errOut, "attachment is current") {
		t.Errorf("fence node-a while attached: exit %d, stderr %q; want a refusal", code, errOut)
	}

	// A is cut off past the watch timeout, and the CO moves the volume.
	a.freeze(t)
	e.waitWatchGone(t, ctx, vol, instanceA)
	if err := e.unpublish(ctx, vol, a.id); err != nil {
		t.Fatal(err)
	}
	nodeA, _ := kube.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
	nodeA.Status.Conditions[0].Status = corev1.ConditionUnknown
	nodeA.Spec.Taints = []corev1.Taint{{Key: "node.kubernetes.io/unreachable", Effect: corev1.TaintEffectNoExecute}}
	if _, err := kube.CoreV1().Nodes().Update(ctx, nodeA, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kube.StorageV1().VolumeAttachments().Delete(ctx, "csi-3f1e0c2a9b7d", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.stage(ctx, b, vol, rwo); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("stage on B while A is stale = %v, want FailedPrecondition", err)
	}

	text := c.allFormats(ctx, &st, "status", "shop/data-db-0")
	t.Logf("status of the stale holder:\n%s", text)
	if st.Verdict.State != "stale" || !strings.Contains(st.Verdict.Text, "node-a") {
		t.Errorf("status verdict = %+v, want stale naming node-a", st.Verdict)
	}
	var doc struct {
		Verdict struct{ State string } `json:"verdict"`
		Holders []struct {
			Node, Addr, State string
			WatchAlive        bool
		} `json:"holders"`
		Fix []string `json:"fix"`
	}
	text = c.allFormats(ctx, &doc, "doctor", "shop/data-db-0")
	t.Logf("doctor:\n%s", text)
	if doc.Verdict.State != "stale" || len(doc.Holders) != 1 || doc.Holders[0].State != "stale" || doc.Holders[0].WatchAlive ||
		len(doc.Fix) == 0 || !strings.Contains(doc.Fix[0], "fence "+instanceA) {
		t.Errorf("doctor = %+v, want one stale holder without a watch and the fence as the fix", doc)
	}

	code, out, errOut = c.run(ctx, "doctor", "shop/data-db-0", "--fix")
	t.Logf("doctor --fix:\n%s%s", out, errOut)
	if code != ctl.ExitOK || !strings.Contains(out, "fenced "+a.mappedInstanceID(t, vol)) {
		t.Fatalf("doctor --fix: exit %d", code)
	}
	e.assertOnlyFenced(t, ctx, instanceA)
	u, err := rbd.ReadUsage(ctx, e.adminPool(t, ctx), vol.GetVolumeContext()[rbd.CtxImageName])
	if err != nil {
		t.Fatal(err)
	}
	if f := u.Fences[instanceA]; !f.InForce(time.Now()) || f.Node != "node-a" || !strings.Contains(f.Reason, "pelagicctl doctor --fix") {
		t.Errorf("fence record = %+v, want one in force for node-a saying pelagicctl did it", f)
	}
	if err := e.stage(ctx, b, vol, rwo); err != nil {
		t.Fatalf("stage on B after doctor --fix: %v", err)
	}
	if err := e.publish(ctx, vol, b.id, rwo); err != nil {
		t.Fatalf("publish to B after doctor --fix: %v", err)
	}
	text = c.allFormats(ctx, &st, "status", "shop/data-db-0")
	t.Logf("status after the fix:\n%s", text)
	if st.Verdict.State != "attached" && st.Verdict.State != "fenced" {
		t.Errorf("status after the fix = %+v", st.Verdict)
	}
	if err := e.unstage(ctx, b, vol); err != nil {
		t.Fatal(err)
	}
}

// mappedInstanceID is the client ID node n recorded for its mapping of v.
func (n *testNodePlugin) mappedInstanceID(t *testing.T, v *csi.Volume) string {
	t.Helper()
	var rec struct {
		Mapping struct {
			ClientID string `json:"clientID"`
		} `json:"mapping"`
	}
	b, err := os.ReadFile(n.staging(v) + ".pelagic.json")
	if err != nil || json.Unmarshal(b, &rec) != nil {
		t.Fatalf("stage record of %s on %s: %v", v.GetVolumeId(), n.id, err)
	}
	return rec.Mapping.ClientID
}
