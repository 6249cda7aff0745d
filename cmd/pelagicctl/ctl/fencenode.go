package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"sort"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// fenceActionReport says what fence CLIENT|NODE did, holder by holder.
type fenceActionReport struct {
	Target  string        `json:"target"` // the client instance or node asked for
	Holders []fenceAction `json:"holders"`
}

// fenceAction is one holder: Outcome is "fenced" or "already fenced".
type fenceAction struct {
	VolumeID string     `json:"volumeID,omitempty"`
	Pool     string     `json:"pool"`
	Image    string     `json:"image"`
	Node     string     `json:"node,omitempty"`
	Client   string     `json:"client,omitempty"`
	Addr     string     `json:"addr"`
	Outcome  string     `json:"outcome"`
	Fence    *rbd.Fence `json:"fence,omitempty"`
}

// heldImage is a holder found on an image.
type heldImage struct {
	pool   rbd.Pool
	image  string
	id     string
	holder rbd.Holder
}

// isClientAddr tells a client instance (IP:PORT/NONCE) from a node ID.
func isClientAddr(s string) bool {
	return strings.Contains(s, "/") && strings.Contains(s, ":") && len(ceph.PlainAddrs(s)) > 0
}

func runFence(ctx context.Context, s *session, args []string) (report, error) {
	target := args[0]
	held, err := s.findHolders(ctx, target)
	if err != nil {
		return nil, err
	}
	if len(held) == 0 {
		what := "no mapping record names node " + target
		if isClientAddr(target) {
			what = "no image in these pools is held by " + target
		}
		return nil, fmt.Errorf("%s: nothing to fence (see %s ls, or pass --pool)", what, s.tool.name())
	}
	if err := s.refuseCurrent(held); err != nil {
		return nil, err
	}
	r := &fenceActionReport{Target: target, Holders: []fenceAction{}}
	ops := rbd.NewController(rbd.ControllerOptions{FenceExpiry: s.opts.expiry})
	reason := s.fenceReason("fence "+target, "no reason given")
	for _, h := range held {
		a := fenceAction{VolumeID: h.id, Pool: h.pool.Name(), Image: h.image, Node: h.holder.Node,
			Client: h.holder.ClientID(), Addr: h.holder.ClientAddr()}
		if h.holder.State == rbd.HolderFenced {
			a.Outcome, a.Fence = "already fenced", h.holder.Fence
			r.Holders = append(r.Holders, a)
			continue
		}
		f, err := ops.FenceHolder(ctx, s.cluster, h.pool, h.image, h.holder, reason, s.opts.force)
		if err != nil {
			return r, fmt.Errorf("fencing %s on %s/%s: %w", h.holder.Describe(), h.pool.Name(), h.image, err)
		}
		a.Outcome, a.Fence = "fenced", &f
		r.Holders = append(r.Holders, a)
	}
	return r, nil
}

// findHolders finds, in every pool, the holders target names: the client
// instance, or the instances recorded for the node.
func (s *session) findHolders(ctx context.Context, target string) ([]heldImage, error) {
	pools, err := s.pools(ctx, "")
	if err != nil {
		return nil, err
	}
	client := isClientAddr(target)
	var out []heldImage
	var errs []string
	for _, pool := range pools {
		err := s.forEachVolume(ctx, pool, func(rec *journal.Record, id string) {
			u, err := rbd.ReadUsage(ctx, pool, rec.Backing)
			if errors.Is(err, rbd.ErrImageNotFound) {
				return
			}
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s/%s: %v", pool.Name(), rec.Backing, err))
				return
			}
			u.Now = s.now
			for _, h := range u.Holders("") {
				match := h.Node == target && h.Mapping != nil
				if client {
					match = ceph.SameClient(h.ClientAddr(), target)
				}
				if match {
					out = append(out, heldImage{pool: pool, image: rec.Backing, id: id, holder: h})
				}
			}
		})
		if err != nil {
			return nil, err
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("cannot tell who holds every image, nothing fenced: %s", strings.Join(errs, "; "))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].pool.Name()+out[i].image < out[j].pool.Name()+out[j].image })
	return out, nil
}

// refuseCurrent refuses, before anything is fenced, holders only --force
// may fence: an attachment the CO still counts, a client no node recorded,
// a controller's own open.
func (s *session) refuseCurrent(held []heldImage) error {
	if s.opts.force {
		return nil
	}
	var why []string
	for _, h := range held {
		switch h.holder.State {
		case rbd.HolderAttached:
			why = append(why, fmt.Sprintf("%s/%s: %s — its attachment is current; unpublish it first "+
				"(delete the pod or drain the node), or pass --force if the node is provably down",
				h.pool.Name(), h.image, h.holder.Describe()))
		case rbd.HolderUnknown:
			why = append(why, fmt.Sprintf("%s/%s: %s — no node recorded it (an rbd map by hand?): unmap it there, or --force",
				h.pool.Name(), h.image, h.holder.Describe()))
		case rbd.HolderController:
			why = append(why, fmt.Sprintf("%s/%s: %s is a Pelagic controller's own open", h.pool.Name(), h.image,
				h.holder.Describe()))
		}
	}
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("refusing to fence, nothing fenced:\n  %s", strings.Join(why, "\n  "))
}

// fenceReason records who asked for a fence, from where, and why: --reason,
// else the given why.
func (s *session) fenceReason(what, why string) string {
	who := "unknown"
	if u, err := user.Current(); err == nil {
		who = u.Username
	}
	host, _ := os.Hostname()
	if s.opts.reason != "" {
		why = s.opts.reason
	}
	return fmt.Sprintf("pelagicctl %s (by %s@%s): %s", what, who, host, why)
}

func (r *fenceActionReport) writeText(w io.Writer, _ time.Time) {
	for _, a := range r.Holders {
		until := ""
		if a.Fence != nil {
			until = " until " + stamp(a.Fence.Expires)
		}
		fmt.Fprintf(w, "%s %s at %s%s on %s/%s%s\n", a.Outcome, orDash(a.Client), a.Addr, onNode(a.Node), a.Pool, a.Image, until)
	}
}
