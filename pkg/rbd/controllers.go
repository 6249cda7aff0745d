package rbd

import (
	"context"
	"encoding/json"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// controllersObject, one per pool and namespace, registers the client
// instances of Pelagic controllers (omap key: address), so that one
// replica's short writable opens (resize, snapshot, flatten) are never
// taken for a foreign holder by another replica or a node.
const controllersObject = "pelagic.controllers"

// controllerTTL is how long a registration lasts unless its controller
// refreshes it; the fence keeper refreshes far more often.
const controllerTTL = time.Hour

type controllerEntry struct {
	Host      string    `json:"host,omitempty"`
	Refreshed time.Time `json:"refreshed"`
}

// registerController records this controller's client instance in pool,
// once per pool and process unless refresh; stale entries of other
// controllers are pruned on refresh.
func (c *Controller) registerController(ctx context.Context, cl Cluster, pool Pool, refresh bool) error {
	key := cl.ClusterID() + "/" + pool.Name() + "/" + pool.Namespace()
	if _, done := c.registered.Load(key); done && !refresh {
		return nil
	}
	own, err := cl.ClientAddr(ctx)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	entry, _ := json.Marshal(controllerEntry{Host: host, Refreshed: time.Now().UTC()})
	set := map[string]string{}
	for _, a := range ceph.AddrVec(own) {
		set[a] = string(entry)
	}
	var prune []string
	if refresh {
		prune = staleControllers(ctx, pool, set)
	}
	if err := pool.UpdateObjectMap(ctx, controllersObject, set, prune); err != nil {
		return err
	}
	c.registered.Store(key, true)
	return nil
}

// staleControllers lists registrations not refreshed within controllerTTL.
func staleControllers(ctx context.Context, pool Pool, keep map[string]string) []string {
	entries, err := pool.ReadObjectMap(ctx, controllersObject)
	if err != nil {
		return nil
	}
	var out []string
	for addr, raw := range entries {
		var e controllerEntry
		if _, ours := keep[addr]; !ours && (json.Unmarshal([]byte(raw), &e) != nil || time.Since(e.Refreshed) > controllerTTL) {
			out = append(out, addr)
		}
	}
	return out
}

// register is registerController for request paths: a failure only
// means other replicas may briefly take this one's opens for a holder.
func (c *Controller) register(ctx context.Context, cl Cluster, pool Pool) {
	if err := c.registerController(ctx, cl, pool, false); err != nil {
		klog.FromContext(ctx).Error(err, "registering controller instance", "pool", pool.Name())
	}
}

// readUsageOf reads who uses image, recognising the watches of Pelagic
// controllers.
func readUsageOf(ctx context.Context, pool Pool, image string) (*Usage, error) {
	u, err := readUsage(ctx, pool, image)
	if err != nil {
		return nil, err
	}
	return u, recognizeControllers(ctx, pool, u)
}

// recognizeControllers reads the controller registry, only when a watcher
// is left that no record explains, to tell the short opens of Pelagic
// controllers from foreign holders.
func recognizeControllers(ctx context.Context, pool Pool, u *Usage) error {
	if !u.unexplainedWatcher() {
		return nil
	}
	entries, err := pool.ReadObjectMap(ctx, controllersObject)
	if err != nil {
		return err
	}
	for addr := range entries {
		u.Controllers = append(u.Controllers, addr)
	}
	return nil
}
