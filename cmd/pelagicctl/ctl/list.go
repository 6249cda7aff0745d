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

	corev1 "k8s.io/api/core/v1"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/volumeid"
)

// originOf names the provisioner of a journaled volume, for the ORIGIN column.
func originOf(rec *journal.Record) string {
	if rec.FromCephCSI() {
		return "ceph-csi"
	}
	return "pelagic"
}

// listReport is every volume, with the orphans when asked.
type listReport struct {
	Volumes []listLine `json:"volumes"`
	// Orphans are set with --orphans: images and journal entries no PV
	// names, and PVs whose image is gone.
	Orphans    []orphanLine `json:"orphans,omitempty"`
	Errors     []string     `json:"errors,omitempty"`
	Unresolved []string     `json:"unresolved,omitempty"`
}

type listLine struct {
	VolumeID  string   `json:"volumeID"`
	Pool      string   `json:"pool"`
	Image     string   `json:"image"`
	Origin    string   `json:"origin"`
	Namespace string   `json:"namespace,omitempty"` // of the PVC
	PVC       string   `json:"pvc,omitempty"`
	PV        string   `json:"pv,omitempty"`
	SizeBytes int64    `json:"sizeBytes"`
	UsedBytes int64    `json:"usedBytes"`
	Attached  []string `json:"attached"` // nodes, from the attachment records
	Mapped    []string `json:"mapped"`   // nodes, from the mapping records
	Verdict   verdict  `json:"verdict"`
	Problem   string   `json:"problem,omitempty"`
	problem   error
}

// orphanLine is half a volume: Kind is "image" (no journal entry and no
// PV), "journal" (an entry whose image is gone), "no-pv" (a volume no PV
// names) or "pv" (a PV whose volume is gone).
type orphanLine struct {
	Kind     string `json:"kind"`
	Pool     string `json:"pool,omitempty"`
	Image    string `json:"image,omitempty"`
	VolumeID string `json:"volumeID,omitempty"`
	PV       string `json:"pv,omitempty"`
	Why      string `json:"why"`
}

func runList(ctx context.Context, s *session, _ []string) (report, error) {
	return s.list(ctx, "")
}

// runVolumes is ls --pool POOL, kept for scripts written against it.
func runVolumes(ctx context.Context, s *session, args []string) (report, error) {
	return s.list(ctx, args[0])
}

func (s *session) list(ctx context.Context, poolName string) (*listReport, error) {
	pools, err := s.pools(ctx, poolName)
	if err != nil {
		return nil, err
	}
	r := &listReport{Volumes: []listLine{}}
	pvs := s.csiPVs(ctx, r)
	seen := map[string]bool{} // volume IDs with a journal entry
	for _, pool := range pools {
		cat, err := s.catalog(pool)
		if err != nil {
			return nil, err
		}
		journaled := map[string]bool{}
		err = s.forEachVolume(ctx, pool, func(rec *journal.Record, id string) {
			seen[id], journaled[rec.Backing] = true, true
			l := s.describeVolume(ctx, pool, cat, rec.Backing, id, pvs[id])
			l.Origin = originOf(rec)
			if l.Problem != "" && errors.Is(l.problem, rbd.ErrImageNotFound) {
				if s.opts.orphans {
					r.Orphans = append(r.Orphans, orphanLine{Kind: "journal", Pool: pool.Name(), Image: rec.Backing,
						VolumeID: id, Why: "journal entry without its image: reserved but never created, or a delete that stopped half way"})
				}
				return
			}
			if s.keep(l) {
				r.Volumes = append(r.Volumes, l)
			}
			if s.opts.orphans && pvs != nil && pvs[id] == nil && l.Problem == "" {
				r.Orphans = append(r.Orphans, orphanLine{Kind: "no-pv", Pool: pool.Name(), Image: rec.Backing, VolumeID: id,
					Why: "no PV names this volume: its PV was deleted with reclaim policy Retain, or it is not Kubernetes'"})
			}
		})
		if err != nil {
			return nil, err
		}
		s.listForeignAndOrphans(ctx, r, pool, cat, journaled, pvs)
	}
	if s.opts.orphans && pvs != nil {
		for id, pv := range pvs {
			if !seen[id] && !s.pvImageExists(ctx, pv) {
				r.Orphans = append(r.Orphans, orphanLine{Kind: "pv", PV: pv.Name, VolumeID: id,
					Why: "the PV's volume is in no journal and its image is gone"})
			}
		}
	}
	sortOrphans(r.Orphans)
	return r, nil
}

