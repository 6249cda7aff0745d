package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/pelagic-csi/pelagic/pkg/kube"
)

const (
	addrA = "10.0.0.2:0/1111"
	addrB = "10.0.0.3:0/2222"
)

// holderEvents records what a HolderObserver is told.
type holderEvents struct {
	mu     sync.Mutex
	events []string
}

func (h *holderEvents) Refused(call, reason string) { h.add("refused " + call + " " + reason) }
func (h *holderEvents) Fenced(reason string)        { h.add("fenced " + reason) }
func (h *holderEvents) add(e string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, e)
}

// publishEnv is a controller over a fake pool holding one RWO volume.
type publishEnv struct {
	*env
	vol     *csi.Volume
	image   string
	cluster *FakeCluster
}

func newPublishEnv(t *testing.T, opts ...func(*ControllerOptions)) *publishEnv {
	t.Helper()
	e := &publishEnv{env: newEnv(t, opts...)}
	e.vol = e.create(t, createReq("pvc-publish", gib))
	e.image = e.vol.GetVolumeContext()[CtxImageName]
	e.cluster = e.conn.Clusters[testClusterID]
	return e
}

func (e *publishEnv) publish(c *Controller, node string) error {
	_, err := c.ControllerPublishVolume(context.Background(), &csi.ControllerPublishVolumeRequest{
		VolumeId: e.vol.GetVolumeId(), NodeId: node, VolumeCapability: mountCap(rwo), Secrets: testSecrets})
	return err
}

func (e *publishEnv) unpublish(t *testing.T, node string) {
	t.Helper()
	if _, err := e.c.ControllerUnpublishVolume(context.Background(), &csi.ControllerUnpublishVolumeRequest{
		VolumeId: e.vol.GetVolumeId(), NodeId: node, Secrets: testSecrets}); err != nil {
		t.Fatal(err)
	}
}

// mapOn writes the mapping record a node writes at stage.
func (e *publishEnv) mapOn(t *testing.T, node, addr string) {
	t.Helper()
	b, _ := json.Marshal(NodeMapping{Node: node, ClientAddr: addr, ClientID: "client.1", Since: time.Now()})
	if err := e.pool.SetMetadata(context.Background(), e.image, map[string]string{metaMapPrefix + node: string(b)}); err != nil {
		t.Fatal(err)
	}
}

