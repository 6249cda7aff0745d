package rbd

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TestDecideMatrix covers access mode x holder state x attachment state.
func TestDecideMatrix(t *testing.T) {
	const (
		rwo  = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
		rwop = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
		rox  = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		rwx  = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	)
	attached := func(m csi.VolumeCapability_AccessMode_Mode) *Attachment {
		return &Attachment{Node: "a", Mode: m.String()}
	}
	tests := []struct {
		request    csi.VolumeCapability_AccessMode_Mode
		state      HolderState
		attachment *Attachment
		want       Action
	}{
		// The asking node itself never conflicts.
		{rwo, HolderSameNode, attached(rwo), Allow},
		{rwo, HolderSameNode, nil, Allow},
		{rox, HolderSameNode, attached(rwo), Allow},
		// A current attachment elsewhere: refused unless both sides share.
		{rwo, HolderAttached, attached(rwo), Refuse},
		{rwop, HolderAttached, attached(rwo), Refuse},
		{rwo, HolderAttached, attached(rox), Refuse},
		{rox, HolderAttached, attached(rwo), Refuse},
		{rox, HolderAttached, attached(rox), Allow},
		{rwx, HolderAttached, attached(rwx), Allow},
		{rwx, HolderAttached, attached(rox), Allow},
		// A stale holder (its attachment is gone, its watch is not) is fenced.
		{rwo, HolderStale, nil, FenceIt},
		{rwop, HolderStale, nil, FenceIt},
		{rox, HolderStale, nil, FenceIt},
		{rwx, HolderStale, nil, FenceIt},
		// A client no node recorded is never fenced: refused for single-node.
		{rwo, HolderUnknown, nil, Refuse},
		{rwop, HolderUnknown, nil, Refuse},
		{rox, HolderUnknown, nil, Allow},
		{rwx, HolderUnknown, nil, Allow},
	}
	for _, tc := range tests {
		name := fmt.Sprintf("%s/%s/attached=%v", tc.request, tc.state, tc.attachment != nil)
		t.Run(name, func(t *testing.T) {
			h := Holder{State: tc.state, Node: "a", Attachment: tc.attachment}
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
			h := Holder{State: HolderAttached, Node: "a",
				Attachment: &Attachment{Node: "a", Mode: csi.VolumeCapability_AccessMode_Mode(amode).String()}}
			if Decide(singleNode(m), h) == FenceIt {
				t.Fatalf("request %s fences a current %s holder", m, h.Attachment.Mode)
			}
		}
	}
}

// TestHoldersClassify matches watchers to nodes by exact client instance.
func TestHoldersClassify(t *testing.T) {
	since := time.Date(2026, 11, 22, 1, 0, 0, 0, time.UTC)
	u := &Usage{
		Attachments: map[string]Attachment{
			"node-a": {Node: "node-a", Mode: "SINGLE_NODE_WRITER", Since: since},
			"node-c": {Node: "node-c", Mode: "SINGLE_NODE_WRITER", Since: since},
		},
		Mappings: map[string]NodeMapping{
			"node-a": {Node: "node-a", ClientAddr: "10.0.0.2:0/111", ClientID: "client.41"},
			"node-b": {Node: "node-b", ClientAddr: "10.0.0.3:0/222", ClientID: "client.42"},
			"node-x": {Node: "node-x", ClientAddr: "10.0.0.3:0/999"}, // same IP, other instance
		},
		Watchers: []Watcher{
			{Addr: "10.0.0.2:0/111", ID: 41},
			{Addr: "v1:10.0.0.3:0/222", ID: 42},
			{Addr: "10.0.0.9:0/333", ID: 43},
		},
	}
	got := map[string]HolderState{}
	for _, h := range u.Holders("node-c") {
		key := h.Node
		if key == "" {
			key = h.Watcher.Addr
		}
		got[key] = h.State
	}
	want := map[string]HolderState{
		"node-a": HolderAttached, "node-b": HolderStale, "10.0.0.9:0/333": HolderUnknown, "node-c": HolderSameNode,
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
		if h.Node == "node-a" {
			d := h.Describe()
			for _, part := range []string{"node node-a", "client.41", "10.0.0.2:0/111", "2026-11-22T01:00:00Z"} {
				if !strings.Contains(d, part) {
					t.Errorf("Describe() = %q, missing %q", d, part)
				}
			}
		}
	}
}
