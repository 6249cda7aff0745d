package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// Fencing defaults.
const (
	DefaultFenceExpiry  = 24 * time.Hour
	DefaultFenceTimeout = 45 * time.Second // the OSD watch timeout is 30 s
)

// ControllerPublishVolume records that the volume is attached to a node,
// after making sure no other node holds a single-node volume: a current
// holder is refused by name, a stale one is fenced.
func (c *Controller) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	if req.GetNodeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "node ID is missing")
	}
	if err := validateCapability(req.GetVolumeCapability()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	r, unlock, err := c.lockResolved(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if err != nil {
		return nil, err
	}
	defer unlock()
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	usage, err := c.usage(ctx, r)
	if err != nil {
		return nil, err
	}
	if a, ok := usage.Attachments[req.GetNodeId()]; ok {
		if a.Mode != mode.String() || a.ReadOnly != req.GetReadonly() {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is already published to node %s as %s (read-only %t)",
				req.GetVolumeId(), req.GetNodeId(), a.Mode, a.ReadOnly)
		}
		return &csi.ControllerPublishVolumeResponse{}, nil
	}
	if err := c.clearHolders(ctx, r, usage, req.GetNodeId(), singleNode(mode)); err != nil {
		return nil, err
	}
	a := Attachment{Node: req.GetNodeId(), Mode: mode.String(), ReadOnly: req.GetReadonly(), Since: time.Now().UTC()}
	b, _ := json.Marshal(a)
	if err := r.pool.SetMetadata(ctx, r.rec.Image, map[string]string{metaAttachPrefix + a.Node: string(b)}); err != nil {
		return nil, statusFor(err)
	}
	return &csi.ControllerPublishVolumeResponse{}, nil
}

// ControllerUnpublishVolume forgets the attachment. The node's mapping, if
// it is still there, becomes stale and may be fenced by the next publish.
func (c *Controller) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID is missing")
	}
	r, unlock, err := c.lockResolved(ctx, journal.Volume, req.GetVolumeId(), req.GetSecrets())
	if status.Code(err) == codes.NotFound {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer unlock()
	nodes := []string{req.GetNodeId()}
	if req.GetNodeId() == "" { // unpublish from every node
		usage, err := c.usage(ctx, r)
		if err != nil {
			return nil, err
		}
		nodes = nodes[:0]
		for n := range usage.Attachments {
			nodes = append(nodes, n)
		}
	}
	for _, n := range nodes {
		err := r.pool.RemoveMetadata(ctx, r.rec.Image, metaAttachPrefix+n)
		if err != nil && !errors.Is(err, ErrImageNotFound) {
			return nil, statusFor(err)
		}
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

// usage reads who uses the volume, leaving out this controller's own client.
func (c *Controller) usage(ctx context.Context, r *resolved) (*Usage, error) {
	own, err := r.cluster.ClientAddr(ctx)
	if err != nil {
		return nil, statusFor(err)
	}
	u, err := readUsage(ctx, r.pool, r.rec.Image, splitAddrs(own)...)
	if errors.Is(err, ErrImageNotFound) {
		return nil, status.Errorf(codes.NotFound, "volume %s has no image: %v", r.id, err)
	}
	if err != nil {
		return nil, statusFor(err)
	}
	return u, nil
}

// splitAddrs turns "[v2:a/n,v1:b/n]" into its addresses.
func splitAddrs(s string) []string {
	return strings.Split(strings.Trim(s, "[]"), ",")
}

// clearHolders applies Decide to every holder: it refuses with a message
// naming them, or fences the stale ones and waits for their watches to go.
func (c *Controller) clearHolders(ctx context.Context, r *resolved, usage *Usage, node string, requestSingle bool) error {
	var refuse, fence []Holder
	for _, h := range usage.Holders(node) {
		switch Decide(requestSingle, h) {
		case Refuse:
			refuse = append(refuse, h)
		case FenceIt:
			fence = append(fence, h)
		}
	}
	if len(refuse) > 0 {
		return status.Errorf(codes.FailedPrecondition, "volume %s (image %s/%s) is already in use: %s",
			r.id, r.pool.Name(), r.rec.Image, describeAll(refuse))
	}
	for _, h := range fence {
		if err := c.fence(ctx, r, h, node); err != nil {
			return err
		}
	}
	return nil
}

func describeAll(hs []Holder) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = h.Describe()
	}
	return strings.Join(parts, "; ")
}

// fence blocklists exactly the stale holder's client instance, records
// why, and waits until its watch is gone.
func (c *Controller) fence(ctx context.Context, r *resolved, h Holder, forNode string) error {
	addr := h.Watcher.Addr
	log := klog.FromContext(ctx)
	expiry := c.opts.FenceExpiry
	if expiry == 0 {
		expiry = DefaultFenceExpiry
	}
	log.Info("fencing stale holder", "volume", r.id.String(), "holder", h.Describe(), "for", forNode)
	if err := r.cluster.Blocklist(ctx, addr, expiry); err != nil {
		return status.Errorf(codes.Internal, "fencing %s: %v", h.Describe(), err)
	}
	now := time.Now().UTC()
	f := Fence{Node: h.Node, ClientAddr: addr, ClientID: fmt.Sprintf("client.%d", h.Watcher.ID), At: now,
		Expires: now.Add(expiry), Reason: fmt.Sprintf("node %s still mapped volume %s after it was unpublished; published to %s",
			h.Node, r.id, forNode)}
	b, _ := json.Marshal(f)
	if err := r.pool.SetMetadata(ctx, r.rec.Image, map[string]string{metaFencePrefix + addr: string(b)}); err != nil {
		return statusFor(err)
	}
	if err := r.pool.RemoveMetadata(ctx, r.rec.Image, metaMapPrefix+h.Node); err != nil {
		return statusFor(err)
	}
	timeout := c.opts.FenceTimeout
	if timeout == 0 {
		timeout = DefaultFenceTimeout
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ws, err := r.pool.Watchers(wctx, r.rec.Image)
		if err == nil && !watchedBy(ws, addr) {
			log.Info("fenced holder's watch is gone", "volume", r.id.String(), "client", addr,
				"after", time.Since(now).Round(time.Millisecond))
			return nil
		}
		select {
		case <-wctx.Done():
			return status.Errorf(codes.Aborted, "fenced %s but its watch on %s/%s is still there after %v; retry",
				h.Describe(), r.pool.Name(), r.rec.Image, timeout)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func watchedBy(ws []Watcher, addr string) bool {
	for _, w := range ws {
		if sameClient(w.Addr, addr) {
			return true
		}
	}
	return false
}