func (e *publishEnv) records(t *testing.T) *Records {
	t.Helper()
	r, err := readRecords(context.Background(), e.pool, e.image)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPublishFencesStaleHolderWithoutWatch is the partition: node A's
// watch timed out long ago, its mapping record did not; publishing to B
// fences exactly A's recorded instance.
func TestPublishFencesStaleHolderWithoutWatch(t *testing.T) {
	observed := &holderEvents{}
	e := newPublishEnv(t, func(o *ControllerOptions) { o.Holders = observed })
	if err := e.publish(e.c, "node-a"); err != nil {
		t.Fatal(err)
	}
	e.mapOn(t, "node-a", addrA)
	// No watcher at all: A is partitioned past the OSD watch timeout.
	err := e.publish(e.c, "node-b")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node node-a") ||
		!strings.Contains(err.Error(), addrA) {
		t.Fatalf("publish to B while A is attached = %v; want FailedPrecondition naming node-a at %s", err, addrA)
	}
	e.unpublish(t, "node-a")
	if want := []string{"refused publish attached"}; !slices.Equal(observed.events, want) {
		t.Fatalf("observed %v; want %v", observed.events, want)
	}
	if err := e.publish(e.c, "node-b"); err != nil {
		t.Fatalf("publish to B after A was unpublished: %v", err)
	}
	if !e.cluster.Blocklisted(addrA) {
		t.Fatal("A's instance was not blocklisted")
	}
	if want := []string{"refused publish attached", "fenced stale"}; !slices.Equal(observed.events, want) {
		t.Fatalf("observed %v; want %v", observed.events, want)
	}
	r := e.records(t)
	f, ok := r.Fences[addrA]
	if !ok || f.State != FenceDone || f.Node != "node-a" {
		t.Fatalf("fence record of A = %+v (present %v); want done, naming node-a", f, ok)
	}
	if _, ok := r.Mappings["node-a"]; !ok {
		t.Fatal("A's mapping record was removed by the fence: only A, after unmapping, may remove it")
	}
	if _, ok := r.Attachments["node-b"]; !ok {
		t.Fatal("B is not attached")
	}
	if idx, _ := e.pool.ReadObjectMap(context.Background(), fenceIndexObject); idx[e.image] == "" {
		t.Fatalf("the fence index does not list %s: %v", e.image, idx)
	}
}

// TestPublishAfterCleanUnstageFencesNothing: A unmapped and removed its
// record; nothing is fenced.
func TestPublishAfterCleanUnstageFencesNothing(t *testing.T) {
	e := newPublishEnv(t)
	if err := e.publish(e.c, "node-a"); err != nil {
		t.Fatal(err)
	}
	e.mapOn(t, "node-a", addrA)
	if err := e.pool.RemoveMetadata(context.Background(), e.image, metaMapPrefix+"node-a"); err != nil {
		t.Fatal(err)
	}
	e.unpublish(t, "node-a")
	if err := e.publish(e.c, "node-b"); err != nil {
		t.Fatal(err)
	}
	if e.cluster.Blocklisted(addrA) || len(e.records(t).Fences) != 0 {
		t.Fatal("a node that unstaged cleanly was fenced")
	}
}

// TestConcurrentPublishOneWinner interleaves two controllers exactly: the
// second publishes between the first's read and its write. The first's
// conditional write fails, it reads again and refuses, naming the winner.
func TestConcurrentPublishOneWinner(t *testing.T) {
	e := newPublishEnv(t)
	other := NewController(ControllerOptions{Connector: e.conn, Config: e.c.opts.Config})
	raced := false
	e.pool.Before = func(method, _ string) {
		if method != "UpdateRecords" || raced {
			return
		}
		raced = true
		if err := e.publish(other, "node-y"); err != nil {
			t.Errorf("the other controller's publish: %v", err)
		}
	}
	err := e.publish(e.c, "node-x")
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "node node-y") {
		t.Fatalf("the loser's publish = %v; want FailedPrecondition naming node-y", err)
	}
	if a := e.records(t).Attachments; len(a) != 1 || a["node-y"].Node != "node-y" {
		t.Fatalf("attachments = %v; want only node-y", a)
	}
}

// TestFenceCrashBetweenSteps stops a controller right after each fence
// step; the next publish, by another controller, finishes the fence.
func TestFenceCrashBetweenSteps(t *testing.T) {
	for _, step := range []string{FenceStepIntent, FenceStepBlocklisted} {
		t.Run(step, func(t *testing.T) {
			e := newPublishEnv(t)
			dying := NewController(ControllerOptions{Connector: e.conn, Config: e.c.opts.Config,
				FenceHook: func(s string) {
					if s == step {
						panic("killed at " + s)
					}
				}})
			if err := e.publish(dying, "node-a"); err != nil {
				t.Fatal(err)
			}
			e.mapOn(t, "node-a", addrA)
			e.unpublish(t, "node-a")
			func() {
				defer func() { _ = recover() }()
				_ = e.publish(dying, "node-b")
				t.Fatal("the dying controller's publish returned")
			}()
			if f := e.records(t).Fences[addrA]; f.State != FencePending {
				t.Fatalf("after the crash the fence record is %+v; want pending", f)
			}
			if got := e.cluster.Blocklisted(addrA); got != (step == FenceStepBlocklisted) {
				t.Fatalf("blocklisted after crash at %s: %v", step, got)
			}
			if err := e.publish(e.c, "node-b"); err != nil {
				t.Fatalf("the next publish: %v", err)
			}
			if f := e.records(t).Fences[addrA]; f.State != FenceDone || !e.cluster.Blocklisted(addrA) {
				t.Fatalf("after the next publish: fence %+v, blocklisted %v; want done and blocklisted", f, e.cluster.Blocklisted(addrA))
			}
		})
	}
}

// fenceStaleA attaches A, records its mapping, unpublishes it and
// publishes B, which fences A.
func (e *publishEnv) fenceStaleA(t *testing.T) {
	t.Helper()
	if err := e.publish(e.c, "node-a"); err != nil {
		t.Fatal(err)
	}
	e.mapOn(t, "node-a", addrA)
	e.unpublish(t, "node-a")
	if err := e.publish(e.c, "node-b"); err != nil {
		t.Fatal(err)
	}
}

