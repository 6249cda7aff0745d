package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

const gib = int64(1) << 30

// expandXFS grows a mounted XFS volume from 1 to 2 GiB while its pod runs:
// the image grows in Ceph and the pod sees the new size.
func expandXFS(ctx context.Context, e *env) error {
	const ns = "s3-xfs"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	if err := e.deriveClass(ctx, blockClass+"-xfs", map[string]string{"csi.storage.k8s.io/fstype": "xfs"}, ""); err != nil {
		return err
	}
	pool, image, err := e.claimWithPod(ctx, ns, "data", blockClass+"-xfs")
	if err != nil {
		return err
	}
	start := time.Now()
	if err := e.growClaim(ctx, ns, "data", pool, image); err != nil {
		return err
	}
	if err := e.waitPodSize(ctx, ns, "user", 3*time.Minute); err != nil {
		return err
	}
	e.step(start, "PVC grown to 2Gi: image 2 GiB in Ceph, xfs grown online in the pod")
	if err := e.checkWriteAfterGrowth(ctx, ns); err != nil {
		return err
	}
	return e.deleteNamespace(ctx, ns)
}

// expandExt4 grows a mounted ext4 volume. The controller side must always
// work: the PV and the image in Ceph grow. Growing ext4 online needs
// CAP_SYS_RESOURCE (the resize ioctl), which this machine withholds even from
// root; then the node must refuse with that reason, and the scenario is
// skipped, saying so. Where online growth is permitted, the pod must see it.
func expandExt4(ctx context.Context, e *env) error {
	const ns = "s3-ext4"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	pool, image, err := e.claimWithPod(ctx, ns, "data", blockClass)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := e.growClaim(ctx, ns, "data", pool, image); err != nil {
		return err
	}
	e.step(start, "PVC grown to 2Gi: PV and image 2 GiB")
	refusal := ""
	err = e.waitFor(ctx, 3*time.Minute, "ext4 to grow online, or the node to refuse it", func(ctx context.Context) (bool, string, error) {
		if size, err := e.podSize(ctx, ns, "user"); err == nil && size > gib*3/2 {
			return true, "", nil
		}
		// The kubelet reports the node's refusal on the PVC.
		msg, err := e.get(ctx, ns, "pvc/data", `{.status.conditions[?(@.type=="NodeResizeError")].message}`)
		if strings.Contains(msg, "not permitted on this node") {
			refusal = strings.SplitN(msg, "\n", 2)[0]
			return true, "", nil
		}
		return false, msg, err
	})
	if err != nil {
		return err
	}
	if refusal == "" {
		e.step(start, "ext4 grown online, seen in the pod")
		if err := e.checkWriteAfterGrowth(ctx, ns); err != nil {
			return err
		}
		return e.deleteNamespace(ctx, ns)
	}
	e.step(start, "the node refused online growth: %s", refusal)
	if err := e.deleteNamespace(ctx, ns); err != nil {
		return err
	}
	return skip("online growth of ext4 is not permitted here: resize2fs needs CAP_SYS_RESOURCE, which " +
		"this machine's bounding set lacks; the node refused it saying so (controller expansion verified: PV and image 2 GiB)")
}

// passWithNote is a pass that the table annotates.
type passWithNote struct{ note string }

func (p passWithNote) Error() string { return p.note }

// deriveClass makes a copy of rook-ceph-block named name, with some
// parameters changed and, if set, another reclaim policy.
func (e *env) deriveClass(ctx context.Context, name string, params map[string]string, reclaim string) error {
	out, err := e.k(ctx, "get", "storageclass", blockClass, "-o", "json")
	if err != nil {
		return err
	}
	var sc map[string]any
	if err := json.Unmarshal([]byte(out), &sc); err != nil {
		return err
	}
	sc["metadata"] = map[string]any{"name": name}
	p, _ := sc["parameters"].(map[string]any)
	for k, v := range params {
		p[k] = v
	}
	if reclaim != "" {
		sc["reclaimPolicy"] = reclaim
	}
	b, err := json.Marshal(sc)
	if err != nil {
		return err
	}
	_, err = e.run(ctx, string(b), "apply", "-f", "-")
	return err
}

// claimWithPod makes a 1 GiB PVC and a pod "user" mounting it at /data with a
// file written, and returns the image behind it.
func (e *env) claimWithPod(ctx context.Context, ns, pvc, class string) (pool, image string, err error) {
	start := time.Now()
	if err := e.apply(ctx, ns, claimManifest(pvc, class, "1Gi", "Filesystem", "")); err != nil {
		return "", "", err
	}
	if _, err := e.podWithClaim(ctx, ns, "user", pvc); err != nil {
		return "", "", err
	}
	if _, err := e.exec(ctx, ns, "user", "sh", "-c", "echo before > /data/before && sync"); err != nil {
		return "", "", err
	}
	size, err := e.podSize(ctx, ns, "user")
	if err != nil {
		return "", "", err
	}
	if size > gib || size < gib/2 {
		return "", "", fmt.Errorf("a 1Gi volume shows %d bytes in the pod", size)
	}
	pv, err := e.pvOf(ctx, ns, pvc)
	if err != nil {
		return "", "", err
	}
	pool, image, err = e.imageOf(ctx, pv)
	e.step(start, "1Gi volume (%s) mounted in a pod: %d bytes", class, size)
	return pool, image, err
}

