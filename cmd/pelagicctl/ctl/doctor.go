package ctl

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// doctorReport is the Multi-Attach case walked from start to end: who
// holds the volume and how, what Kubernetes shows, the verdict, the exact
// fix, and with --fix what was done.
type doctorReport struct {
	VolumeID string         `json:"volumeID,omitempty"`
	Pool     string         `json:"pool"`
	Image    string         `json:"image"`
	PVC      string         `json:"pvc,omitempty"`
	Holders  []doctorHolder `json:"holders"`
	Pods     []podFacts     `json:"pods"`
	// Findings are the steps of the walk, in order.
	Findings []string `json:"findings"`
	Verdict  verdict  `json:"verdict"`
	// Fix is what to do, as commands or steps, safe ones first.
	Fix []string `json:"fix"`
	// Actions is what --fix did or refused.
	Actions    []doctorAction `json:"actions,omitempty"`
	Unresolved []string       `json:"unresolved,omitempty"`
}

// doctorHolder is one holder with every fact the case turns on. NodeReady
// is "" without Kubernetes access; VolumeAttachment "" when there is none
// for its node (or no access).
type doctorHolder struct {
	Node              string    `json:"node,omitempty"`
	Client            string    `json:"client,omitempty"`
	Addr              string    `json:"addr,omitempty"`
	State             string    `json:"state"` // rbd.HolderState: attached, stale, unknown, fenced, controller
	AttachmentCurrent bool      `json:"attachmentCurrent"`
	Mapped            bool      `json:"mapped"`
	WatchAlive        bool      `json:"watchAlive"`
	Fenced            bool      `json:"fenced"`
	FencedUntil       time.Time `json:"fencedUntil,omitempty"`
	NodeReady         string    `json:"nodeReady,omitempty"`
	VolumeAttachment  string    `json:"volumeAttachment,omitempty"`
}

// doctorAction is one fix --fix applied or refused.
type doctorAction struct {
	Action string `json:"action"` // fence, complete-fence, clear-attachment
	Target string `json:"target"`
	Done   bool   `json:"done"`
	Result string `json:"result"`
}

// plannedFix is a fix doctor found: safe ones --fix applies.
type plannedFix struct {
	step  string
	safe  bool
	apply func(ctx context.Context) doctorAction
}

func runDoctor(ctx context.Context, s *session, _ []string) (report, error) {
	img, err := s.openImage(ctx, s.ref)
	if err != nil {
		return nil, err
	}
	st, err := s.rbdStatus(ctx, img)
	if err != nil {
		return nil, err
	}
	u, err := rbd.ReadUsage(ctx, img.pool, img.name)
	if err != nil {
		return nil, err
	}
	u.Now = s.now
	r := &doctorReport{VolumeID: st.VolumeID, Pool: st.Pool, Image: st.Image, Holders: []doctorHolder{}, Pods: []podFacts{},
		Findings: []string{}, Fix: []string{}, Unresolved: st.Unresolved, Verdict: st.Verdict}
	if s.ref.PVC != "" {
		r.PVC = s.ref.PVC
	}
	k := st.Kubernetes
	if k != nil {
		r.Pods = k.Pods
	}
	var fixes []plannedFix
	for _, h := range u.Holders("") {
		dh := s.describeHolder(h, u, k)
		r.Holders = append(r.Holders, dh)
		r.Findings = append(r.Findings, holderFinding(dh))
		fixes = append(fixes, s.fixesFor(img, h, dh, k)...)
	}
	if len(r.Holders) == 0 {
		r.Findings = append(r.Findings, "no node holds the volume: no attachment, no mapping record, no watcher")
	}
	for _, f := range sortedFences(u) {
		if !f.Done() {
			f := f
			r.Findings = append(r.Findings, fmt.Sprintf("a fence of %s%s was left pending by a controller that stopped",
				clientName(f), onNode(f.Node)))
			fixes = append(fixes, plannedFix{step: fmt.Sprintf("%s doctor --fix %s (finishes the pending fence of %s; "+
				"the next publish would too)", s.tool.name(), s.volumeArg(r), f.ClientAddr), safe: true,
				apply: func(ctx context.Context) doctorAction { return s.completeFence(ctx, img, f) }})
		}
	}
	for _, p := range r.Pods {
		if p.Stuck != "" {
			r.Findings = append(r.Findings, fmt.Sprintf("pod %s/%s on %s does not run: %s", p.Namespace, p.Name, orDash(p.Node), p.Stuck))
		}
	}
	for _, f := range fixes {
		r.Fix = append(r.Fix, f.step)
	}
	if len(r.Fix) == 0 {
		r.Fix = append(r.Fix, "nothing to fix")
	}
	if s.opts.fix {
		return r, s.applyFixes(ctx, r, fixes)
	}
	return r, nil
}

