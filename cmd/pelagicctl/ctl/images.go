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

// duReport is provisioned and used bytes per volume and per pool.
type duReport struct {
	Volumes []duLine `json:"volumes"`
	Pools   []duPool `json:"pools"`
	Errors  []string `json:"errors,omitempty"`
	Total   duTotals `json:"total"`
}

type duTotals struct {
	ProvisionedBytes int64 `json:"provisionedBytes"`
	UsedBytes        int64 `json:"usedBytes"`
}

type duLine struct {
	Pool     string `json:"pool"`
	Image    string `json:"image"`
	VolumeID string `json:"volumeID,omitempty"`
	PVC      string `json:"pvc,omitempty"` // namespace/name
	duTotals
}

type duPool struct {
	Pool           string `json:"pool"`
	Volumes        int    `json:"volumes"`
	AvailableBytes int64  `json:"availableBytes"`
	duTotals
}

func runDU(ctx context.Context, s *session, args []string) (report, error) {
	r := &duReport{Volumes: []duLine{}, Pools: []duPool{}}
	if s.ref != nil {
		img, err := s.openImage(ctx, s.ref)
		if err != nil {
			return nil, err
		}
		l, err := s.duOf(ctx, img.pool, img.name, img.id)
		if err != nil {
			return nil, err
		}
		r.Volumes = append(r.Volumes, l)
		r.Total = l.duTotals
		return r, nil
	}
	pools, err := s.pools(ctx, firstArg(args))
	if err != nil {
		return nil, err
	}
	for _, pool := range pools {
		p := duPool{Pool: pool.Name()}
		err := s.forEachVolume(ctx, pool, func(rec *journal.Record, id string) {
			l, err := s.duOf(ctx, pool, rec.Backing, id)
			if errors.Is(err, rbd.ErrImageNotFound) {
				return // reserved, not created: nothing provisioned
			}
			if err != nil {
				r.Errors = append(r.Errors, fmt.Sprintf("%s/%s: %v", pool.Name(), rec.Backing, err))
				return
			}
			r.Volumes = append(r.Volumes, l)
			p.Volumes++
			p.ProvisionedBytes += l.ProvisionedBytes
			p.UsedBytes += l.UsedBytes
		})
		if err != nil {
			return nil, err
		}
		if avail, err := s.cluster.AvailableBytes(ctx, pool.Name()); err == nil {
			p.AvailableBytes = avail
		}
		r.Pools = append(r.Pools, p)
		r.Total.ProvisionedBytes += p.ProvisionedBytes
		r.Total.UsedBytes += p.UsedBytes
	}
	return r, nil
}

