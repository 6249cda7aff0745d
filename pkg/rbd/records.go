package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// Image metadata keys through which controllers and nodes tell each other
// who uses an image. pelagicctl reads the same keys. They change only
// through UpdateRecords, conditional on the header version they were read
// at, so two processes can never both act on the same old state.
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

// NodeMapping is a node's mapping of the image: the one Ceph client
// instance through which that node can write it. The node writes it before
// the mapped device is first written and removes it only after a clean
// unmap, so while it exists the node may still write.
type NodeMapping struct {
	Node       string `json:"node"`
	ClientAddr string `json:"clientAddr"`
	ClientID   string `json:"clientID,omitempty"`
	Mapper     string `json:"mapper,omitempty"`
	// ReadOnly mappings cannot write; krbd maps them without a watch.
	ReadOnly bool      `json:"readOnly,omitempty"`
	Since    time.Time `json:"since"`
}

// Fence states: the intent is recorded before the blocklist call and
// completed after it, so a controller that dies in between leaves a record
// the next publish finishes.
const (
	FencePending = "pending"
	FenceDone    = "done"
)

// Fence records a blocklisted client instance.
type Fence struct {
	Node       string    `json:"node"`
	ClientAddr string    `json:"clientAddr"`
	ClientID   string    `json:"clientID,omitempty"`
	At         time.Time `json:"at"`
	Expires    time.Time `json:"expires"`
	Reason     string    `json:"reason"`
	// State is FencePending or FenceDone; records written before states
	// existed have none and were written after the blocklist call.
	State   string    `json:"state,omitempty"`
	Renewed time.Time `json:"renewed,omitempty"`
}

// Done reports whether the blocklist call of the fence has succeeded.
func (f Fence) Done() bool { return f.State != FencePending }

// InForce reports whether the fence blocks its client at now: the
// blocklist entry was made and has not expired.
func (f Fence) InForce(now time.Time) bool { return f.Done() && f.Expires.After(now) }

// Records is what the image metadata says about who uses an image, read at
// one version of the image header.
type Records struct {
	Version     uint64
	Attachments map[string]Attachment  // by node
	Mappings    map[string]NodeMapping // by node
	Fences      map[string]Fence       // by client address
}

// parseRecords decodes the usage records among an image's metadata.
// Malformed values are skipped: they cannot name a holder.
func parseRecords(meta map[string]string, version uint64) *Records {
	r := &Records{Version: version, Attachments: map[string]Attachment{}, Mappings: map[string]NodeMapping{},
		Fences: map[string]Fence{}}
	for k, v := range meta {
		switch {
		case strings.HasPrefix(k, metaAttachPrefix):
			var a Attachment
			if json.Unmarshal([]byte(v), &a) == nil {
				r.Attachments[a.Node] = a
			}
		case strings.HasPrefix(k, metaMapPrefix):
			var m NodeMapping
			if json.Unmarshal([]byte(v), &m) == nil {
				r.Mappings[m.Node] = m
			}
		case strings.HasPrefix(k, metaFencePrefix):
			var f Fence
			if json.Unmarshal([]byte(v), &f) == nil {
				r.Fences[f.ClientAddr] = f
			}
		}
	}
	return r
}

// readRecords loads the records of image with the header version.
func readRecords(ctx context.Context, pool Pool, image string) (*Records, error) {
	meta, version, err := pool.Records(ctx, image)
	if err != nil {
		return nil, err
	}
	return parseRecords(meta, version), nil
}

// fenceOf returns the fence recorded for the client instance addr.
func (r *Records) fenceOf(addr string) (Fence, bool) {
	for a, f := range r.Fences {
		if ceph.SameClient(a, addr) {
			return f, true
		}
	}
	return Fence{}, false
}

// mappingOf returns the mapping record that names the client instance addr.
func (r *Records) mappingOf(addr string) (NodeMapping, bool) {
	for _, m := range r.Mappings {
		if ceph.SameClient(m.ClientAddr, addr) {
			return m, true
		}
	}
	return NodeMapping{}, false
}

// recordChange is one atomic update of an image's records.
type recordChange struct {
	set    map[string]string
	remove []string
}

func (c *recordChange) put(key string, v any) *recordChange {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain record structs are marshalled
	}
	if c.set == nil {
		c.set = map[string]string{}
	}
	c.set[key] = string(b)
	return c
}

func (c *recordChange) drop(key string) *recordChange {
	c.remove = append(c.remove, key)
	return c
}

func (c *recordChange) empty() bool { return len(c.set) == 0 && len(c.remove) == 0 }

// maxRecordAttempts bounds how often an update starts over because another
// process changed the records (or the header) first.
const maxRecordAttempts = 16

// updateRecords reads the records of image, lets decide compute a change,
// and writes it only if the header is still at the version read; when it
// is not, it reads again and decides again. decide may return an error to
// stop, or an empty change when nothing needs writing. It returns the
// records the change was applied to.
func updateRecords(ctx context.Context, pool Pool, image string, decide func(*Records) (*recordChange, error)) (*Records, error) {
	return updateReadRecords(ctx, pool, image, nil, decide)
}

// updateReadRecords is updateRecords starting from recs, the image's
// records as read a moment ago (nil: read them now): when nothing has
// changed since, the change takes one write; when the header has moved
// on, the write is refused and the records are read again.
func updateReadRecords(ctx context.Context, pool Pool, image string, recs *Records,
	decide func(*Records) (*recordChange, error)) (*Records, error) {
	for attempt := 1; ; attempt++ {
		if recs == nil {
			var err error
			if recs, err = readRecords(ctx, pool, image); err != nil {
				return nil, err
			}
		}
		change, err := decide(recs)
		if err != nil || change == nil || change.empty() {
			return recs, err
		}
		err = pool.UpdateRecords(ctx, image, recs.Version, change.set, change.remove)
		if !errors.Is(err, ErrConflict) {
			return recs, err
		}
		if attempt == maxRecordAttempts {
			return nil, fmt.Errorf("records of %s/%s kept changing under %d attempts: %w", pool.Name(), image, attempt, err)
		}
		recs = nil
	}
}
