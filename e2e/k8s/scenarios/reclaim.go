package main

import (
	"context"
	"fmt"
	"time"
)

// reclaim: deleting a PVC of a Delete class deletes its image in Ceph; of a
// Retain class, keeps the image and leaves the PV Released.
func reclaim(ctx context.Context, e *env) error {
	const ns = "s5-reclaim"
	if err := e.namespace(ctx, ns); err != nil {
		return err
	}
	retainClass := blockClass + "-retain"
	if err := e.deriveClass(ctx, retainClass, nil, "Retain"); err != nil {
		return err
	}
	for _, c := range []struct{ pvc, class string }{{"deleted", blockClass}, {"retained", retainClass}} {
		start := time.Now()
		if err := e.apply(ctx, ns, claimManifest(c.pvc, c.class, "1Gi", "Filesystem", "")); err != nil {
			return err
		}
		if err := e.waitJSONPath(ctx, 2*time.Minute, ns, "pvc/"+c.pvc, "{.status.phase}", "Bound"); err != nil {
			return err
		}
		pv, err := e.pvOf(ctx, ns, c.pvc)
		if err != nil {
			return err
		}
		pool, image, err := e.imageOf(ctx, pv)
		if err != nil {
			return err
		}
		if ok, err := e.imageExists(pool, image); err != nil || !ok {
			return fmt.Errorf("image %s/%s of %s is not in Ceph (%v)", pool, image, c.pvc, err)
		}
		if _, err := e.k(ctx, "-n", ns, "delete", "pvc", c.pvc, "--wait=true", "--timeout=2m"); err != nil {
			return err
		}
		if c.class == blockClass {
			if err := e.waitGone(ctx, 2*time.Minute, "", "pv/"+pv); err != nil {
				return err
			}
			if ok, err := e.imageExists(pool, image); err != nil || ok {
				return fmt.Errorf("image %s/%s is still in Ceph after its PV was deleted (%v)", pool, image, err)
			}
			e.step(start, "Delete: PVC deleted, PV %s gone, image %s gone from Ceph", pv, image)
			continue
		}
		if err := e.waitJSONPath(ctx, 2*time.Minute, "", "pv/"+pv, "{.status.phase}", "Released"); err != nil {
			return err
		}
		if ok, err := e.imageExists(pool, image); err != nil || !ok {
			return fmt.Errorf("image %s/%s of a retained PV is gone from Ceph (%v)", pool, image, err)
		}
		e.step(start, "Retain: PVC deleted, PV %s Released, image %s kept in Ceph", pv, image)
		if _, err := e.k(ctx, "delete", "pv", pv); err != nil {
			return err
		}
	}
	return e.deleteNamespace(ctx, ns)
}
