package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"
)

// ephemeralVolume: a generic ephemeral volume (deploy/examples/ephemeral.yaml)
// gets a PVC owned by its pod, holds what the pod writes, and goes away with
// the pod, image included.
func ephemeralVolume(ctx context.Context, e *env) error {
	const ns = "s7-ephemeral"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	start := time.Now()
	if err := e.applyFile(ctx, ns, e.example("ephemeral.yaml")); err != nil {
		return err
	}
	if _, err := e.waitPodRunning(ctx, 3*time.Minute, ns, "ephemeral-pod"); err != nil {
		return err
	}
	const pvc = "ephemeral-pod-scratch"
	owner, err := e.get(ctx, ns, "pvc/"+pvc, "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name} {.status.phase}")
	if err != nil || owner != "Pod/ephemeral-pod Bound" {
		return fmt.Errorf("PVC %s: %q, want Bound and owned by Pod/ephemeral-pod (%v)", pvc, owner, err)
	}
	if err := e.checkFile(ctx, ns, "ephemeral-pod", "/scratch/file", "scratch"); err != nil {
		return err
	}
	pv, err := e.pvOf(ctx, ns, pvc)
	if err != nil {
		return err
	}
	pool, image, err := e.imageOf(ctx, pv)
	if err != nil {
		return err
	}
	e.step(start, "pod runs on its ephemeral volume (PVC %s, image %s)", pvc, image)
	start = time.Now()
	if _, err := e.k(ctx, "-n", ns, "delete", "pod", "ephemeral-pod", "--wait=true", "--timeout=2m"); err != nil {
		return err
	}
	if err := e.waitGone(ctx, 2*time.Minute, ns, "pvc/"+pvc); err != nil {
		return err
	}
	if err := e.waitGone(ctx, 2*time.Minute, "", "pv/"+pv); err != nil {
		return err
	}
	if ok, err := e.imageExists(pool, image); err != nil || ok {
		return fmt.Errorf("image %s/%s outlived its ephemeral volume (%v)", pool, image, err)
	}
	e.step(start, "pod deleted: PVC, PV and image gone")
	return e.deleteNamespace(ctx, ns)
}

// rawBlock: a pod writes to a raw block volume (deploy/examples/raw-block.yaml)
// at an offset; Ceph's image holds those bytes there; a new pod reads them.
func rawBlock(ctx context.Context, e *env) error {
	const ns = "s7-raw-block"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	start := time.Now()
	if err := e.applyFile(ctx, ns, e.example("raw-block.yaml")); err != nil {
		return err
	}
	if _, err := e.waitPodRunning(ctx, 3*time.Minute, ns, "raw-block-pod"); err != nil {
		return err
	}
	size, err := e.exec(ctx, ns, "raw-block-pod", "blockdev", "--getsize64", "/dev/xvda")
	if err != nil || strings.TrimSpace(size) != fmt.Sprint(gib) {
		return fmt.Errorf("/dev/xvda in the pod is %q bytes, want %d (%v)", strings.TrimSpace(size), gib, err)
	}
	token := randomToken()
	const offset = 5 << 20 // 5 MiB in
	if _, err := e.exec(ctx, ns, "raw-block-pod", "sh", "-c",
		fmt.Sprintf("printf %s | dd of=/dev/xvda bs=1M seek=5 conv=notrunc,fsync 2>&1", token)); err != nil {
		return err
	}
	read := fmt.Sprintf("dd if=/dev/xvda bs=1M skip=5 count=1 2>/dev/null | head -c %d", len(token))
	if got, err := e.exec(ctx, ns, "raw-block-pod", "sh", "-c", read); err != nil || got != token {
		return fmt.Errorf("read back %q from /dev/xvda, want %q (%v)", got, token, err)
	}
	pv, err := e.pvOf(ctx, ns, "raw-block-pvc")
	if err != nil {
		return err
	}
	pool, image, err := e.imageOf(ctx, pv)
	if err != nil {
		return err
	}
	// The pod's pages reached the image: read them from Ceph directly.
	if got, err := e.readImage(pool, image, offset, len(token)); err != nil || !bytes.Equal(got, []byte(token)) {
		return fmt.Errorf("image %s/%s holds %q at %d, want %q (%v)", pool, image, got, offset, token, err)
	}
	e.step(start, "%d-byte device in the pod; bytes written at 5 MiB are in the Ceph image", gib)

	start = time.Now()
	if _, err := e.k(ctx, "-n", ns, "delete", "pod", "raw-block-pod", "--wait=true", "--timeout=2m"); err != nil {
		return err
	}
	if err := e.applyFile(ctx, ns, e.example("raw-block.yaml")); err != nil {
		return err
	}
	if _, err := e.waitPodRunning(ctx, 3*time.Minute, ns, "raw-block-pod"); err != nil {
		return err
	}
	if got, err := e.exec(ctx, ns, "raw-block-pod", "sh", "-c", read); err != nil || got != token {
		return fmt.Errorf("a new pod read %q from /dev/xvda, want %q (%v)", got, token, err)
	}
	e.step(start, "a new pod reads the same bytes")
	return e.deleteNamespace(ctx, ns)
}