// listForeignAndOrphans adds the images no Pelagic journal names: volumes
// a PV names (provisioned by another driver, say ceph-csi), and with
// --orphans those nothing names.
func (s *session) listForeignAndOrphans(ctx context.Context, r *listReport, pool rbd.Pool, cat Catalog,
	journaled map[string]bool, pvs map[string]*corev1.PersistentVolume) {
	images, err := cat.Images(ctx)
	if err != nil {
		r.Errors = append(r.Errors, fmt.Sprintf("listing the images of %s: %v", pool.Name(), err))
		return
	}
	byImage := map[string]string{} // image -> volume ID of the PV naming it
	for id, pv := range pvs {
		if a := pv.Spec.CSI.VolumeAttributes; a["pool"] == pool.Name() && a["imageName"] != "" {
			byImage[a["imageName"]] = id
		}
	}
	for _, name := range images {
		if journaled[name] {
			continue
		}
		if id, ok := byImage[name]; ok {
			if l := s.describeVolume(ctx, pool, cat, name, id, pvs[id]); s.keep(l) {
				r.Volumes = append(r.Volumes, l)
			}
			continue
		}
		if s.opts.orphans {
			r.Orphans = append(r.Orphans, orphanLine{Kind: "image", Pool: pool.Name(), Image: name,
				Why: "no Pelagic journal entry and no PV names it"})
		}
	}
}

func sortOrphans(o []orphanLine) {
	sort.Slice(o, func(i, j int) bool {
		a, b := o[i].Kind+o[i].Pool+o[i].Image+o[i].PV, o[j].Kind+o[j].Pool+o[j].Image+o[j].PV
		return a < b
	})
}

// csiPVs maps volume handles to the PVs of Ceph CSI drivers; nil without
// Kubernetes.
func (s *session) csiPVs(ctx context.Context, r *listReport) map[string]*corev1.PersistentVolume {
	if s.kube == nil {
		r.Unresolved = append(r.Unresolved, s.kubeNote)
		return nil
	}
	all, err := s.kube.pvs(ctx)
	if err != nil {
		r.Unresolved = append(r.Unresolved, err.Error())
		return nil
	}
	out := map[string]*corev1.PersistentVolume{}
	for i := range all {
		c := all[i].Spec.CSI
		if c == nil || !(strings.Contains(c.Driver, "pelagic") || strings.Contains(c.Driver, "ceph")) {
			continue
		}
		if _, ok := volumeIDOf(c.VolumeHandle); ok && !strings.Contains(c.Driver, "cephfs") {
			out[c.VolumeHandle] = &all[i]
		}
	}
	return out
}

// pvImageExists tells whether the PV's image is still there.
func (s *session) pvImageExists(ctx context.Context, pv *corev1.PersistentVolume) bool {
	vid, err := volumeid.Parse(pv.Spec.CSI.VolumeHandle)
	if err != nil {
		return false
	}
	name, err := s.cluster.PoolName(ctx, vid.PoolID)
	if err != nil {
		return false
	}
	pool, err := s.openPool(ctx, name)
	if err != nil {
		return false
	}
	image := pv.Spec.CSI.VolumeAttributes["imageName"]
	if image == "" {
		return false
	}
	_, err = pool.Stat(ctx, image)
	return err == nil
}

// keep applies the --node, --stale and -n filters.
func (s *session) keep(l listLine) bool {
	o := s.opts
	switch {
	case o.node != "" && !contains(l.Attached, o.node) && !contains(l.Mapped, o.node):
		return false
	case o.stale && l.Verdict.State != stateStale && l.Verdict.State != stateUnknown:
		return false
	case o.namespace != "" && l.Namespace != o.namespace:
		return false
	}
	return true
}

