package rbd

import (
	"context"
	"strings"
	"testing"
)

// holderOn returns node's holder of the env's image, as pelagicctl judges it.
func (e *publishEnv) holderOn(t *testing.T, node string) Holder {
	t.Helper()
	u, err := ReadUsage(context.Background(), e.pool, e.image)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range u.Holders("") {
		if h.Node == node {
			return h
		}
	}
	t.Fatalf("no holder on %s", node)
	return Holder{}
}

// TestFenceHolder: an operator's fence goes through the controller's own
// path (recorded with the reason, blocklisted, completed); a holder whose
// attachment is current is fenced only with force.
func TestFenceHolder(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name            string
		attached, force bool
		wantFence       bool
	}{
		{name: "stale", wantFence: true},
		{name: "current", attached: true},
		{name: "current forced", attached: true, force: true, wantFence: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newPublishEnv(t)
			if err := e.publish(e.c, "node-a"); err != nil {
				t.Fatal(err)
			}
			e.mapOn(t, "node-a", addrA)
			if !tc.attached {
				e.unpublish(t, "node-a")
			}
			ops := NewController(ControllerOptions{})
			f, err := ops.FenceHolder(ctx, e.cluster, e.pool, e.image, e.holderOn(t, "node-a"), "pelagicctl: why", tc.force)
			if got := e.cluster.Blocklisted(addrA); got != tc.wantFence {
				t.Fatalf("blocklisted = %v, want %v (err %v)", got, tc.wantFence, err)
			}
			if !tc.wantFence {
				if err == nil || !strings.Contains(err.Error(), "nothing was fenced") {
					t.Fatalf("FenceHolder of a current holder = %v, want a refusal", err)
				}
				return
			}
			rec, ok := e.records(t).Fences[addrA]
			if err != nil || !ok || rec.Reason != "pelagicctl: why" || !rec.Done() || f.ClientAddr != addrA {
				t.Fatalf("FenceHolder = %+v, %v; record %+v", f, err, rec)
			}
		})
	}
}

// TestRemoveAttachmentRecord removes an attachment only while its node
// holds no mapping.
func TestRemoveAttachmentRecord(t *testing.T) {
	ctx := context.Background()
	e := newPublishEnv(t)
	if err := e.publish(e.c, "node-a"); err != nil {
		t.Fatal(err)
	}
	e.mapOn(t, "node-a", addrA)
	if removed, err := RemoveAttachmentRecord(ctx, e.pool, e.image, "node-a"); removed || err == nil {
		t.Fatalf("removed a mapped node's attachment: %v, %v", removed, err)
	}
	if err := e.pool.RemoveMetadata(ctx, e.image, metaMapPrefix+"node-a"); err != nil {
		t.Fatal(err)
	}
	if removed, err := RemoveAttachmentRecord(ctx, e.pool, e.image, "node-a"); !removed || err != nil {
		t.Fatalf("RemoveAttachmentRecord = %v, %v", removed, err)
	}
	if _, ok := e.records(t).Attachments["node-a"]; ok {
		t.Fatal("attachment still recorded")
	}
}
