package rbd

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

const (
	rwo  = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	rwop = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	rox  = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	rwx  = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
)

// TestDecideMatrix covers access mode x holder state x what is known of
// the holder (attachment, mapping record, live watch).
func TestDecideMatrix(t *testing.T) {
	attached := func(m csi.VolumeCapability_AccessMode_Mode) *Attachment {
		return &Attachment{Node: "a", Mode: m.String()}
	}
	mapped := &NodeMapping{Node: "a", ClientAddr: "10.0.0.2:0/1"}
	unaddressed := &NodeMapping{Node: "a"}
	watch := &Watcher{Addr: "10.0.0.2:0/1", ID: 41}
	tests := []struct {
		request    csi.VolumeCapability_AccessMode_Mode
		state      HolderState
		attachment *Attachment
		mapping    *NodeMapping
		watcher    *Watcher
		want       Action
	}{
		// The asking node itself never conflicts.
		{rwo, HolderSameNode, attached(rwo), mapped, watch, Allow},
		{rwo, HolderSameNode, nil, mapped, nil, Allow},
		{rox, HolderSameNode, attached(rwo), nil, nil, Allow},
		// A current attachment elsewhere: refused unless both sides share,
		// mapped or not, watched or not; never fenced.
		{rwo, HolderAttached, attached(rwo), mapped, watch, Refuse},
		{rwo, HolderAttached, attached(rwo), mapped, nil, Refuse},
		{rwo, HolderAttached, attached(rwo), nil, nil, Refuse},
		{rwop, HolderAttached, attached(rwo), mapped, watch, Refuse},
		{rwo, HolderAttached, attached(rox), mapped, watch, Refuse},
		{rox, HolderAttached, attached(rwo), mapped, watch, Refuse},
		{rox, HolderAttached, attached(rox), mapped, watch, Allow},
		{rwx, HolderAttached, attached(rwx), mapped, nil, Allow},
		{rwx, HolderAttached, attached(rox), nil, nil, Allow},
		// A stale holder (its mapping record outlived its attachment) is
		// fenced whether its watch is still visible or has timed out.
		{rwo, HolderStale, nil, mapped, watch, FenceIt},
		{rwo, HolderStale, nil, mapped, nil, FenceIt},
		{rwop, HolderStale, nil, mapped, nil, FenceIt},
		{rox, HolderStale, nil, mapped, watch, FenceIt},
		{rwx, HolderStale, nil, mapped, nil, FenceIt},
		// ... unless its record names no client instance: nothing to fence.
		{rwo, HolderStale, nil, unaddressed, nil, Refuse},
		{rox, HolderStale, nil, unaddressed, nil, Refuse},
		// A fenced client can no longer write, watch or no watch.
		{rwo, HolderFenced, nil, mapped, nil, Allow},
		{rwo, HolderFenced, nil, mapped, watch, Allow},
		{rwo, HolderFenced, nil, nil, watch, Allow},
		// A controller's own short open is not a holder.
		{rwo, HolderController, nil, nil, watch, Allow},
		{rwop, HolderController, nil, nil, watch, Allow},
		// A client no node recorded is never fenced: refused for single-node.
		{rwo, HolderUnknown, nil, nil, watch, Refuse},
		{rwop, HolderUnknown, nil, nil, watch, Refuse},
		{rox, HolderUnknown, nil, nil, watch, Allow},
		{rwx, HolderUnknown, nil, nil, watch, Allow},
	}
	for _, tc := range tests {
		name := fmt.Sprintf("%s/%s/attached=%v/mapped=%v/watched=%v", tc.request, tc.state,
			tc.attachment != nil, tc.mapping != nil && tc.mapping.ClientAddr != "", tc.watcher != nil)
		t.Run(name, func(t *testing.T) {
			h := Holder{State: tc.state, Node: "a", Attachment: tc.attachment, Mapping: tc.mapping, Watcher: tc.watcher}
			if got := Decide(singleNode(tc.request), h); got != tc.want {
				t.Errorf("Decide = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestNeverFenceCurrentHolder: whatever the request, a holder whose
// attachment is current is never fenced.
func TestNeverFenceCurrentHolder(t *testing.T) {
	for mode := range csi.VolumeCapability_AccessMode_Mode_name {
		for amode := range csi.VolumeCapability_AccessMode_Mode_name {
			m := csi.VolumeCapability_AccessMode_Mode(mode)
			h := Holder{State: HolderAttached, Node: "a", Mapping: &NodeMapping{Node: "a", ClientAddr: "10.0.0.2:0/1"},
				Attachment: &Attachment{Node: "a", Mode: csi.VolumeCapability_AccessMode_Mode(amode).String()}}
			if Decide(singleNode(m), h) == FenceIt {
				t.Fatalf("request %s fences a current %s holder", m, h.Attachment.Mode)
			}
		}
	}
}

// TestStageConflictMatrix is the node's side: it refuses whoever may still
// write, and leaves fencing to the controller.
func TestStageConflictMatrix(t *testing.T) {
	mapped := &NodeMapping{Node: "a", ClientAddr: "10.0.0.2:0/1"}
	tests := []struct {
		h    Holder
		want bool
	}{
		{Holder{State: HolderSameNode, Mapping: mapped}, false},
		{Holder{State: HolderAttached, Attachment: &Attachment{Node: "a"}, Mapping: mapped}, true},
		{Holder{State: HolderAttached, Attachment: &Attachment{Node: "a"}}, false}, // attached, never mapped
		{Holder{State: HolderStale, Mapping: mapped}, true},                        // its watch may be gone: still a writer
		{Holder{State: HolderUnknown, Watcher: &Watcher{Addr: "10.0.0.9:0/3"}}, true},
		{Holder{State: HolderFenced, Mapping: mapped}, false},
		{Holder{State: HolderController, Watcher: &Watcher{Addr: "10.0.0.1:0/1"}}, false},
	}
	for _, tc := range tests {
		if got := StageConflict(tc.h); got != tc.want {
			t.Errorf("StageConflict(%s, mapped=%v) = %v, want %v", tc.h.State, tc.h.Mapping != nil, got, tc.want)
		}
	}
}

// TestHoldersClassify matches mapping records, attachments, fences and
// watchers to holders by exact client instance.
func TestHoldersClassify(t *testing.T) {
	since := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	now := time.Now()
	u := &Usage{Now: now, Controllers: []string{"v2:10.0.0.1:0/77", "v1:10.0.0.1:0/77"}, Records: &Records{
		Attachments: map[string]Attachment{
			"node-a": {Node: "node-a", Mode: "SINGLE_NODE_WRITER", Since: since},
			"node-c": {Node: "node-c", Mode: "SINGLE_NODE_WRITER", Since: since},
			"node-e": {Node: "node-e", Mode: "SINGLE_NODE_WRITER", Since: since},
		},
		Mappings: map[string]NodeMapping{
			"node-a": {Node: "node-a", ClientAddr: "10.0.0.2:0/111", ClientID: "client.41"},
			"node-b": {Node: "node-b", ClientAddr: "10.0.0.3:0/222", ClientID: "client.42"},
			"node-x": {Node: "node-x", ClientAddr: "10.0.0.3:0/999"},                   // same IP, other instance, watch gone
			"node-f": {Node: "node-f", ClientAddr: "10.0.0.5:0/555"},                   // fenced
			"node-g": {Node: "node-g", ClientAddr: "10.0.0.6:0/666"},                   // fence expired
			"node-p": {Node: "node-p", ClientAddr: "10.0.0.7:0/777", Since: since},     // fence pending
			"node-e": {Node: "node-e", ClientAddr: "10.0.0.8:0/888", ClientID: "c.88"}, // attached, fenced by hand
			"node-r": {Node: "node-r", ClientAddr: "10.0.0.10:0/1", ReadOnly: true},    // krbd read-only: no watch
		},
		Fences: map[string]Fence{
			"10.0.0.5:0/555": {Node: "node-f", ClientAddr: "10.0.0.5:0/555", Expires: now.Add(time.Hour), State: FenceDone},
			"10.0.0.6:0/666": {Node: "node-g", ClientAddr: "10.0.0.6:0/666", Expires: now.Add(-time.Minute)},
			"10.0.0.7:0/777": {Node: "node-p", ClientAddr: "10.0.0.7:0/777", Expires: now.Add(time.Hour), State: FencePending},
			"10.0.0.8:0/888": {Node: "node-e", ClientAddr: "10.0.0.8:0/888", Expires: now.Add(time.Hour), State: FenceDone},
			"10.0.0.4:0/444": {Node: "node-h", ClientAddr: "10.0.0.4:0/444", Expires: now.Add(time.Hour), State: FenceDone},
		},
	},
		Watchers: []Watcher{
			{Addr: "10.0.0.2:0/111", ID: 41},
			{Addr: "v1:10.0.0.3:0/222", ID: 42},
			{Addr: "10.0.0.9:0/333", ID: 43},
			{Addr: "10.0.0.4:0/444", ID: 44}, // fenced, watch not yet dropped, record gone
			{Addr: "10.0.0.1:0/77", ID: 45},  // a controller's open
		},
	}
	got := map[string]HolderState{}
	for _, h := range u.Holders("node-c") {
		key := h.Node
		if h.Mapping == nil && h.Attachment == nil {
			key = h.Watcher.Addr
		}
		got[key] = h.State
	}
	want := map[string]HolderState{
		"node-a": HolderAttached, "node-b": HolderStale, "node-x": HolderStale, "node-c": HolderSameNode,
		"node-f": HolderFenced, "node-g": HolderStale, "node-p": HolderStale, "node-e": HolderAttached, "node-r": HolderStale,
		"10.0.0.9:0/333": HolderUnknown, "10.0.0.4:0/444": HolderFenced, "10.0.0.1:0/77": HolderController,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("holder %s = %s, want %s (all: %v)", k, got[k], v, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("holders = %v, want %v", got, want)
	}
	for _, h := range u.Holders("node-c") {
		switch h.Node {
		case "node-a":
			assertDescribes(t, h, "node node-a", "client.41", "10.0.0.2:0/111", "2026-11-22T01:00:00Z")
		case "node-r":
			assertDescribes(t, h, "node node-r", "read-only")
			if strings.Contains(h.Describe(), "watch is gone") {
				t.Errorf("a read-only mapping, which holds no watch, is described as a lost watch: %q", h.Describe())
			}
		case "node-x":
			assertDescribes(t, h, "node node-x", "10.0.0.3:0/999", "its watch is gone")
			if h.ClientAddr() != "10.0.0.3:0/999" || h.Watcher != nil {
				t.Errorf("node-x: client %q, watcher %v; want its recorded instance and no watcher", h.ClientAddr(), h.Watcher)
			}
		}
	}
}

func assertDescribes(t *testing.T, h Holder, parts ...string) {
	t.Helper()
	d := h.Describe()
	for _, part := range parts {
		if !strings.Contains(d, part) {
			t.Errorf("Describe() = %q, missing %q", d, part)
		}
	}
}