// applyFixes runs the safe fixes and records the refused ones; a refusal
// makes the command fail, after the report is printed.
func (s *session) applyFixes(ctx context.Context, r *doctorReport, fixes []plannedFix) error {
	var refused []string
	for _, f := range fixes {
		if f.apply == nil {
			continue
		}
		a := f.apply(ctx)
		r.Actions = append(r.Actions, a)
		if !a.Done {
			refused = append(refused, a.Target+": "+a.Result)
		}
	}
	if len(r.Actions) == 0 {
		r.Actions = append(r.Actions, doctorAction{Action: "none", Result: "nothing safe to apply"})
	}
	if len(refused) > 0 {
		return refusal{msg: "doctor --fix did not apply every fix:\n  " + strings.Join(refused, "\n  ")}
	}
	return nil
}

func (s *session) volumeArg(r *doctorReport) string {
	if s.ref != nil && s.ref.Arg != "" {
		return s.ref.Arg
	}
	return r.Pool + "/" + r.Image
}

func (s *session) describeHolder(h rbd.Holder, u *rbd.Usage, k *kubeFacts) doctorHolder {
	dh := doctorHolder{Node: h.Node, Client: h.ClientID(), Addr: h.ClientAddr(), State: h.State.String(),
		AttachmentCurrent: h.Attachment != nil, Mapped: h.Mapping != nil, WatchAlive: h.Watcher != nil}
	if h.Watcher == nil && h.ClientAddr() != "" {
		for _, w := range u.Watchers {
			dh.WatchAlive = dh.WatchAlive || ceph.SameClient(w.Addr, h.ClientAddr())
		}
	}
	if f := fenceOf(u, h.ClientAddr(), s.now); f != nil {
		dh.Fenced, dh.FencedUntil = true, f.Expires
	}
	if k != nil && h.Node != "" {
		dh.NodeReady = "absent"
		for _, n := range k.Nodes {
			if n.Name == h.Node || n.NodeID == h.Node {
				dh.NodeReady = n.Ready
			}
		}
		for _, va := range k.VolumeAttachments {
			if va.Node == h.Node {
				dh.VolumeAttachment = "attached"
				if !va.Attached {
					dh.VolumeAttachment = "not attached"
				}
				if va.Deleting {
					dh.VolumeAttachment += ", being deleted"
				}
			}
		}
	}
	return dh
}

// holderFinding says in one line what one holder is.
func holderFinding(d doctorHolder) string {
	who := "a client no node recorded"
	if d.Node != "" {
		who = "node " + d.Node
	}
	if d.Addr != "" {
		who += " (" + strings.TrimSpace(d.Client+" at "+d.Addr) + ")"
	}
	facts := []string{}
	switch d.NodeReady {
	case "":
	case "True":
		facts = append(facts, "node Ready")
	case "absent":
		facts = append(facts, "no such Kubernetes node")
	default:
		facts = append(facts, "node NOT Ready ("+d.NodeReady+")")
	}
	if d.AttachmentCurrent {
		facts = append(facts, "attachment current")
	} else if d.Node != "" {
		facts = append(facts, "attachment gone (unpublished)")
	}
	if d.VolumeAttachment != "" {
		facts = append(facts, "VolumeAttachment "+d.VolumeAttachment)
	}
	if d.Mapped {
		facts = append(facts, "mapped")
	}
	if d.WatchAlive {
		facts = append(facts, "watch alive")
	} else if d.Addr != "" {
		facts = append(facts, "no watch (timed out, or frozen)")
	}
	if d.Fenced {
		facts = append(facts, "fenced until "+stamp(d.FencedUntil))
	} else if d.Addr != "" {
		facts = append(facts, "not fenced")
	}
	return fmt.Sprintf("%s holds it, %s: %s", who, strings.ToUpper(d.State), strings.Join(facts, ", "))
}

// fixesFor finds the fix of one holder.
func (s *session) fixesFor(img *image, h rbd.Holder, d doctorHolder, k *kubeFacts) []plannedFix {
	name := s.tool.name()
	switch h.State {
	case rbd.HolderStale:
		if h.ClientAddr() == "" {
			return []plannedFix{{step: fmt.Sprintf("node %s's mapping record names no client instance, so it cannot be fenced: "+
				"run '%s unmap %s' on %s", h.Node, name, img.spec(), h.Node)}}
		}
		return []plannedFix{{step: fmt.Sprintf("%s fence %s --reason 'stale holder of %s' (node %s is unpublished but "+
			"still maps it; the next publish elsewhere would fence it too)", name, h.ClientAddr(), img.spec(), h.Node),
			safe: true, apply: func(ctx context.Context) doctorAction { return s.fenceStale(ctx, img, h) }}}
	case rbd.HolderUnknown:
		return []plannedFix{{step: fmt.Sprintf("%s maps it outside Pelagic: run '%s showmapped' on the host at %s and unmap it "+
			"there, or, if that host is gone, %s fence %s --force", h.Watcher, name, hostOf(h.ClientAddr()), name, h.ClientAddr())}}
	case rbd.HolderAttached:
		return s.attachedFixes(img, h, d, k)
	}
	return nil
}

