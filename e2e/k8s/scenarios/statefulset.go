package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

// statefulSet is the seed's StatefulSet (deploy/examples/statefulset.yaml):
// three replicas with volumes from rook-ceph-block, each pod writing its name.
// A deleted pod comes back to the same data; so do the pods of a StatefulSet
// scaled to 1 and back to 3.
func statefulSet(ctx context.Context, e *env) error {
	const ns = "s1-statefulset"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	start := time.Now()
	if err := e.applyFile(ctx, ns, e.example("statefulset.yaml")); err != nil {
		return err
	}
	if err := e.waitStatefulSet(ctx, ns, "web", 3); err != nil {
		return err
	}
	e.step(start, "3 replicas ready")
	tokens := map[string]string{}
	for i := range 3 {
		pod, pvc := fmt.Sprintf("web-%d", i), fmt.Sprintf("www-web-%d", i)
		if err := e.checkClaim(ctx, ns, pvc, pod); err != nil {
			return err
		}
		if err := e.checkFile(ctx, ns, pod, "/www/name", pod); err != nil {
			return err
		}
		// A token of our own, written and flushed now, read back after every move.
		tokens[pod] = randomToken()
		if _, err := e.exec(ctx, ns, pod, "sh", "-c", "echo "+tokens[pod]+" > /www/token && sync"); err != nil {
			return err
		}
	}
	e.step(start, "PVCs www-web-0..2 Bound on %s, images in Ceph, attached; each pod wrote its name", blockClass)

	start = time.Now()
	oldUID, err := e.get(ctx, ns, "pod/web-1", "{.metadata.uid}")
	if err != nil {
		return err
	}
	if _, err := e.k(ctx, "-n", ns, "delete", "pod", "web-1", "--wait=false"); err != nil {
		return err
	}
	if err := e.waitFor(ctx, 3*time.Minute, "web-1 to be replaced", func(ctx context.Context) (bool, string, error) {
		uid, err := e.get(ctx, ns, "pod/web-1", "{.metadata.uid}")
		return uid != "" && uid != oldUID, "uid " + uid, err
	}); err != nil {
		return err
	}
	if _, err := e.waitPodRunning(ctx, 3*time.Minute, ns, "web-1"); err != nil {
		return err
	}
	if err := e.checkData(ctx, ns, "web-1", tokens["web-1"], 2); err != nil {
		return err
	}
	e.step(start, "web-1 deleted, came back with its name, token and 2 starts")

	start = time.Now()
	pvs := map[string]string{}
	for _, i := range []int{1, 2} {
		if pvs[fmt.Sprint(i)], err = e.pvOf(ctx, ns, fmt.Sprintf("www-web-%d", i)); err != nil {
			return err
		}
	}
	if _, err := e.k(ctx, "-n", ns, "scale", "statefulset", "web", "--replicas=1"); err != nil {
		return err
	}
	for _, i := range []string{"1", "2"} {
		if err := e.waitGone(ctx, 3*time.Minute, ns, "pod/web-"+i); err != nil {
			return err
		}
		// Detached: the attacher's ControllerUnpublish ran.
		if err := e.waitFor(ctx, 3*time.Minute, "the volume of web-"+i+" to be detached", func(ctx context.Context) (bool, string, error) {
			va, err := e.attachmentOf(ctx, pvs[i])
			return va == "", "still attached: " + va, err
		}); err != nil {
			return err
		}
		if phase, err := e.get(ctx, ns, "pvc/www-web-"+i, "{.status.phase}"); err != nil || phase != "Bound" {
			return fmt.Errorf("PVC www-web-%s is %q after scaling down, want Bound (%v)", i, phase, err)
		}
	}
	e.step(start, "scaled to 1: web-1 and web-2 gone, their volumes detached, PVCs kept")

	start = time.Now()
	if _, err := e.k(ctx, "-n", ns, "scale", "statefulset", "web", "--replicas=3"); err != nil {
		return err
	}
	if err := e.waitStatefulSet(ctx, ns, "web", 3); err != nil {
		return err
	}
	for pod, starts := range map[string]int{"web-0": 1, "web-1": 3, "web-2": 2} {
		if err := e.checkData(ctx, ns, pod, tokens[pod], starts); err != nil {
			return err
		}
	}
	e.step(start, "scaled back to 3: every pod has its name and token")

	start = time.Now()
	if err := e.deleteNamespace(ctx, ns); err != nil {
		return err
	}
	e.step(start, "namespace deleted: volumes unstaged, detached and deleted")
	return nil
}