func (e *publishEnv) blocklistedUntil(t *testing.T, addr string) time.Time {
	t.Helper()
	until, ok, err := e.cluster.BlocklistExpiry(context.Background(), addr)
	if err != nil || !ok {
		t.Fatalf("%s is not blocklisted (%v)", addr, err)
	}
	return until
}

// TestFenceKeeper renews a fence whose client still holds a mapping
// record, restores a blocklist entry someone cleared, and lifts the fence
// once the record is gone.
func TestFenceKeeper(t *testing.T) {
	const expiry = time.Minute
	e := newPublishEnv(t, func(o *ControllerOptions) { o.FenceExpiry = expiry })
	e.fenceStaleA(t)
	first := e.blocklistedUntil(t, addrA)
	if d := time.Until(first); d > expiry || d < expiry/2 {
		t.Fatalf("blocklisted for %v; want the fence expiry %v where entries renew in place", d, expiry)
	}

	// Half the expiry has not run: nothing to renew yet.
	e.c.KeepFences(context.Background())
	if again := e.blocklistedUntil(t, addrA); !again.Equal(first) {
		t.Fatal("renewed a fence with most of its time left")
	}
	// Past half its life: renewed, since A still maps it.
	e.cluster.AgeBlocklist(addrA, time.Now().Add(expiry/4))
	e.c.KeepFences(context.Background())
	renewed := e.records(t).Fences[addrA]
	if until := e.blocklistedUntil(t, addrA); time.Until(until) < expiry*3/4 || renewed.Renewed.IsZero() ||
		!renewed.Expires.Equal(until) {
		t.Fatalf("fence not renewed: blocklisted until %v, record %+v", until, renewed)
	}
	// Someone clears the blocklist while A still maps the image.
	_ = e.cluster.Unblocklist(context.Background(), addrA)
	e.c.KeepFences(context.Background())
	if !e.cluster.Blocklisted(addrA) {
		t.Fatal("a cleared fence of a client that still maps the image was not restored")
	}
	// A unmaps cleanly and removes its record: the fence is lifted.
	_ = e.pool.RemoveMetadata(context.Background(), e.image, metaMapPrefix+"node-a")
	e.c.KeepFences(context.Background())
	if e.cluster.Blocklisted(addrA) || len(e.records(t).Fences) != 0 {
		t.Fatal("fence not lifted after its client released the mapping")
	}
	if idx, _ := e.pool.ReadObjectMap(context.Background(), fenceIndexObject); len(idx) != 0 {
		t.Fatalf("fence index still lists %v", idx)
	}
}

// TestFenceLiftedWhereEntriesCannotBeRemoved: a user allowed only to add
// blocklist entries still lifts the fence record once its client holds
// nothing; the entry of that dead client expires by itself.
func TestFenceLiftedWhereEntriesCannotBeRemoved(t *testing.T) {
	e := newPublishEnv(t)
	e.fenceStaleA(t)
	e.cluster.AddOnlyBlocklist = true
	_ = e.pool.RemoveMetadata(context.Background(), e.image, metaMapPrefix+"node-a")
	e.c.KeepFences(context.Background())
	if len(e.records(t).Fences) != 0 {
		t.Fatal("the fence record stays although its client holds nothing")
	}
}

// TestFenceLastsUntilLiftedWhereEntriesCannotRenew: on Pacific a
// blocklisted instance cannot have its expiry moved, so a fence lasts
// until the keeper lifts it, however short the configured expiry.
func TestFenceLastsUntilLiftedWhereEntriesCannotRenew(t *testing.T) {
	e := newPublishEnv(t, func(o *ControllerOptions) { o.FenceExpiry = time.Minute })
	e.cluster.KeepBlocklistExpiry = true
	e.fenceStaleA(t)
	if until := e.blocklistedUntil(t, addrA); time.Until(until) < 365*24*time.Hour {
		t.Fatalf("blocklisted only until %v on a cluster that cannot renew entries", until)
	}
	if f := e.records(t).Fences[addrA]; f.Expires.Sub(e.blocklistedUntil(t, addrA)).Abs() > time.Second {
		t.Fatalf("the record says the fence expires %v, the blocklist %v", f.Expires, e.blocklistedUntil(t, addrA))
	}
	e.c.KeepFences(context.Background())
	if !e.cluster.Blocklisted(addrA) {
		t.Fatal("fence lifted while A still maps the image")
	}
}

