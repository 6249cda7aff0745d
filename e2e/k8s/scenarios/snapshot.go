package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// snapshotRestoreClone uses the examples: rbd-pvc with rbd-demo-pod writing
// to it, a VolumeSnapshot of it, a PVC restored from the snapshot and a PVC
// cloned from rbd-pvc. The restore holds exactly what the source held when
// the snapshot was taken (not what was written after); the clone holds what
// the source holds when cloned.
func snapshotRestoreClone(ctx context.Context, e *env) error {
	const ns = "s4-snapshot"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	start := time.Now()
	for _, f := range []string{"pvc.yaml", "pod.yaml"} {
		if err := e.applyFile(ctx, ns, e.example(f)); err != nil {
			return err
		}
	}
	if _, err := e.waitPodRunning(ctx, 3*time.Minute, ns, "rbd-demo-pod"); err != nil {
		return err
	}
	before := randomToken()
	if _, err := e.exec(ctx, ns, "rbd-demo-pod", "sh", "-c", "echo "+before+" > /data/token && sync"); err != nil {
		return err
	}
	sum, err := e.exec(ctx, ns, "rbd-demo-pod", "md5sum", "/data/log", "/data/token")
	if err != nil {
		return err
	}
	e.step(start, "rbd-pvc written by rbd-demo-pod")

	start = time.Now()
	if err := e.applyFile(ctx, ns, e.example("snapshot.yaml")); err != nil {
		return err
	}
	if err := e.waitJSONPath(ctx, 2*time.Minute, ns, "volumesnapshot/rbd-pvc-snapshot", "{.status.readyToUse}", "true"); err != nil {
		return fmt.Errorf("%w (events: %s)", err, e.events(ctx, ns, "VolumeSnapshot", "rbd-pvc-snapshot"))
	}
	content, err := e.get(ctx, ns, "volumesnapshot/rbd-pvc-snapshot", "{.status.boundVolumeSnapshotContentName}")
	if err != nil {
		return err
	}
	handle, err := e.get(ctx, "", "volumesnapshotcontent/"+content, "{.status.snapshotHandle}")
	if err != nil || handle == "" {
		return fmt.Errorf("VolumeSnapshotContent %s has no snapshot handle (%v)", content, err)
	}
	e.step(start, "VolumeSnapshot ready to use (content %s)", content)

	// Written after the snapshot: the restore must not have it.
	if _, err := e.exec(ctx, ns, "rbd-demo-pod", "sh", "-c", "echo later > /data/after-snapshot && sync"); err != nil {
		return err
	}

	start = time.Now()
	if err := e.applyFile(ctx, ns, e.example("restore.yaml")); err != nil {
		return err
	}
	if _, err := e.podWithClaim(ctx, ns, "restored", "rbd-pvc-restore"); err != nil {
		return err
	}
	if err := e.sameData(ctx, ns, "restored", sum); err != nil {
		return err
	}
	if out, err := e.exec(ctx, ns, "restored", "ls", "/data"); err != nil || strings.Contains(out, "after-snapshot") {
		return fmt.Errorf("the restore holds what was written after the snapshot: %q (%v)", out, err)
	}
	e.step(start, "restored PVC in a pod: same data as at the snapshot, nothing later")

	start = time.Now()
	if err := e.applyFile(ctx, ns, e.example("clone.yaml")); err != nil {
		return err
	}
	if _, err := e.podWithClaim(ctx, ns, "cloned", "rbd-pvc-clone"); err != nil {
		return err
	}
	if err := e.sameData(ctx, ns, "cloned", sum); err != nil {
		return err
	}
	if err := e.checkFile(ctx, ns, "cloned", "/data/after-snapshot", "later"); err != nil {
		return err
	}
	e.step(start, "cloned PVC in a pod: same data as the source")

	start = time.Now()
	if err := e.deleteNamespace(ctx, ns); err != nil {
		return err
	}
	if err := e.waitGone(ctx, 2*time.Minute, "", "volumesnapshotcontent/"+content); err != nil {
		return err
	}
	e.step(start, "namespace deleted: volumes and snapshot deleted")
	return nil
}

// sameData: the pod's /data holds the files the md5sum output describes.
func (e *env) sameData(ctx context.Context, ns, pod, sum string) error {
	got, err := e.exec(ctx, ns, pod, "md5sum", "/data/log", "/data/token")
	if err != nil {
		return err
	}
	if got != sum {
		return fmt.Errorf("%s holds other data:\n%s\nwant:\n%s", pod, got, sum)
	}
	return nil
}
