package rbd

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// Usage is everything the image records and watch list say about who uses
// an image.
type Usage struct {
	*Records
	Watchers []Watcher
	// Controllers are the client instances of Pelagic controllers: their
	// watches are short opens (resize, snapshot, flatten), never a writer.
	Controllers []string
	// Now is when the usage was read; fences are judged at this time.
	Now time.Time
}

// readUsage loads the records and watchers of image. controllers are the
// client instances of Pelagic controllers, whose watches are their own.
func readUsage(ctx context.Context, pool Pool, image string, controllers ...string) (*Usage, error) {
	recs, err := readRecords(ctx, pool, image)
	if err != nil {
		return nil, err
	}
	watchers, err := pool.Watchers(ctx, image)
	if err != nil {
		return nil, err
	}
	return &Usage{Records: recs, Watchers: watchers, Controllers: controllers, Now: time.Now()}, nil
}

// unexplainedWatcher reports a watcher that no mapping or fence record
// names, and that is not a known controller's.
func (u *Usage) unexplainedWatcher() bool {
	for _, w := range u.Watchers {
		_, mapped := u.mappingOf(w.Addr)
		_, fenced := u.fenceOf(w.Addr)
		if !mapped && !fenced && !containsAddr(u.Controllers, w.Addr) {
			return true
		}
	}
	return false
}

func containsAddr(list []string, addr string) bool {
	for _, a := range list {
		if ceph.SameClient(a, addr) {
			return true
		}
	}
	return false
}

// HolderState classifies another user of an image, seen from one node.
type HolderState int

// Holder states.
const (
	HolderSameNode   HolderState = iota // the node asking holds it itself
	HolderAttached                      // another node, with a current attachment
	HolderStale                         // another node's mapping, whose attachment the CO has removed
	HolderUnknown                       // a watcher no record explains: someone mapped it by hand
	HolderFenced                        // a client instance whose fence is in force: it cannot write
	HolderController                    // a Pelagic controller's own short open
)

func (s HolderState) String() string {
	return [...]string{"same node", "attached", "stale", "unknown", "fenced", "controller"}[s]
}

// HolderObserver is told of each holder a call refused because of the
// volume's access mode (Multi-Attach: call is "publish" or "stage") and of
// each holder a publish fenced; the reason is the holder's state.
type HolderObserver interface {
	Refused(call, reason string)
	Fenced(reason string)
}

// Holder is one user of an image: an attachment, a mapping record, a
// watcher, or several of them.
type Holder struct {
	State      HolderState
	Node       string
	Attachment *Attachment
	Mapping    *NodeMapping
	Watcher    *Watcher
	Fence      *Fence // the fence of the holder's client instance, if one is recorded
}

// ClientAddr is the client instance through which the holder can write:
// the one its node recorded, else the watcher's.
func (h Holder) ClientAddr() string {
	if h.Mapping != nil && h.Mapping.ClientAddr != "" {
		return h.Mapping.ClientAddr
	}
	if h.Watcher != nil {
		return h.Watcher.Addr
	}
	return ""
}

// ClientID is the holder's client name, "client.4123", when known.
func (h Holder) ClientID() string {
	if h.Watcher != nil {
		return fmt.Sprintf("client.%d", h.Watcher.ID)
	}
	if h.Mapping != nil {
		return h.Mapping.ClientID
	}
	return ""
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
	if addr := h.ClientAddr(); addr != "" {
		parts = append(parts, strings.TrimSpace(h.ClientID()+" at "+addr))
	}
	switch {
	case h.Attachment != nil:
		parts = append(parts, "attached since "+h.Attachment.Since.Format(time.RFC3339))
	case h.Mapping != nil:
		parts = append(parts, "mapped since "+h.Mapping.Since.Format(time.RFC3339))
	}
	switch {
	case h.Mapping != nil && h.Mapping.ReadOnly:
		parts = append(parts, "read-only")
	case h.Mapping != nil && h.Watcher == nil:
		parts = append(parts, "its watch is gone but its mapping was never released")
	}
	return strings.Join(parts, ", ")
}

