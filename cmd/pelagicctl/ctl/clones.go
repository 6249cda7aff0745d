package ctl

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"
)

// Clone depths past which the controller flattens (its defaults,
// --soft-clone-depth and --hard-clone-depth).
const (
	softCloneDepth = 4
	hardCloneDepth = 8
	// maxTreeImages bounds the walk of a clone tree.
	maxTreeImages = 1000
)

// clonesReport is the clone tree the volume belongs to, from its root.
type clonesReport struct {
	VolumeID string      `json:"volumeID,omitempty"`
	Pool     string      `json:"pool"`
	Image    string      `json:"image"`
	Depth    int         `json:"depth"` // of the volume itself
	Tree     []cloneNode `json:"tree"`  // depth first, the root first
}

// cloneNode is one image of the tree. Parent is "pool/image@snap";
// Flatten says what the controller does about its depth.
type cloneNode struct {
	Pool    string `json:"pool"`
	Image   string `json:"image"`
	Depth   int    `json:"depth"`
	Parent  string `json:"parent,omitempty"`
	Trashed bool   `json:"trashed,omitempty"`
	Flatten string `json:"flatten"`
	Self    bool   `json:"self,omitempty"`
}

func runClones(ctx context.Context, s *session, _ []string) (report, error) {
	img, err := s.openImage(ctx, s.ref)
	if err != nil {
		return nil, err
	}
	root, depth, err := s.cloneRoot(ctx, ImageRef{Pool: img.pool.Name(), Image: img.name})
	if err != nil {
		return nil, err
	}
	r := &clonesReport{VolumeID: img.id, Pool: img.pool.Name(), Image: img.name, Depth: depth, Tree: []cloneNode{}}
	err = s.walkClones(ctx, root, 0, "", func(n cloneNode) {
		n.Self = n.Pool == r.Pool && n.Image == r.Image && !n.Trashed
		r.Tree = append(r.Tree, n)
	})
	return r, err
}

// cloneRoot follows the parents up to the image that has none.
func (s *session) cloneRoot(ctx context.Context, ref ImageRef) (ImageRef, int, error) {
	depth := 0
	for ; depth < maxTreeImages; depth++ {
		info, err := s.statRef(ctx, ref)
		if err != nil {
			return ref, depth, fmt.Errorf("%s/%s: %w", ref.Pool, ref.Image, err)
		}
		if info.Parent == nil {
			return ref, depth, nil
		}
		p := info.Parent
		ref = ImageRef{Pool: p.Pool, Image: p.Image, ID: p.ImageID, Trashed: p.Trashed}
	}
	return ref, depth, fmt.Errorf("the parents of %s/%s go deeper than %d", ref.Pool, ref.Image, maxTreeImages)
}

// walkClones visits ref and its clones, depth first.
func (s *session) walkClones(ctx context.Context, ref ImageRef, depth int, parent string, visit func(cloneNode)) error {
	if depth > maxTreeImages {
		return fmt.Errorf("the clone tree goes deeper than %d", maxTreeImages)
	}
	visit(cloneNode{Pool: ref.Pool, Image: ref.Image, Depth: depth, Parent: parent, Trashed: ref.Trashed,
		Flatten: flattenState(depth)})
	pool, err := s.openPool(ctx, ref.Pool)
	if err != nil {
		return err
	}
	cat, err := s.catalog(pool)
	if err != nil {
		return err
	}
	name := ref.Image
	kids, err := cat.Children(ctx, ref)
	if err != nil {
		return err
	}
	for _, k := range kids {
		snap := "?"
		if info, err := s.statRef(ctx, k); err == nil && info.Parent != nil {
			snap = info.Parent.Snap
		}
		if err := s.walkClones(ctx, k, depth+1, ref.Pool+"/"+name+"@"+snap, visit); err != nil {
			return err
		}
	}
	return nil
}

// flattenState says what the controller does about a clone at depth.
func flattenState(depth int) string {
	switch {
	case depth == 0:
		return "independent"
	case depth > hardCloneDepth:
		return fmt.Sprintf("over the hard depth %d: flattened before CreateVolume returns", hardCloneDepth)
	case depth > softCloneDepth:
		return fmt.Sprintf("over the soft depth %d: flattened in the background", softCloneDepth)
	}
	return "shares its parent's data"
}

func (r *clonesReport) writeText(w io.Writer, _ time.Time) {
	fmt.Fprintf(w, "clone tree of %s/%s (depth %d):\n", r.Pool, r.Image, r.Depth)
	for _, n := range r.Tree {
		line := strings.Repeat("  ", n.Depth) + n.Pool + "/" + n.Image
		if n.Trashed {
			line += " (trashed)"
		}
		line += fmt.Sprintf(": depth %d, %s", n.Depth, n.Flatten)
		if n.Self {
			line += "  <- this volume"
		}
		fmt.Fprintln(w, "  "+line)
	}
}
