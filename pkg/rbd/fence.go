package rbd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/volume"
)

// Fencing defaults.
const (
	DefaultFenceExpiry  = 24 * time.Hour
	DefaultFenceTimeout = 45 * time.Second // the OSD watch timeout is 30 s
	// maxKeeperInterval bounds how long a fence goes unchecked.
	maxKeeperInterval = 5 * time.Minute
)

// Steps of a fence, passed to ControllerOptions.FenceHook.
const (
	FenceStepIntent      = "intent-recorded" // the pending record is written; nothing is blocklisted yet
	FenceStepBlocklisted = "blocklisted"     // the blocklist call succeeded; the record still says pending
)

// untilLifted is how long a fence's blocklist entry lasts on a cluster
// that cannot extend an entry in place (Pacific re-adds keep the old
// expiry, and removing and re-adding would open a gap): there the fence
// must last until the fence keeper lifts it, once its client holds nothing.
const untilLifted = 10 * 365 * 24 * time.Hour

// fenceIndexObject, one per pool and namespace, lists the images that carry
// fence records (omap key: image name), so the fence keeper finds them
// without reading every image.
const fenceIndexObject = "pelagic.fences"

func (c *Controller) fenceExpiry() time.Duration {
	if c.opts.FenceExpiry > 0 {
		return c.opts.FenceExpiry
	}
	return DefaultFenceExpiry
}

// blocklistTTL is how long a new fence's blocklist entry lasts on cl.
func (c *Controller) blocklistTTL(ctx context.Context, cl Cluster) (time.Duration, error) {
	renews, err := c.renewsInPlace(ctx, cl)
	if err != nil {
		return 0, err
	}
	if renews {
		return c.fenceExpiry(), nil
	}
	return max(untilLifted, c.fenceExpiry()), nil
}

// renewsInPlace finds out, once per cluster, whether blocklisting an
// instance already listed moves its expiry, by trying it on an address no
// client can have (TEST-NET-1, with a random nonce).
func (c *Controller) renewsInPlace(ctx context.Context, cl Cluster) (bool, error) {
	if v, ok := c.renewable.Load(cl.ClusterID()); ok {
		return v.(bool), nil
	}
	addr := fmt.Sprintf("192.0.2.1:0/%d", 1+rand.Uint32()/2)
	// Short expiries: a user allowed only to add entries cannot remove the probe's.
	defer func() { _ = cl.Unblocklist(context.WithoutCancel(ctx), addr) }()
	var first, second time.Time
	for _, step := range []struct {
		expiry time.Duration
		until  *time.Time
	}{{30 * time.Second, &first}, {5 * time.Minute, &second}} {
		if err := cl.Blocklist(ctx, addr, step.expiry); err != nil {
			return false, fmt.Errorf("probing blocklist renewal: %w", err)
		}
		until, _, err := cl.BlocklistExpiry(ctx, addr)
		if err != nil {
			return false, fmt.Errorf("probing blocklist renewal: %w", err)
		}
		*step.until = until
	}
	renews := second.After(first.Add(time.Minute))
	c.renewable.Store(cl.ClusterID(), renews)
	klog.FromContext(ctx).Info("blocklist renewal probed", "cluster", cl.ClusterID(), "inPlace", renews)
	return renews, nil
}

func (c *Controller) hook(step string) {
	if c.opts.FenceHook != nil {
		c.opts.FenceHook(step)
	}
}

// pendingFences returns the fences whose blocklist call may not have been made.
func pendingFences(recs *Records) []Fence {
	var out []Fence
	for _, f := range recs.Fences {
		if !f.Done() {
			out = append(out, f)
		}
	}
	return out
}

// fence blocklists exactly the stale holder's client instance. The intent
// is recorded first, on the records as they were judged (ErrConflict when
// they changed since), then the blocklist call is made and the record
// completed, so a controller that dies in between leaves a pending record
// that the next publish, or the fence keeper, finishes.
func (c *Controller) fence(ctx context.Context, r *resolved, h Holder, reason string) error {
	return c.fenceHolder(ctx, r, h, reason, false)
}