// attachedFixes: a current attachment is never fenced. When its node is
// down the fix is Kubernetes'; when Kubernetes has forgotten it and the
// node never mapped, the record is cleared.
func (s *session) attachedFixes(img *image, h rbd.Holder, d doctorHolder, k *kubeFacts) []plannedFix {
	if k == nil {
		return nil
	}
	if d.VolumeAttachment == "" && h.Mapping == nil {
		return []plannedFix{{step: fmt.Sprintf("node %s's attachment record has no VolumeAttachment and the node never mapped "+
			"the volume: %s doctor --fix %s clears it", h.Node, s.tool.name(), img.spec()), safe: true,
			apply: func(ctx context.Context) doctorAction { return s.clearAttachment(ctx, img, h.Node) }}}
	}
	wanted := otherNodesWanting(k, h.Node)
	refuse := func(ctx context.Context) doctorAction {
		return doctorAction{Action: "fence", Target: h.Describe(),
			Result: "refused: its attachment is current, so Kubernetes still counts the node; a current holder is never fenced"}
	}
	switch {
	case d.NodeReady != "" && d.NodeReady != "True":
		return []plannedFix{{step: fmt.Sprintf("node %s is not Ready: once you know it is down, "+
			"kubectl taint nodes %s node.kubernetes.io/out-of-service=nodeshutdown:NoExecute — Kubernetes then detaches "+
			"the volume and the next publish fences %s", h.Node, h.Node, h.ClientAddr()), apply: refuse}}
	case len(wanted) > 0:
		return []plannedFix{{step: fmt.Sprintf("node %s is Ready and uses the volume: stop the pod there first "+
			"(kubectl delete pod, or drain %s), then the pod on %s starts", h.Node, h.Node, strings.Join(wanted, ", ")),
			apply: refuse}}
	}
	return nil
}

// otherNodesWanting lists the nodes other than node where a pod of the
// volume is stuck.
func otherNodesWanting(k *kubeFacts, node string) []string {
	var out []string
	for _, p := range k.Pods {
		if p.Stuck != "" && p.Node != "" && p.Node != node && !contains(out, p.Node) {
			out = append(out, p.Node)
		}
	}
	return out
}

func hostOf(addr string) string {
	a := ceph.PlainAddr(addr)
	if i := strings.LastIndex(a, ":"); i > 0 {
		return a[:i]
	}
	return a
}

func (s *session) fenceStale(ctx context.Context, img *image, h rbd.Holder) doctorAction {
	a := doctorAction{Action: "fence", Target: h.Describe()}
	ops := rbd.NewController(rbd.ControllerOptions{FenceExpiry: s.opts.expiry})
	reason := s.fenceReason("doctor --fix "+img.spec(), fmt.Sprintf("node %s still maps it after it was unpublished", h.Node))
	f, err := ops.FenceHolder(ctx, s.cluster, img.pool, img.name, h, reason, false)
	if err != nil {
		a.Result = "not fenced: " + err.Error()
		return a
	}
	a.Done, a.Result = true, fmt.Sprintf("fenced %s at %s until %s; the controller lifts it once %s unstages",
		orDash(f.ClientID), f.ClientAddr, stamp(f.Expires), orDash(h.Node))
	return a
}

func (s *session) completeFence(ctx context.Context, img *image, f rbd.Fence) doctorAction {
	a := doctorAction{Action: "complete-fence", Target: clientName(f)}
	ops := rbd.NewController(rbd.ControllerOptions{FenceExpiry: s.opts.expiry})
	if err := ops.CompletePendingFence(ctx, s.cluster, img.pool, img.name, f); err != nil {
		a.Result = "not completed: " + err.Error()
		return a
	}
	a.Done, a.Result = true, "blocklisted and recorded as done"
	return a
}

func (s *session) clearAttachment(ctx context.Context, img *image, node string) doctorAction {
	a := doctorAction{Action: "clear-attachment", Target: "node " + node}
	removed, err := rbd.RemoveAttachmentRecord(ctx, img.pool, img.name, node)
	switch {
	case err != nil:
		a.Result = "kept: " + err.Error()
	case !removed:
		a.Done, a.Result = true, "already gone"
	default:
		a.Done, a.Result = true, "attachment record removed"
	}
	return a
}

func (r *doctorReport) writeText(w io.Writer, _ time.Time) {
	name := r.Pool + "/" + r.Image
	if r.PVC != "" {
		name = "PVC " + r.PVC + " (" + name + ")"
	}
	fmt.Fprintf(w, "doctor: %s\n", name)
	for i, f := range r.Findings {
		fmt.Fprintf(w, "  %d. %s\n", i+1, f)
	}
	for _, u := range r.Unresolved {
		fmt.Fprintf(w, "  unresolved: %s\n", u)
	}
	fmt.Fprintf(w, "verdict:  %s\n", r.Verdict.Text)
	fmt.Fprintln(w, "fix:")
	for _, f := range r.Fix {
		fmt.Fprintf(w, "  - %s\n", f)
	}
	if len(r.Actions) > 0 {
		fmt.Fprintln(w, "done:")
		for _, a := range r.Actions {
			mark := "refused"
			if a.Done {
				mark = "done"
			}
			if a.Action == "none" {
				mark = "nothing"
			}
			fmt.Fprintf(w, "  - %s %s: %s (%s)\n", a.Action, a.Target, a.Result, mark)
		}
	}
}
