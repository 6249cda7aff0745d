package rbd

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Image metadata keys through which controller and nodes tell each other
// who uses an image. pelagicctl reads the same keys.
const (
	metaAttachPrefix = "pelagic.csi/attach." // + node ID: the CO published the volume there
	metaMapPrefix    = "pelagic.csi/map."    // + node ID: that node mapped it, as this client
	metaFencePrefix  = "pelagic.csi/fence."  // + client address: fenced, and why
)

// Attachment is a ControllerPublishVolume the CO has not undone.
type Attachment struct {
	Node     string    `json:"node"`
	Mode     string    `json:"mode"`
	ReadOnly bool      `json:"readOnly,omitempty"`
	Since    time.Time `json:"since"`
}

// NodeMapping is a node's mapping of the image: which Ceph client instance
// watches it, so a watcher can be matched to a node exactly.
type NodeMapping struct {
	Node       string    `json:"node"`
	ClientAddr string    `json:"clientAddr"`
	ClientID   string    `json:"clientID,omitempty"`
	Mapper     string    `json:"mapper,omitempty"`
	Since      time.Time `json:"since"`
}

// Fence records a blocklisted client instance.
type Fence struct {
	Node       string    `json:"node"`
	ClientAddr string    `json:"clientAddr"`
	ClientID   string    `json:"clientID,omitempty"`
	At         time.Time `json:"at"`
	Expires    time.Time `json:"expires"`
	Reason     string    `json:"reason"`
}

// Usage is everything the image metadata and watch list say about who
// uses an image.
type Usage struct {
	Attachments map[string]Attachment // by node
	Mappings    map[string]NodeMapping
	Fences      map[string]Fence // by client address
	Watchers    []Watcher
}

// readUsage loads the metadata and watchers of image. Watchers whose
// address is in ignore (the controller's own transient opens) are dropped.
func readUsage(ctx context.Context, pool Pool, image string, ignore ...string) (*Usage, error) {
	meta, err := pool.Metadata(ctx, image)
	if err != nil {
		return nil, err
	}
	watchers, err := pool.Watchers(ctx, image)
	if err != nil {
		return nil, err
	}
	u := &Usage{Attachments: map[string]Attachment{}, Mappings: map[string]NodeMapping{}, Fences: map[string]Fence{}}
	for k, v := range meta {
		switch {
		case strings.HasPrefix(k, metaAttachPrefix):
			var a Attachment
			if json.Unmarshal([]byte(v), &a) == nil {
				u.Attachments[a.Node] = a
			}
		case strings.HasPrefix(k, metaMapPrefix):
			var m NodeMapping
			if json.Unmarshal([]byte(v), &m) == nil {
				u.Mappings[m.Node] = m
			}
		case strings.HasPrefix(k, metaFencePrefix):
			var f Fence
			if json.Unmarshal([]byte(v), &f) == nil {
				u.Fences[f.ClientAddr] = f
			}
		}
	}
	for _, w := range watchers {
		if !containsAddr(ignore, w.Addr) {
			u.Watchers = append(u.Watchers, w)
		}
	}
	return u, nil
}

// sameClient compares client instance addresses, which librbd and sysfs
// spell with or without a "v1:"/"v2:" prefix.
func sameClient(a, b string) bool {
	trim := func(s string) string { return strings.TrimPrefix(strings.TrimPrefix(s, "v1:"), "v2:") }
	return a != "" && trim(a) == trim(b)
}

func containsAddr(list []string, addr string) bool {
	for _, a := range list {
		if sameClient(a, addr) {
			return true
		}
	}
	return false
}

// HolderState classifies another user of an image, seen from one node.
type HolderState int

// Holder states.
const (
	HolderSameNode HolderState = iota // the node asking holds it itself
	HolderAttached                    // another node, with a current attachment
	HolderStale                       // another node whose attachment the CO has removed
	HolderUnknown                     // a watcher no node recorded: someone mapped it by hand
)

