package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// fenceListReport lists the fences recorded on a pool's images.
type fenceListReport struct {
	Pool   string      `json:"pool,omitempty"` // when one pool was listed
	Fences []fenceLine `json:"fences"`
	// Errors name images whose records could not be read; the rest are listed.
	Errors []string `json:"errors,omitempty"`
}

type fenceLine struct {
	VolumeID string `json:"volumeID"`
	Pool     string `json:"pool"`
	Image    string `json:"image"`
	fenceReport
}

func runFenceList(ctx context.Context, s *session, args []string) (report, error) {
	poolName := firstArg(args)
	if s.ref != nil {
		img, err := s.openImage(ctx, s.ref)
		if err != nil {
			return nil, err
		}
		poolName = img.pool.Name()
	}
	pools, err := s.pools(ctx, poolName)
	if err != nil {
		return nil, err
	}
	r := &fenceListReport{Fences: []fenceLine{}}
	for _, pool := range pools {
		if err := s.listFences(ctx, pool, r); err != nil {
			return nil, err
		}
	}
	if len(pools) == 1 {
		r.Pool = pools[0].Name()
	}
	sort.Slice(r.Fences, func(i, j int) bool {
		if !r.Fences[i].At.Equal(r.Fences[j].At) {
			return r.Fences[i].At.Before(r.Fences[j].At)
		}
		return r.Fences[i].Image+r.Fences[i].ClientAddr < r.Fences[j].Image+r.Fences[j].ClientAddr
	})
	return r, nil
}

func (s *session) listFences(ctx context.Context, pool rbd.Pool, r *fenceListReport) error {
	return s.forEachVolume(ctx, pool, func(rec *journal.Record, id string) {
		u, err := rbd.ReadUsage(ctx, pool, rec.Backing)
		if errors.Is(err, rbd.ErrImageNotFound) {
			return // a reservation whose image is not created yet, or gone: nothing fenced
		}
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("%s: %v", rec.Backing, err))
			return
		}
		for _, f := range u.Fences {
			r.Fences = append(r.Fences, fenceLine{VolumeID: id, Pool: pool.Name(), Image: rec.Backing,
				fenceReport: fenceReport{Fence: f, InForce: f.InForce(s.now)}})
		}
	})
}

func (r *fenceListReport) writeText(w io.Writer, _ time.Time) {
	if len(r.Fences) == 0 {
		fmt.Fprintln(w, "no fences recorded")
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "IMAGE\tNODE\tCLIENT\tADDR\tEXPIRES\tSTATE\tREASON")
		for _, f := range r.Fences {
			state := "in force"
			if !f.InForce {
				state = "expired"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shortImage(f.Image), orDash(f.Node), orDash(f.ClientID), f.ClientAddr,
				stamp(f.Expires), state, cut(f.Reason, 24))
		}
		tw.Flush()
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "unreadable: %s\n", e)
	}
}

// fenceLiftReport says what fence lift did.
type fenceLiftReport struct {
	VolumeID      string     `json:"volumeID,omitempty"`
	Image         string     `json:"image"`
	Addr          string     `json:"addr"`
	Fence         *rbd.Fence `json:"fence,omitempty"` // the record removed; nil when forced without one
	Unblocklisted bool       `json:"unblocklisted"`
	RecordRemoved bool       `json:"recordRemoved"`
}

// runFenceLift lifts the blocklist entry first and removes the record only
// after, so a failure leaves the record telling the truth.
func runFenceLift(ctx context.Context, s *session, args []string) (report, error) {
	addr := args[1]
	img, err := s.openImage(ctx, s.ref)
	if err != nil {
		return nil, err
	}
	v := &struct {
		pool  rbd.Pool
		image string
		id    string
	}{img.pool, img.name, img.id}
	u, err := rbd.ReadUsage(ctx, v.pool, v.image)
	if err != nil {
		return nil, err
	}
	var fence *rbd.Fence
	for a, f := range u.Fences {
		if ceph.SameClient(a, addr) {
			fence = &f
		}
	}
	force := s.opts.force
	if fence == nil && !force {
		return nil, fmt.Errorf("no fence of %s is recorded on %s/%s (see pelagicctl status); "+
			"pass --force to remove a blocklist entry anyway", addr, v.pool.Name(), v.image)
	}
	lift := addr
	if fence != nil {
		lift = fence.ClientAddr // exactly what the controller blocklisted
	}
	for _, w := range u.Watchers {
		if ceph.SameClient(w.Addr, lift) && !force {
			return nil, fmt.Errorf("%s still watches %s/%s: lifting its fence lets it write again; "+
				"wait for its watch to go, or pass --force", w, v.pool.Name(), v.image)
		}
	}
	if m, ok := u.MappingOf(lift); ok && !force {
		return nil, fmt.Errorf("node %s still holds a mapping of %s/%s through %s: lifting its fence lets it write again "+
			"once it is back; unstage it there (the controller then lifts the fence itself), or pass --force",
			m.Node, v.pool.Name(), v.image, lift)
	}
	if err := s.cluster.Unblocklist(ctx, lift); err != nil {
		return nil, fmt.Errorf("removing the blocklist entry of %s: %w", lift, err)
	}
	r := &fenceLiftReport{VolumeID: v.id, Image: v.pool.Name() + "/" + v.image, Addr: lift, Fence: fence, Unblocklisted: true}
	if fence != nil {
		if err := rbd.RemoveFenceRecord(ctx, v.pool, v.image, fence.ClientAddr); err != nil {
			return nil, fmt.Errorf("the blocklist entry of %s is gone but its fence record on %s stays: %w", lift, r.Image, err)
		}
		r.RecordRemoved = true
	}
	return r, nil
}

func (r *fenceLiftReport) writeText(w io.Writer, _ time.Time) {
	if r.Fence == nil {
		fmt.Fprintf(w, "removed the blocklist entry of %s (no fence record on %s)\n", r.Addr, r.Image)
		return
	}
	fmt.Fprintf(w, "lifted the fence on %s%s: blocklist entry and record on %s removed\n",
		clientName(*r.Fence), onNode(r.Fence.Node), r.Image)
}

// cut shortens s to n runes, marking the cut; the JSON output has it whole.
func cut(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