func firstArg(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

func (s *session) duOf(ctx context.Context, pool rbd.Pool, image, id string) (duLine, error) {
	l := duLine{Pool: pool.Name(), Image: image, VolumeID: id}
	info, err := pool.Stat(ctx, image)
	if err != nil {
		return l, err
	}
	cat, err := s.catalog(pool)
	if err != nil {
		return l, err
	}
	if l.UsedBytes, err = cat.UsedBytes(ctx, image); err != nil {
		return l, err
	}
	l.ProvisionedBytes = info.Size
	if o, err := rbd.ReadOwner(ctx, pool, image); err == nil && o != nil && o.PVC != "" {
		l.PVC = o.Namespace + "/" + o.PVC
	}
	return l, nil
}

func (r *duReport) writeText(w io.Writer, _ time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PROVISIONED\tUSED\t  VOLUME\t")
	for _, v := range r.Volumes {
		name := v.Pool + "/" + v.Image
		if v.PVC != "" {
			name += " (" + v.PVC + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t  %s\t\n", humanBytes(v.ProvisionedBytes), roundBytes(v.UsedBytes), name)
	}
	for _, p := range r.Pools {
		fmt.Fprintf(tw, "%s\t%s\t  pool %s: %d volumes, %s available\t\n", humanBytes(p.ProvisionedBytes), roundBytes(p.UsedBytes),
			p.Pool, p.Volumes, roundBytes(p.AvailableBytes))
	}
	fmt.Fprintf(tw, "%s\t%s\t  total\t\n", humanBytes(r.Total.ProvisionedBytes), roundBytes(r.Total.UsedBytes))
	tw.Flush()
	writeNotes(w, r.Errors, nil)
}

// trashReport lists trashed images and, for purge, what became of them.
type trashReport struct {
	Entries []trashLine `json:"entries"`
	Purge   bool        `json:"purge"`
}

type trashLine struct {
	Pool string `json:"pool"`
	TrashEntry
	// Pelagic tells an image Pelagic trashed (its name is a volume's).
	Pelagic bool `json:"pelagic"`
	// Outcome, for purge: "purged", "kept: ..." or "skipped: ...".
	Outcome string `json:"outcome,omitempty"`
}

func runTrashList(ctx context.Context, s *session, args []string) (report, error) {
	return s.trash(ctx, firstArg(args), false)
}

func runTrashPurge(ctx context.Context, s *session, args []string) (report, error) {
	return s.trash(ctx, firstArg(args), true)
}

// pelagicImage tells the names Pelagic gives images (csi-vol-UUID, or a
// class's volumeNamePrefix, which the journal records).
func pelagicImage(name string) bool { return strings.HasPrefix(name, "csi-") }

// trash lists (and purges) the trash. Purge removes only images Pelagic
// named, and only those nothing needs: librbd refuses the rest.
func (s *session) trash(ctx context.Context, poolName string, purge bool) (*trashReport, error) {
	pools, err := s.pools(ctx, poolName)
	if err != nil {
		return nil, err
	}
	r := &trashReport{Entries: []trashLine{}, Purge: purge}
	for _, pool := range pools {
		cat, err := s.catalog(pool)
		if err != nil {
			return nil, err
		}
		entries, err := cat.Trash(ctx)
		if err != nil {
			return nil, fmt.Errorf("pool %s: %w", pool.Name(), err)
		}
		for _, e := range entries {
			l := trashLine{Pool: pool.Name(), TrashEntry: e, Pelagic: pelagicImage(e.Name)}
			if purge {
				l.Outcome = purgeOne(ctx, cat, l)
			}
			r.Entries = append(r.Entries, l)
		}
	}
	return r, nil
}

func purgeOne(ctx context.Context, cat Catalog, l trashLine) string {
	if !l.Pelagic {
		return "skipped: not a Pelagic image"
	}
	err := cat.RemoveTrash(ctx, l.ID)
	switch {
	case err == nil:
		return "purged"
	case errors.Is(err, ErrStillNeeded):
		return "kept: its snapshots still have clones (see clones)"
	}
	return "kept: " + err.Error()
}

func (r *trashReport) writeText(w io.Writer, _ time.Time) {
	if len(r.Entries) == 0 {
		fmt.Fprintln(w, "the trash is empty")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	head := "POOL\tID\tNAME\tDELETED\tPELAGIC"
	if r.Purge {
		head += "\tOUTCOME"
	}
	fmt.Fprintln(tw, head)
	for _, e := range r.Entries {
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%t", e.Pool, e.ID, e.Name, stamp(e.Deleted), e.Pelagic)
		if r.Purge {
			line += "\t" + e.Outcome
		}
		fmt.Fprintln(tw, line)
	}
}

// snapshotsReport lists a volume's snapshots and the clones of each.
type snapshotsReport struct {
	VolumeID  string     `json:"volumeID,omitempty"`
	Pool      string     `json:"pool"`
	Image     string     `json:"image"`
	Snapshots []snapLine `json:"snapshots"`
}

type snapLine struct {
	SnapEntry
	// SnapshotID is the CSI snapshot ID when Pelagic's journal has one.
	SnapshotID string     `json:"snapshotID,omitempty"`
	Clones     []ImageRef `json:"clones"`
}

func runSnapshots(ctx context.Context, s *session, _ []string) (report, error) {
	img, err := s.openImage(ctx, s.ref)
	if err != nil {
		return nil, err
	}
	cat, err := s.catalog(img.pool)
	if err != nil {
		return nil, err
	}
	snaps, err := cat.Snapshots(ctx, img.name)
	if err != nil {
		return nil, err
	}
	kids, err := s.childrenBySnap(ctx, img, cat)
	if err != nil {
		return nil, err
	}
	ids := s.snapshotIDs(ctx, img)
	r := &snapshotsReport{VolumeID: img.id, Pool: img.pool.Name(), Image: img.name, Snapshots: []snapLine{}}
	for _, sn := range snaps {
		l := snapLine{SnapEntry: sn, SnapshotID: ids[sn.Name], Clones: kids[sn.Name]}
		if l.Clones == nil {
			l.Clones = []ImageRef{}
		}
		r.Snapshots = append(r.Snapshots, l)
	}
	sort.Slice(r.Snapshots, func(i, j int) bool { return r.Snapshots[i].ID < r.Snapshots[j].ID })
	return r, nil
}

// childrenBySnap groups the image's clones by the snapshot they come from.
func (s *session) childrenBySnap(ctx context.Context, img *image, cat Catalog) (map[string][]ImageRef, error) {
	kids, err := cat.Children(ctx, ImageRef{Pool: img.pool.Name(), Image: img.name})
	if err != nil {
		return nil, err
	}
	out := map[string][]ImageRef{}
	for _, k := range kids {
		snap := "?"
		if info, err := s.statRef(ctx, k); err == nil && info.Parent != nil {
			snap = info.Parent.Snap
		}
		out[snap] = append(out[snap], k)
	}
	return out, nil
}

// statRef stats an image that may live in another pool or the trash.
func (s *session) statRef(ctx context.Context, ref ImageRef) (rbd.ImageInfo, error) {
	pool, err := s.openPool(ctx, ref.Pool)
	if err != nil {
		return rbd.ImageInfo{}, err
	}
	if ref.Trashed && ref.ID != "" {
		return pool.StatByID(ctx, ref.ID)
	}
	return pool.Stat(ctx, ref.Image)
}

// snapshotIDs maps the image's snapshot names to CSI snapshot IDs, from
// the journal.
func (s *session) snapshotIDs(ctx context.Context, img *image) map[string]string {
	out := map[string]string{}
	_ = journal.ForEach(ctx, img.pool, journal.Snapshot, 256, func(rec *journal.Record) {
		if rec.Backing == img.name && rec.SnapName != "" {
			out[rec.SnapName] = s.idOf(img.pool, rec)
		}
	})
	return out
}

func (r *snapshotsReport) writeText(w io.Writer, _ time.Time) {
	fmt.Fprintf(w, "snapshots of %s/%s:\n", r.Pool, r.Image)
	if len(r.Snapshots) == 0 {
		fmt.Fprintln(w, "  (none)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "  ID\tNAME\tSIZE\tCREATED\tCLONES")
	for _, sn := range r.Snapshots {
		var kids []string
		for _, k := range sn.Clones {
			kids = append(kids, shortImage(k.Image))
		}
		name := sn.Name
		if sn.Namespace == "trash" {
			name += " (trashed)"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\n", sn.ID, name, humanBytes(sn.SizeBytes), stamp(sn.Created),
			orDash(strings.Join(kids, ", ")))
	}
}