// describeVolume reads one volume's records. A volume that cannot be read
// is listed with the problem, so one bad image does not hide the others.
func (s *session) describeVolume(ctx context.Context, pool rbd.Pool, cat Catalog, image, id string,
	pv *corev1.PersistentVolume) listLine {
	l := listLine{VolumeID: id, Pool: pool.Name(), Image: image, Attached: []string{}, Mapped: []string{}}
	info, err := pool.Stat(ctx, image)
	var owner *rbd.Owner
	var u *rbd.Usage
	if err == nil {
		l.SizeBytes = info.Size
		owner, err = rbd.ReadOwner(ctx, pool, image)
	}
	if err == nil {
		u, err = rbd.ReadUsage(ctx, pool, image)
	}
	if err == nil {
		l.UsedBytes, err = cat.UsedBytes(ctx, image)
	}
	if owner != nil {
		l.Namespace, l.PVC, l.PV = owner.Namespace, owner.PVC, owner.PV
	}
	if pv != nil {
		l.PV = pv.Name
		if c := pv.Spec.ClaimRef; c != nil {
			l.Namespace, l.PVC = c.Namespace, c.Name
		}
	}
	if err != nil {
		l.Problem, l.problem = err.Error(), err
		l.Verdict = verdict{State: "error", Text: err.Error()}
		return l
	}
	for n := range u.Attachments {
		l.Attached = append(l.Attached, n)
	}
	for n := range u.Mappings {
		l.Mapped = append(l.Mapped, n)
	}
	sort.Strings(l.Attached)
	sort.Strings(l.Mapped)
	u.Now = s.now
	l.Verdict = judge(u, u.Holders(""), s.now)
	return l
}

func (r *listReport) writeText(w io.Writer, _ time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(r.Volumes) == 0 {
		fmt.Fprintln(tw, "no volumes")
	} else {
		fmt.Fprintln(tw, "POOL\tIMAGE\tNAMESPACE\tPVC\tSIZE\tUSED\tATTACHED\tSTATE\tORIGIN")
	}
	for _, v := range r.Volumes {
		if v.Problem != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\t\t\terror\t%s\n", v.Pool, shortImage(v.Image), orDash(v.Namespace),
				orDash(v.PVC), orDash(v.Origin))
			continue
		}
		attached := "-"
		if len(v.Attached) > 0 {
			attached = strings.Join(v.Attached, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Pool, shortImage(v.Image), orDash(v.Namespace), orDash(v.PVC),
			humanBytes(v.SizeBytes), roundBytes(v.UsedBytes), attached, v.Verdict.State, orDash(v.Origin))
	}
	tw.Flush()
	for _, v := range r.Volumes {
		if v.Problem != "" {
			fmt.Fprintf(w, "%s/%s: %s\n", v.Pool, v.Image, v.Problem)
		} else if v.Verdict.State == stateStale || v.Verdict.State == stateUnknown {
			fmt.Fprintf(w, "%s/%s: %s\n", v.Pool, v.Image, v.Verdict.Text)
		}
	}
	if len(r.Orphans) > 0 {
		fmt.Fprintln(w, "orphans:")
		for _, o := range r.Orphans {
			what := o.Pool + "/" + o.Image
			if o.Kind == "pv" {
				what = "PV " + o.PV
			}
			fmt.Fprintf(w, "  %s %s: %s\n", o.Kind, what, o.Why)
		}
	}
	writeNotes(w, r.Errors, r.Unresolved)
}

// writeNotes prints the errors and unresolved lookups of a report.
func writeNotes(w io.Writer, errs, unresolved []string) {
	for _, e := range errs {
		fmt.Fprintf(w, "error: %s\n", e)
	}
	for _, u := range unresolved {
		fmt.Fprintf(w, "unresolved: %s\n", u)
	}
}

// shortImage keeps an image name short enough for a table: the prefix
// and the UUID's last group.
func shortImage(name string) string {
	if len(name) <= 24 {
		return name
	}
	return name[:8] + "…" + name[len(name)-12:]
}

// roundBytes prints a size to one decimal in the largest fitting unit.
func roundBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", f, units[i])
}