func (s HolderState) String() string {
	return [...]string{"same node", "attached", "stale", "unknown"}[s]
}

// Holder is one user of an image: an attachment, a watcher, or both.
type Holder struct {
	State      HolderState
	Node       string
	Attachment *Attachment
	Mapping    *NodeMapping
	Watcher    *Watcher
}

// Describe names the holder the way an operator needs it: node, client,
// address and since when.
func (h Holder) Describe() string {
	var parts []string
	if h.Node != "" {
		parts = append(parts, "node "+h.Node)
	} else {
		parts = append(parts, "a client no node recorded")
	}
	if h.Watcher != nil {
		parts = append(parts, fmt.Sprintf("client.%d at %s", h.Watcher.ID, h.Watcher.Addr))
	} else if h.Mapping != nil {
		parts = append(parts, fmt.Sprintf("%s at %s", h.Mapping.ClientID, h.Mapping.ClientAddr))
	}
	switch {
	case h.Attachment != nil:
		parts = append(parts, "attached since "+h.Attachment.Since.Format(time.RFC3339))
	case h.Mapping != nil:
		parts = append(parts, "mapped since "+h.Mapping.Since.Format(time.RFC3339))
	}
	return strings.Join(parts, ", ")
}

// Holders lists who uses the image other than through node (which may be
// ""), sorted by node for stable messages.
func (u *Usage) Holders(node string) []Holder {
	var out []Holder
	seen := map[string]bool{}
	for i := range u.Watchers {
		w := &u.Watchers[i]
		h := Holder{State: HolderUnknown, Watcher: w}
		for _, m := range u.Mappings {
			if sameClient(m.ClientAddr, w.Addr) {
				m := m
				h.Node, h.Mapping = m.Node, &m
			}
		}
		if h.Node != "" {
			seen[h.Node] = true
			if a, ok := u.Attachments[h.Node]; ok {
				h.Attachment = &a
			}
			switch {
			case h.Node == node:
				h.State = HolderSameNode
			case h.Attachment != nil:
				h.State = HolderAttached
			default:
				h.State = HolderStale
			}
		}
		out = append(out, h)
	}
	for n, a := range u.Attachments {
		if seen[n] {
			continue
		}
		a := a
		h := Holder{State: HolderAttached, Node: n, Attachment: &a}
		if n == node {
			h.State = HolderSameNode
		}
		if m, ok := u.Mappings[n]; ok {
			h.Mapping = &m
		}
		out = append(out, h)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Action is what to do about one holder before attaching.
type Action int

// Actions.
const (
	Allow   Action = iota // no conflict
	Refuse                // FailedPrecondition, naming the holder
	FenceIt               // blocklist the holder's client instance, then allow
)

func (a Action) String() string { return [...]string{"allow", "refuse", "fence"}[a] }

// singleNode reports whether an access mode lets only one node use the volume.
func singleNode(mode csi.VolumeCapability_AccessMode_Mode) bool {
	switch mode {
	case csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:
		return false
	}
	return true
}

// Decide is the whole attach policy for one holder of the image, when a
// node asks for it in a single-node (requestSingle) or multi-node mode:
//   - a holder on the asking node never conflicts;
//   - a stale holder (a node still mapping the image after the CO removed
//     its attachment) is fenced: the CO has decided that node is gone;
//   - a client no node recorded is refused for single-node modes;
//   - a current attachment is refused when either side is single-node, and
//     is never fenced.
func Decide(requestSingle bool, h Holder) Action {
	switch h.State {
	case HolderSameNode:
		return Allow
	case HolderStale:
		return FenceIt
	case HolderUnknown:
		if requestSingle {
			return Refuse
		}
		return Allow
	}
	holderSingle := h.Attachment == nil || singleNode(csi.VolumeCapability_AccessMode_Mode(
		csi.VolumeCapability_AccessMode_Mode_value[h.Attachment.Mode]))
	if requestSingle || holderSingle {
		return Refuse
	}
	return Allow
}