// growClaim asks for 2Gi and waits for the controller side: the PV and the
// image in Ceph.
func (e *env) growClaim(ctx context.Context, ns, pvc, pool, image string) error {
	if _, err := e.k(ctx, "-n", ns, "patch", "pvc", pvc, "--type=merge",
		"-p", `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`); err != nil {
		return err
	}
	pv, err := e.pvOf(ctx, ns, pvc)
	if err != nil {
		return err
	}
	if err := e.waitJSONPath(ctx, 2*time.Minute, "", "pv/"+pv, "{.spec.capacity.storage}", "2Gi"); err != nil {
		return fmt.Errorf("%w (PVC events: %s)", err, e.events(ctx, ns, "PersistentVolumeClaim", pvc))
	}
	size, err := e.imageSize(pool, image)
	if err != nil {
		return err
	}
	if int64(size) != 2*gib {
		return fmt.Errorf("image %s/%s is %d bytes in Ceph after expansion, want %d", pool, image, size, 2*gib)
	}
	return nil
}

// podSize is the size of /data as the pod's df sees it, in bytes.
func (e *env) podSize(ctx context.Context, ns, pod string) (int64, error) {
	out, err := e.exec(ctx, ns, pod, "df", "-k", "/data")
	if err != nil {
		return 0, err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 2 {
		return 0, fmt.Errorf("df: %q", out)
	}
	kb, err := strconv.ParseInt(f[1], 10, 64)
	return kb * 1024, err
}

// waitPodSize waits until the pod sees more than 1.5 GiB at /data.
func (e *env) waitPodSize(ctx context.Context, ns, pod string, timeout time.Duration) error {
	return e.waitFor(ctx, timeout, "the pod to see the grown filesystem", func(ctx context.Context) (bool, string, error) {
		size, err := e.podSize(ctx, ns, pod)
		return size > gib*3/2, fmt.Sprintf("%d bytes", size), err
	})
}

// checkWriteAfterGrowth: the file written before is intact, and the grown
// filesystem takes a new one.
func (e *env) checkWriteAfterGrowth(ctx context.Context, ns string) error {
	if err := e.checkFile(ctx, ns, "user", "/data/before", "before"); err != nil {
		return err
	}
	if _, err := e.exec(ctx, ns, "user", "sh", "-c", "echo after > /data/after && sync"); err != nil {
		return err
	}
	return e.checkFile(ctx, ns, "user", "/data/after", "after")
}

// claimManifest is a PVC; source, when set, is a dataSource ("VolumeSnapshot/x"
// or "PersistentVolumeClaim/x").
func claimManifest(name, class, size, mode, source string) string {
	ds := ""
	if kind, src, ok := strings.Cut(source, "/"); ok {
		group := ""
		if kind == "VolumeSnapshot" {
			group = "\n    apiGroup: snapshot.storage.k8s.io"
		}
		ds = fmt.Sprintf("\n  dataSource:\n    kind: %s\n    name: %s%s", kind, src, group)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %s
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: %s
  storageClassName: %s
  resources:
    requests: {storage: %s}%s
`, name, mode, class, size, ds)
}

// podWithClaim starts a busybox pod mounting the PVC at /data and waits for it.
func (e *env) podWithClaim(ctx context.Context, ns, pod, pvc string) (string, error) {
	return e.podOn(ctx, ns, pod, pvc, "")
}

// podOn is podWithClaim pinned to a node ("" lets the scheduler choose).
func (e *env) podOn(ctx context.Context, ns, pod, pvc, node string) (string, error) {
	if err := e.apply(ctx, ns, podManifest(pod, pvc, node)); err != nil {
		return "", err
	}
	return e.waitPodRunning(ctx, 3*time.Minute, ns, pod)
}

// podManifest is a busybox pod mounting the PVC at /data, on node if set.
func podManifest(pod, pvc, node string) string {
	pin := ""
	if node != "" {
		pin = "\n  nodeName: " + node
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:%s
  terminationGracePeriodSeconds: 2
  containers:
    - name: app
      image: docker.io/library/busybox:1.35
      imagePullPolicy: IfNotPresent
      command: [sh, -c, 'trap "exit 0" TERM; sleep 1000000 & wait']
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: %s}
`, pod, pin, pvc)
}