// waitStatefulSet waits until the StatefulSet has replicas ready pods.
func (e *env) waitStatefulSet(ctx context.Context, ns, name string, replicas int) error {
	err := e.waitJSONPath(ctx, 5*time.Minute, ns, "statefulset/"+name, "{.status.readyReplicas}", fmt.Sprint(replicas))
	if err != nil {
		pods, _ := e.k(ctx, "-n", ns, "get", "pods,pvc", "-o", "wide")
		return fmt.Errorf("%w\n%s", err, pods)
	}
	return nil
}

// checkClaim checks a PVC the way an operator would, then asks Ceph: Bound, on
// Rook's class and provisioner, its image in the pool, attached to the pod's node.
func (e *env) checkClaim(ctx context.Context, ns, pvc, pod string) error {
	out, err := e.get(ctx, ns, "pvc/"+pvc, "{.status.phase} {.spec.storageClassName}")
	if err != nil || out != "Bound "+blockClass {
		return fmt.Errorf("PVC %s: %q, want Bound on %s (%v)", pvc, out, blockClass, err)
	}
	pv, err := e.pvOf(ctx, ns, pvc)
	if err != nil {
		return err
	}
	if d, err := e.get(ctx, "", "pv/"+pv, "{.spec.csi.driver}"); err != nil || d != driverName {
		return fmt.Errorf("PV %s is served by %q, want %s (%v)", pv, d, driverName, err)
	}
	pool, image, err := e.imageOf(ctx, pv)
	if err != nil {
		return err
	}
	if ok, err := e.imageExists(pool, image); err != nil || !ok {
		return fmt.Errorf("image %s/%s of PV %s is not in Ceph (%v)", pool, image, pv, err)
	}
	node, err := e.get(ctx, ns, "pod/"+pod, "{.spec.nodeName}")
	if err != nil {
		return err
	}
	va, err := e.attachmentOf(ctx, pv)
	if err != nil {
		return err
	}
	if !strings.HasSuffix(va, " "+node+" true") {
		return fmt.Errorf("PV %s: VolumeAttachment %q, want one attached to %s", pv, va, node)
	}
	return nil
}

// attachmentOf returns "NAME NODE ATTACHED" of the PV's VolumeAttachment, or "".
func (e *env) attachmentOf(ctx context.Context, pv string) (string, error) {
	out, err := e.k(ctx, "get", "volumeattachments", "-o",
		`jsonpath={range .items[?(@.spec.source.persistentVolumeName=="`+pv+`")]}{.metadata.name} {.spec.nodeName} {.status.attached}{"\n"}{end}`)
	return strings.TrimSpace(out), err
}

// checkFile compares a file in a pod with what it should hold.
func (e *env) checkFile(ctx context.Context, ns, pod, path, want string) error {
	got, err := e.exec(ctx, ns, pod, "cat", path)
	if err != nil {
		return err
	}
	if strings.TrimSpace(got) != want {
		return fmt.Errorf("%s in %s holds %q, want %q", path, pod, strings.TrimSpace(got), want)
	}
	return nil
}

// checkData: the pod's volume holds its name, the token, and one line per start.
func (e *env) checkData(ctx context.Context, ns, pod, token string, starts int) error {
	if err := e.checkFile(ctx, ns, pod, "/www/name", pod); err != nil {
		return err
	}
	if err := e.checkFile(ctx, ns, pod, "/www/token", token); err != nil {
		return err
	}
	out, err := e.exec(ctx, ns, pod, "cat", "/www/starts")
	if err != nil {
		return err
	}
	if n := len(strings.Fields(strings.ReplaceAll(out, "started ", ""))); n != starts {
		return fmt.Errorf("%s started %d times on its volume, want %d:\n%s", pod, n, starts, out)
	}
	return nil
}

func randomToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
