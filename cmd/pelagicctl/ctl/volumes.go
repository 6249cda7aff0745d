package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// volumesReport lists the Pelagic volumes of a pool, from the journal.
type volumesReport struct {
	Pool    string       `json:"pool"`
	Volumes []volumeLine `json:"volumes"`
}

type volumeLine struct {
	VolumeID  string     `json:"volumeID"`
	Image     string     `json:"image"`
	SizeBytes int64      `json:"sizeBytes"`
	Owner     *rbd.Owner `json:"owner,omitempty"`
	Watchers  int        `json:"watchers"`
	Attached  []string   `json:"attached"` // nodes
	Fences    int        `json:"fences"`   // in force
	Problem   string     `json:"problem,omitempty"`
}

func runVolumes(ctx context.Context, s *session, tgt target, _ []string) (report, error) {
	pool, err := s.openPool(ctx, tgt)
	if err != nil {
		return nil, err
	}
	r := &volumesReport{Pool: pool.Name(), Volumes: []volumeLine{}}
	err = s.forEachVolume(ctx, pool, func(rec *journal.Record, id string) {
		r.Volumes = append(r.Volumes, describeVolume(ctx, pool, rec, id, s.now))
	})
	if err != nil {
		return nil, err
	}
	return r, nil
}

// describeVolume reads one volume's records. A volume that cannot be read
// is listed with the problem, so one bad image does not hide the others.
func describeVolume(ctx context.Context, pool rbd.Pool, rec *journal.Record, id string, now time.Time) volumeLine {
	l := volumeLine{VolumeID: id, Image: rec.Backing, SizeBytes: rec.SizeBytes, Attached: []string{}}
	owner, err := rbd.ReadOwner(ctx, pool, rec.Backing)
	if err == nil {
		l.Owner = owner
		var u *rbd.Usage
		if u, err = rbd.ReadUsage(ctx, pool, rec.Backing); err == nil {
			l.Watchers = len(u.Watchers)
			for n := range u.Attachments {
				l.Attached = append(l.Attached, n)
			}
			sort.Strings(l.Attached)
			for _, f := range u.Fences {
				if f.Expires.After(now) {
					l.Fences++
				}
			}
		}
	}
	switch {
	case errors.Is(err, rbd.ErrImageNotFound):
		l.Problem = "no image: reserved but not created, or being deleted"
	case err != nil:
		l.Problem = err.Error()
	}
	return l
}

func (r *volumesReport) writeText(w io.Writer, _ time.Time) {
	if len(r.Volumes) == 0 {
		fmt.Fprintf(w, "no Pelagic volumes in pool %s\n", r.Pool)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "IMAGE\tPVC\tPV\tSIZE\tIN USE\tWATCHERS\tATTACHED\tFENCES")
	for _, v := range r.Volumes {
		if v.Problem != "" {
			fmt.Fprintf(tw, "%s\t%s\n", v.Image, v.Problem)
			continue
		}
		pvc, pv := "-", "-"
		if v.Owner != nil && v.Owner.PVC != "" {
			pvc, pv = v.Owner.Namespace+"/"+v.Owner.PVC, orDash(v.Owner.PV)
		}
		inUse := "no"
		if v.Watchers > 0 {
			inUse = "yes"
		}
		attached := "-"
		if len(v.Attached) > 0 {
			attached = strings.Join(v.Attached, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\n", v.Image, pvc, pv, humanBytes(v.SizeBytes), inUse, v.Watchers,
			attached, v.Fences)
	}
}