// TestControllerOpenIsNotAHolder: another replica's writable open (a
// resize, a snapshot) shows as a watcher; it is recognised by the
// controller registry and never refuses a publish.
func TestControllerOpenIsNotAHolder(t *testing.T) {
	e := newPublishEnv(t)
	peerCluster := NewFakeCluster(testClusterID, e.pool, e.other)
	peerCluster.Addr = "10.0.0.5:0/4242" // as librados reports a client: the watcher's own address
	peer := NewController(ControllerOptions{Connector: NewFakeConnector(peerCluster), Config: e.c.opts.Config})
	if _, err := peer.ControllerExpandVolume(context.Background(), &csi.ControllerExpandVolumeRequest{
		VolumeId: e.vol.GetVolumeId(), CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * gib}, Secrets: testSecrets}); err != nil {
		t.Fatal(err)
	}
	e.pool.SetWatchers(e.image, Watcher{Addr: "10.0.0.5:0/4242", ID: 99})
	if err := e.publish(e.c, "node-a"); err != nil {
		t.Fatalf("publish during a peer controller's open: %v", err)
	}
	// A watcher nobody registered is still refused by name.
	e.unpublish(t, "node-a")
	e.pool.SetWatchers(e.image, Watcher{Addr: "10.0.0.9:0/1", ID: 7})
	if err := e.publish(e.c, "node-a"); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "client.7") {
		t.Fatalf("publish with an unknown watcher = %v; want FailedPrecondition naming client.7", err)
	}
}

// TestPublishUnknownNode: with a view of the cluster's nodes, a node ID
// none registered is NotFound, and nothing is attached; one that cannot
// be checked yet is Unavailable.
func TestPublishUnknownNode(t *testing.T) {
	nodes := kube.NewFakeNodes("node-a")
	e := newPublishEnv(t, func(o *ControllerOptions) { o.Nodes = nodes })
	if err := e.publish(e.c, "node-a"); err != nil {
		t.Fatalf("publishing to a known node: %v", err)
	}
	err := e.publish(e.c, "ghost")
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "ghost") {
		t.Fatalf("publishing to an unknown node = %v, want NotFound naming it", err)
	}
	if _, attached := e.records(t).Attachments["ghost"]; attached {
		t.Error("the unknown node was attached")
	}
	nodes.Err = errors.New("cache not synced")
	if err := e.publish(e.c, "node-a"); status.Code(err) != codes.Unavailable {
		t.Fatalf("publishing while nodes cannot be checked = %v, want Unavailable", err)
	}
}

// TestCloneDoesNotInheritHolders: librbd copies a parent's metadata into a
// clone; the parent's attachment, mapping and fence records must not make
// the clone look held (publishing it would fence the parent's node).
func TestCloneDoesNotInheritHolders(t *testing.T) {
	e := newPublishEnv(t)
	e.fenceStaleA(t) // the parent: attached to B, mapped by A, A fenced
	e.mapOn(t, "node-b", addrB)
	snap := e.snapshot(t, "snap-of-held", e.vol.GetVolumeId())
	for _, src := range []*csi.VolumeContentSource{fromSnapshot(snap.GetSnapshotId()), fromVolume(e.vol.GetVolumeId())} {
		req := createReq("pvc-copy-"+src.String()[:4], gib)
		req.VolumeContentSource = src
		clone := e.create(t, req)
		recs, err := readRecords(context.Background(), e.pool, clone.GetVolumeContext()[CtxImageName])
		if err != nil {
			t.Fatal(err)
		}
		if len(recs.Attachments)+len(recs.Mappings)+len(recs.Fences) != 0 {
			t.Fatalf("a copy of a held volume carries its holders: %+v", recs)
		}
		if err := e.publish(e.c, "node-c"); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("the parent is still held: publish to node-c = %v", err)
		}
	}
}
