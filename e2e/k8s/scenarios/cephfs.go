package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

const cephFSDriver = "rook-ceph.cephfs.csi.ceph.com"

// cephFSShared is scenario 6: e2e/k8s/csi.sh runs the CephFS controller and
// node plugins of deploy/cephfs/, run.sh makes Rook's CephFS secrets and
// applies its rook-cephfs class with the local filesystem; two pods share
// deploy/examples/cephfs-pvc.yaml and each reads what the other wrote.
func cephFSShared(ctx context.Context, e *env) error {
	drivers, err := e.get(ctx, "", "csinode/"+node1, "{.spec.drivers[*].name}")
	if err != nil {
		return err
	}
	if !strings.Contains(drivers, cephFSDriver) {
		return fmt.Errorf("no %s node plugin registered on %s (drivers: %s)", cephFSDriver, node1, drivers)
	}
	const ns = "s6-cephfs"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	start := time.Now()
	if err := e.applyFile(ctx, ns, e.example("cephfs-pvc.yaml")); err != nil {
		return err
	}
	for _, pod := range []string{"writer-a", "writer-b"} {
		if _, err := e.podWithClaim(ctx, ns, pod, "cephfs-pvc"); err != nil {
			return err
		}
		if _, err := e.exec(ctx, ns, pod, "sh", "-c", "echo "+pod+" > /data/"+pod+" && sync"); err != nil {
			return err
		}
	}
	for _, c := range [][2]string{{"writer-a", "writer-b"}, {"writer-b", "writer-a"}} {
		if err := e.checkFile(ctx, ns, c[0], "/data/"+c[1], c[1]); err != nil {
			return err
		}
	}
	e.step(start, "two pods share one RWX volume and read each other's writes")
	return e.deleteNamespace(ctx, ns)
}