// fenceHolder is fence; force also fences a holder whose attachment is
// current or that no node recorded, which only an operator may ask for.
func (c *Controller) fenceHolder(ctx context.Context, r *resolved, h Holder, reason string, force bool) error {
	addr := h.ClientAddr()
	ttl, err := c.blocklistTTL(ctx, r.cluster)
	if err != nil {
		return status.Errorf(codes.Unavailable, "fencing %s: %v", h.Describe(), err)
	}
	now := time.Now().UTC()
	f := Fence{Node: h.Node, ClientAddr: addr, ClientID: h.ClientID(), At: now, Expires: now.Add(ttl),
		Reason: reason, State: FencePending}
	klog.FromContext(ctx).Info("fencing stale holder", "volume", r.id.String(), "holder", h.Describe(), "reason", reason)
	recs, err := readRecords(ctx, r.pool, r.rec.Backing)
	if err != nil {
		return volume.Status(err)
	}
	m, mapped := recs.Mappings[h.Node]
	_, attached := recs.Attachments[h.Node]
	cur, fenced := recs.Fences[addr]
	stillStale := mapped && ceph.SameClient(m.ClientAddr, addr) && !attached
	if (!stillStale && !force) || addr == "" || (fenced && cur.InForce(now)) {
		return nil // the holder changed since it was judged: the caller judges again
	}
	change := (&recordChange{}).put(metaFencePrefix+addr, f)
	if err := r.pool.UpdateRecords(ctx, r.rec.Backing, recs.Version, change.set, nil); err != nil {
		if errors.Is(err, ErrConflict) {
			return nil
		}
		return volume.Status(err)
	}
	c.hook(FenceStepIntent)
	return c.completeFence(ctx, r, f)
}

// completeFence makes the blocklist call of a recorded fence, marks the
// record done and waits until the fenced client's watch is gone.
func (c *Controller) completeFence(ctx context.Context, r *resolved, f Fence) error {
	if err := c.indexFence(ctx, r.pool, r.rec.Backing); err != nil {
		return volume.Status(err)
	}
	if err := r.cluster.Blocklist(ctx, f.ClientAddr, time.Until(f.Expires)); err != nil {
		return status.Errorf(codes.Unavailable, "fencing node %s's client %s at %s: %v", f.Node, f.ClientID, f.ClientAddr, err)
	}
	c.hook(FenceStepBlocklisted)
	_, err := updateRecords(ctx, r.pool, r.rec.Backing, func(recs *Records) (*recordChange, error) {
		cur, ok := recs.Fences[f.ClientAddr]
		if !ok || cur.Done() {
			return nil, nil
		}
		cur.State = FenceDone
		return (&recordChange{}).put(metaFencePrefix+f.ClientAddr, cur), nil
	})
	if err != nil {
		return volume.Status(err)
	}
	return c.waitWatchGone(ctx, r, f)
}