// Holders lists who uses the image other than through node (which may be
// ""), sorted by node for stable messages. A node's mapping record counts
// whether or not its watch is still visible: a partitioned node loses its
// watch after the OSD's watch timeout, long before it stops being able to
// write once it is back.
func (u *Usage) Holders(node string) []Holder {
	var out []Holder
	matched := make([]bool, len(u.Watchers))
	for n, m := range u.Mappings {
		m := m
		h := Holder{Node: n, Mapping: &m}
		for i := range u.Watchers {
			if ceph.SameClient(m.ClientAddr, u.Watchers[i].Addr) {
				h.Watcher, matched[i] = &u.Watchers[i], true
			}
		}
		if a, ok := u.Attachments[n]; ok {
			h.Attachment = &a
		}
		if f, ok := u.fenceOf(m.ClientAddr); ok {
			h.Fence = &f
		}
		h.State = u.nodeState(h, node)
		out = append(out, h)
	}
	for n, a := range u.Attachments {
		if _, mapped := u.Mappings[n]; mapped {
			continue
		}
		a := a
		h := Holder{Node: n, Attachment: &a}
		h.State = u.nodeState(h, node)
		out = append(out, h)
	}
	for i := range u.Watchers {
		if !matched[i] {
			out = append(out, u.watcherHolder(&u.Watchers[i]))
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// nodeState classifies a holder that is a node: its attachment decides
// before its fence, because the CO still counts a node it has attached.
func (u *Usage) nodeState(h Holder, asking string) HolderState {
	switch {
	case h.Node == asking:
		return HolderSameNode
	case h.Attachment != nil:
		return HolderAttached
	case h.Fence != nil && h.Fence.InForce(u.Now):
		return HolderFenced
	}
	return HolderStale
}

// watcherHolder classifies a watcher no mapping record names.
func (u *Usage) watcherHolder(w *Watcher) Holder {
	h := Holder{State: HolderUnknown, Watcher: w}
	if f, ok := u.fenceOf(w.Addr); ok {
		h.Fence = &f
		if f.InForce(u.Now) {
			h.State, h.Node = HolderFenced, f.Node
		}
	}
	if h.State == HolderUnknown && containsAddr(u.Controllers, w.Addr) {
		h.State = HolderController
	}
	return h
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
//   - a holder on the asking node, a fenced client and a controller's own
//     open never conflict;
//   - a stale holder (a node whose mapping record outlived its attachment)
//     is fenced, watch or no watch: the CO has decided that node is gone;
//     one whose record names no client instance cannot be, and is refused;
//   - a client no node recorded is refused for single-node modes;
//   - a current attachment is refused when either side is single-node, and
//     is never fenced.
func Decide(requestSingle bool, h Holder) Action {
	switch h.State {
	case HolderSameNode, HolderFenced, HolderController:
		return Allow
	case HolderStale:
		if h.ClientAddr() == "" {
			return Refuse
		}
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

// StageConflict is the node's side of the policy, for a single-node
// volume: a node maps it only when no other node can still write it. A node
// never fences; a stale holder is the controller's to fence at publish, so
// until then it blocks. Another node's attachment without a mapping has not
// written yet and is the controller's to judge.
func StageConflict(h Holder) bool {
	switch h.State {
	case HolderStale, HolderUnknown:
		return true
	case HolderAttached:
		return h.Mapping != nil
	}
	return false
}

func describeAll(hs []Holder) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = h.Describe()
	}
	return strings.Join(parts, "; ")
}

// observeRefused tells o, if any, of the holders call refused.
func observeRefused(o HolderObserver, call string, refused []Holder) {
	if o == nil {
		return
	}
	for _, h := range refused {
		o.Refused(call, h.State.String())
	}
}
