package ctl

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// notRecorded is what a watcher no node recorded is flagged with.
const notRecorded = "not recorded by any node — mapped outside Pelagic?"

// statusReport is everything status found about one RBD volume.
type statusReport struct {
	Type        string           `json:"type"` // "rbd"
	VolumeID    string           `json:"volumeID,omitempty"`
	Pool        string           `json:"pool"`
	Namespace   string           `json:"namespace,omitempty"`
	Image       string           `json:"image"`
	SizeBytes   int64            `json:"sizeBytes"`
	Owner       *rbd.Owner       `json:"owner,omitempty"`
	Watchers    []watcherReport  `json:"watchers"`
	Attachments []rbd.Attachment `json:"attachments"`
	Mappings    []mappingReport  `json:"mappings"`
	Fences      []fenceReport    `json:"fences"`
	// Kubernetes is what the API says, nil without Kubernetes access.
	Kubernetes *kubeFacts `json:"kubernetes,omitempty"`
	// Unresolved says what could not be looked up, and why.
	Unresolved []string `json:"unresolved,omitempty"`
	Verdict    verdict  `json:"verdict"`
}

// watcherReport is a watcher matched to the node whose mapping record
// names its client instance.
type watcherReport struct {
	Client string `json:"client"` // client.4124
	Addr   string `json:"addr"`
	Node   string `json:"node,omitempty"`
	Fenced bool   `json:"fenced,omitempty"` // a fence in force names this client
	Note   string `json:"note,omitempty"`
}

// mappingReport is a node's mapping record; Live tells whether a watcher
// still matches it (a writable mapping without one is on a node that is cut
// off, or gone; a read-only krbd mapping never holds one).
type mappingReport struct {
	rbd.NodeMapping
	Live bool `json:"live"`
}

// fenceReport is a fence record; InForce is false once it has expired.
type fenceReport struct {
	rbd.Fence
	InForce bool `json:"inForce"`
}