// waitWatchGone waits until the fenced client no longer watches the image:
// the OSDs drop a blocklisted client's watch, and a publish must not
// return while the old holder still shows.
func (c *Controller) waitWatchGone(ctx context.Context, r *resolved, f Fence) error {
	timeout := c.opts.FenceTimeout
	if timeout == 0 {
		timeout = DefaultFenceTimeout
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ws, err := r.pool.Watchers(wctx, r.rec.Backing)
		if err == nil && !watchedBy(ws, f.ClientAddr) {
			klog.FromContext(ctx).Info("fenced client holds no watch", "volume", r.id.String(), "client", f.ClientAddr,
				"after", time.Since(start).Round(time.Millisecond))
			return nil
		}
		select {
		case <-wctx.Done():
			return status.Errorf(codes.Aborted, "fenced node %s's client %s but its watch on %s/%s is still there after %v; retry",
				f.Node, f.ClientAddr, r.pool.Name(), r.rec.Backing, timeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func watchedBy(ws []Watcher, addr string) bool {
	for _, w := range ws {
		if ceph.SameClient(w.Addr, addr) {
			return true
		}
	}
	return false
}

// indexFence lists image in its pool's fence index.
func (c *Controller) indexFence(ctx context.Context, pool Pool, image string) error {
	return pool.UpdateObjectMap(ctx, fenceIndexObject, map[string]string{image: time.Now().UTC().Format(time.RFC3339)}, nil)
}

// RunFenceKeeper checks every fence recorded in the pools this controller
// knows, every interval (a quarter of the fence expiry, at most five
// minutes), until ctx ends. See KeepFences.
func (c *Controller) RunFenceKeeper(ctx context.Context) {
	interval := c.opts.FenceKeeperInterval
	if interval <= 0 {
		interval = min(c.fenceExpiry()/4, maxKeeperInterval)
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			c.KeepFences(ctx)
		}
	}
}

// KeepFences makes one pass over the recorded fences. A fence is lifted
// only once its client provably holds nothing: no watch on the image and
// no node's mapping record naming it (a node removes its record only after
// a clean unmap). Otherwise it is renewed once half its time has run, so
// it cannot lapse while the fenced node may still write. Pending fences
// are completed. It also refreshes this controller's registration.
func (c *Controller) KeepFences(ctx context.Context) {
	log := klog.FromContext(ctx)
	for _, kp := range c.known.Pools() {
		pool, err := kp.Cluster.Pool(ctx, kp.Pool, kp.Namespace)
		if err != nil {
			continue
		}
		if err := c.registerController(ctx, kp.Cluster, pool, true); err != nil {
			log.V(2).Info("refreshing controller registration", "pool", kp.Pool, "error", err.Error())
		}
		images, err := pool.ReadObjectMap(ctx, fenceIndexObject)
		if err != nil {
			log.Error(err, "reading fence index", "pool", kp.Pool)
			continue
		}
		for image := range images {
			if err := c.keepImageFences(ctx, kp.Cluster, pool, image); err != nil {
				log.Error(err, "keeping fences", "pool", kp.Pool, "image", image)
			}
		}
	}
}

func (c *Controller) keepImageFences(ctx context.Context, cl Cluster, pool Pool, image string) error {
	u, err := readUsage(ctx, pool, image)
	if errors.Is(err, ErrImageNotFound) {
		return pool.UpdateObjectMap(ctx, fenceIndexObject, nil, []string{image})
	}
	if err != nil {
		return err
	}
	r := &resolved{cluster: cl, pool: pool, rec: &journal.Record{Backing: image}}
	for addr, f := range u.Fences {
		if err := c.keepFence(ctx, r, u, addr, f); err != nil {
			return err
		}
	}
	recs, err := readRecords(ctx, pool, image)
	if err == nil && len(recs.Fences) == 0 {
		err = pool.UpdateObjectMap(ctx, fenceIndexObject, nil, []string{image})
	}
	return err
}

func (c *Controller) keepFence(ctx context.Context, r *resolved, u *Usage, addr string, f Fence) error {
	log := klog.FromContext(ctx)
	if !f.Done() {
		return c.completeFence(ctx, r, f)
	}
	_, mapped := u.mappingOf(addr)
	if !mapped && !watchedBy(u.Watchers, addr) {
		if err := r.cluster.Unblocklist(ctx, addr); err != nil {
			if ceph.Errno(err) != syscall.EACCES {
				return err
			}
			// The entry stays until it expires: harmless, since its client
			// holds nothing and its nonce is never reused.
			log.Info("cannot remove the blocklist entry of a lifted fence: the Ceph user lacks "+
				"\"allow command 'osd blocklist'\"", "image", r.rec.Backing, "client", addr)
		}
		log.Info("lifted fence: the client holds nothing", "image", r.rec.Backing, "client", addr, "node", f.Node)
		return c.changeFence(ctx, r, addr, nil)
	}
	until, listed, err := r.cluster.BlocklistExpiry(ctx, addr)
	if err != nil {
		return err
	}
	ttl, err := c.blocklistTTL(ctx, r.cluster)
	if err != nil {
		return err
	}
	switch {
	case !listed:
		// Someone cleared the entry (ceph osd blocklist clear) while the
		// node may still write: put it back at once.
		log.Info("restoring a fence whose blocklist entry is gone", "image", r.rec.Backing, "client", addr, "node", f.Node)
	case time.Until(until) > ttl/2:
		return nil
	}
	if err := r.cluster.Blocklist(ctx, addr, ttl); err != nil {
		return err
	}
	if until, listed, err = r.cluster.BlocklistExpiry(ctx, addr); err != nil || !listed {
		return fmt.Errorf("renewing the fence of %s: blocklist entry missing after the renewal (%v)", addr, err)
	}
	now := time.Now().UTC()
	f.Expires, f.Renewed = until, now
	log.Info("renewed fence: the client still holds a mapping", "image", r.rec.Backing, "client", addr, "node", f.Node,
		"until", until)
	return c.changeFence(ctx, r, addr, &f)
}

// changeFence replaces (f != nil) or removes the fence record of addr.
func (c *Controller) changeFence(ctx context.Context, r *resolved, addr string, f *Fence) error {
	_, err := updateRecords(ctx, r.pool, r.rec.Backing, func(recs *Records) (*recordChange, error) {
		if _, ok := recs.Fences[addr]; !ok {
			return nil, nil
		}
		if f == nil {
			return (&recordChange{}).drop(metaFencePrefix + addr), nil
		}
		return (&recordChange{}).put(metaFencePrefix+addr, *f), nil
	})
	return err
}