func runStatus(ctx context.Context, s *session, _ []string) (report, error) {
	if s.ref.Kind == kindCephFS || (s.ref.Kind == "" && s.opts.fsName != "") {
		return s.cephfsStatus(ctx, s.ref)
	}
	img, err := s.openImage(ctx, s.ref)
	if err != nil && s.ref.Kind == "" && s.ref.VolumeID != "" {
		// A volume ID alone does not say RBD or CephFS: its location
		// may be a filesystem's FSCID.
		if r, ferr := s.cephfsStatus(ctx, s.ref); ferr == nil {
			return r, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return s.rbdStatus(ctx, img)
}

// rbdStatus reads everything about one image.
func (s *session) rbdStatus(ctx context.Context, img *image) (*statusReport, error) {
	info, err := img.pool.Stat(ctx, img.name)
	if err != nil {
		return nil, err
	}
	owner, err := rbd.ReadOwner(ctx, img.pool, img.name)
	if err != nil {
		return nil, err
	}
	usage, err := rbd.ReadUsage(ctx, img.pool, img.name)
	if err != nil {
		return nil, err
	}
	if img.id == "" {
		img.id = s.volumeIDFor(ctx, img.pool, img.name, owner)
	}
	ref := s.ref
	if ref == nil {
		ref = &volumeRef{}
	}
	if ref.PVC == "" && ref.PV == nil && s.kube != nil && img.id != "" {
		if pv, err := s.kube.pvByHandle(ctx, img.id); err == nil && pv != nil {
			_ = s.fromPV(ctx, ref, pv)
		}
	}
	r := describeUsage(usage, s.now)
	r.Type, r.VolumeID, r.Pool, r.Namespace, r.Image, r.SizeBytes, r.Owner = kindRBD, img.id, img.pool.Name(), s.namespace,
		img.name, info.Size, owner
	r.Kubernetes, r.Unresolved = s.gatherKube(ctx, ref, recordNodes(usage))
	r.Unresolved = append(append([]string{}, ref.Notes...), r.Unresolved...)
	if s.kube == nil && len(ref.Notes) == 0 {
		r.Unresolved = append(r.Unresolved, s.kubeNote)
	}
	r.Verdict.Text += kubeVerdict(r.Kubernetes, usage)
	return r, nil
}

// recordNodes lists the nodes the records name.
func recordNodes(u *rbd.Usage) []string {
	var out []string
	for n := range u.Attachments {
		out = append(out, n)
	}
	for n := range u.Mappings {
		if _, dup := u.Attachments[n]; !dup {
			out = append(out, n)
		}
	}
	for _, f := range u.Fences {
		if f.Node != "" && !contains(out, f.Node) {
			out = append(out, f.Node)
		}
	}
	sort.Strings(out)
	return out
}

// kubeVerdict adds to the verdict what Kubernetes shows: holders on nodes
// that are not Ready, pods that do not start, attachments Kubernetes and
// Ceph disagree on.
func kubeVerdict(k *kubeFacts, u *rbd.Usage) string {
	if k == nil {
		return ""
	}
	var parts []string
	for _, n := range k.Nodes {
		id := n.Name
		if n.NodeID != "" {
			id = n.NodeID
		}
		_, holds := u.Mappings[id]
		if _, att := u.Attachments[id]; att {
			holds = true
		}
		if holds && n.notReady() {
			parts = append(parts, fmt.Sprintf("node %s is not Ready (%s)", n.Name, n.Ready))
		}
	}
	for _, p := range k.Pods {
		if p.Stuck != "" {
			parts = append(parts, fmt.Sprintf("pod %s/%s on %s: %s", p.Namespace, p.Name, orDash(p.Node), p.Stuck))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; " + strings.Join(parts, "; ")
}

// describeUsage turns the records and watchers into the report, matching
// watchers to nodes with the controller's own Holders.
func describeUsage(u *rbd.Usage, now time.Time) *statusReport {
	u.Now = now
	r := &statusReport{Watchers: []watcherReport{}, Attachments: []rbd.Attachment{},
		Mappings: []mappingReport{}, Fences: []fenceReport{}}
	holders := u.Holders("")
	for _, h := range holders {
		if h.Watcher == nil {
			continue
		}
		w := watcherReport{Client: fmt.Sprintf("client.%d", h.Watcher.ID), Addr: h.Watcher.Addr, Node: h.Node}
		f := fenceOf(u, h.Watcher.Addr, now)
		switch {
		case f != nil:
			w.Fenced = true
			w.Note = fmt.Sprintf("fenced until %s; its watch goes once the OSDs drop it", stamp(f.Expires))
		case h.State == rbd.HolderUnknown:
			w.Note = notRecorded
		case h.State == rbd.HolderStale:
			w.Note = "stale: the node is no longer attached"
		}
		r.Watchers = append(r.Watchers, w)
	}
	for _, a := range u.Attachments {
		r.Attachments = append(r.Attachments, a)
	}
	sort.Slice(r.Attachments, func(i, j int) bool { return r.Attachments[i].Node < r.Attachments[j].Node })
	for _, m := range u.Mappings {
		live := false
		for _, w := range u.Watchers {
			live = live || ceph.SameClient(m.ClientAddr, w.Addr)
		}
		r.Mappings = append(r.Mappings, mappingReport{NodeMapping: m, Live: live})
	}
	sort.Slice(r.Mappings, func(i, j int) bool { return r.Mappings[i].Node < r.Mappings[j].Node })
	for _, f := range sortedFences(u) {
		r.Fences = append(r.Fences, fenceReport{Fence: f, InForce: f.Expires.After(now)})
	}
	r.Verdict = judge(u, holders, now)
	return r
}

// sortedFences lists the fence records oldest first, for stable output.
func sortedFences(u *rbd.Usage) []rbd.Fence {
	out := make([]rbd.Fence, 0, len(u.Fences))
	for _, f := range u.Fences {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].At.Equal(out[j].At) {
			return out[i].At.Before(out[j].At)
		}
		return out[i].ClientAddr < out[j].ClientAddr
	})
	return out
}

// fenceOf returns the fence in force on the client at addr, if any.
func fenceOf(u *rbd.Usage, addr string, now time.Time) *rbd.Fence {
	for a, f := range u.Fences {
		if ceph.SameClient(a, addr) && f.InForce(now) {
			return &f
		}
	}
	return nil
}

// Verdict states, from harmless to needing an operator.
const (
	stateFree     = "free"     // nobody holds the volume
	stateAttached = "attached" // held as the CO asked
	stateFenced   = "fenced"   // only fenced clients' watches remain; they go by themselves
	stateStale    = "stale"    // a node holds it after the CO took it away; the next publish fences it
	stateUnknown  = "unknown"  // a client no node recorded holds it; publishing single-node is refused
)

// severity orders the states, so the verdict names the worst one.
func severity(state string) int {
	switch state {
	case stateAttached:
		return 1
	case stateFenced:
		return 2
	case stateStale:
		return 3
	case stateUnknown:
		return 4
	}
	return 0
}

// verdict is the one-line answer to "why is this volume stuck".
type verdict struct {
	State string `json:"state"`
	Text  string `json:"text"`
}

// judge says in one line what holds the volume and what the controller
// will do about it, by the same rules as rbd.Decide.
func judge(u *rbd.Usage, holders []rbd.Holder, now time.Time) verdict {
	v := verdict{State: stateFree}
	type finding struct{ state, text string }
	var found []finding
	add := func(state, text string) {
		if severity(state) > severity(v.State) {
			v.State = state
		}
		found = append(found, finding{state, text})
	}
	fencedClients := map[string]bool{}
	for _, h := range holders {
		w := h.Watcher
		switch {
		case h.State == rbd.HolderFenced:
			fencedClients[h.Fence.ClientAddr] = true
			add(stateFenced, fmt.Sprintf("FENCED: %s%s is blocklisted until %s%s", holderClient(h), onNode(h.Fence.Node),
				stamp(h.Fence.Expires), fencedStill(h)))
		case h.State == rbd.HolderController:
			add(stateAttached, fmt.Sprintf("a Pelagic controller's short open (%s)", w))
		case h.State == rbd.HolderUnknown:
			add(stateUnknown, fmt.Sprintf("UNKNOWN HOLDER: %s is %s (a single-node publish is refused until it is unmapped)",
				w, notRecorded))
		case h.State == rbd.HolderStale:
			add(stateStale, fmt.Sprintf("STALE: %s still maps it but is not attached — publishing elsewhere will fence %s",
				h.Node, holderClient(h)))
		case w != nil:
			add(stateAttached, fmt.Sprintf("attached to %s and mapped there (%s)", h.Node, w))
		case h.Mapping != nil:
			add(stateAttached, fmt.Sprintf("attached to %s, but its mapping (%s at %s) has no live watch: node down?",
				h.Node, orDash(h.Mapping.ClientID), h.Mapping.ClientAddr))
		default:
			add(stateAttached, fmt.Sprintf("attached to %s, not mapped there yet", h.Node))
		}
	}
	for _, f := range sortedFences(u) {
		if !f.Done() {
			add(stateStale, fmt.Sprintf("PENDING FENCE: %s%s was being fenced when its controller stopped; the next publish completes it",
				clientName(f), onNode(f.Node)))
		}
	}
	// The finding that needs the operator most comes first.
	sort.SliceStable(found, func(i, j int) bool { return severity(found[i].state) > severity(found[j].state) })
	parts := []string{"free"}
	if len(found) > 0 {
		parts = parts[:0]
	}
	for _, f := range found {
		parts = append(parts, f.text)
	}
	// Fences of clients that no longer watch are history, but an operator
	// looking at a stuck volume wants to know a node was cut off.
	for _, f := range sortedFences(u) {
		if !fencedClients[f.ClientAddr] && f.InForce(now) {
			parts = append(parts, fmt.Sprintf("%s%s stays fenced until %s", clientName(f), onNode(f.Node), stamp(f.Expires)))
		}
	}
	v.Text = strings.Join(parts, "; ")
	return v
}

// holderClient names the client through which a holder can write.
func holderClient(h rbd.Holder) string {
	if h.Watcher != nil {
		return h.Watcher.String()
	}
	return strings.TrimSpace(orDash(h.ClientID()) + " at " + h.ClientAddr())
}

// fencedStill says what a fenced client still holds.
func fencedStill(h rbd.Holder) string {
	switch {
	case h.Watcher != nil:
		return " but still watches; the watch goes once the OSDs drop it"
	case h.Mapping != nil:
		return "; its node has not released the mapping, so the fence is renewed until it does"
	}
	return ""
}

func onNode(node string) string {
	if node == "" {
		return ""
	}
	return " (node " + node + ")"
}

func clientName(f rbd.Fence) string {
	if f.ClientID != "" {
		return f.ClientID + " at " + f.ClientAddr
	}
	return "client at " + f.ClientAddr
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func (r *statusReport) writeText(w io.Writer, _ time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	if r.VolumeID != "" {
		fmt.Fprintf(tw, "volume:\t%s\n", r.VolumeID)
	}
	image := r.Pool + "/" + r.Image
	if r.Namespace != "" {
		image = r.Pool + "/" + r.Namespace + "/" + r.Image
	}
	fmt.Fprintf(tw, "image:\t%s\n", image)
	fmt.Fprintf(tw, "size:\t%s\n", humanBytes(r.SizeBytes))
	fmt.Fprintf(tw, "owner:\t%s\n", ownerText(r.Owner))
	writeKube(tw, r.Kubernetes)
	fmt.Fprintln(tw, "watchers:")
	for _, x := range r.Watchers {
		who := x.Note
		if x.Node != "" {
			who = strings.TrimSuffix("node "+x.Node+"; "+x.Note, "; ")
		}
		fmt.Fprintf(tw, "  %s at %s\t%s\n", x.Client, x.Addr, who)
	}
	none(tw, len(r.Watchers))
	fmt.Fprintln(tw, "attachments:")
	for _, a := range r.Attachments {
		mode := a.Mode
		if a.ReadOnly {
			mode += " (read-only)"
		}
		fmt.Fprintf(tw, "  %s\t%s\tsince %s\n", a.Node, mode, stamp(a.Since))
	}
	none(tw, len(r.Attachments))
	fmt.Fprintln(tw, "mappings:")
	for _, m := range r.Mappings {
		state := "live"
		switch {
		case !m.Live && m.ReadOnly:
			state = "read-only, no watch"
		case !m.Live:
			state = "no live watch"
		}
		fmt.Fprintf(tw, "  %s\t%s at %s\t%s, since %s, %s\n", m.Node, orDash(m.ClientID), m.ClientAddr, orDash(m.Mapper), stamp(m.Since), state)
	}
	none(tw, len(r.Mappings))
	fmt.Fprintln(tw, "fences:")
	for _, f := range r.Fences {
		state := "in force"
		if !f.InForce {
			state = "expired"
		}
		fmt.Fprintf(tw, "  %s\t%s at %s\tat %s\texpires %s (%s)\t%s\n",
			orDash(f.Node), orDash(f.ClientID), f.ClientAddr, stamp(f.At), stamp(f.Expires), state, f.Reason)
	}
	none(tw, len(r.Fences))
	for _, u := range r.Unresolved {
		fmt.Fprintf(tw, "unresolved:\t%s\n", u)
	}
	fmt.Fprintf(tw, "verdict:\t%s\n", r.Verdict.Text)
}

func none(w io.Writer, n int) {
	if n == 0 {
		fmt.Fprintln(w, "  (none)")
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func ownerText(o *rbd.Owner) string {
	if o == nil {
		return "(no owner record: not created by Pelagic, or still being created)"
	}
	pvc := o.PVC
	if o.Namespace != "" {
		pvc = o.Namespace + "/" + o.PVC
	}
	if o.PVC == "" {
		return fmt.Sprintf("CSI volume %s (no PVC recorded)", orDash(o.Name))
	}
	return fmt.Sprintf("PVC %s, PV %s", pvc, orDash(o.PV))
}

// humanBytes prints a size in the largest binary unit that divides it.
func humanBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	i := 0
	for i < len(units)-1 && n >= 1024 && n%1024 == 0 {
		n /= 1024
		i++
	}
	return fmt.Sprintf("%d %s", n, units[i])
}
