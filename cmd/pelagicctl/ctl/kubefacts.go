package ctl

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// kubeFacts is what Kubernetes says about a volume.
type kubeFacts struct {
	PVC               *pvcFacts   `json:"pvc,omitempty"`
	PV                *pvFacts    `json:"pv,omitempty"`
	Pods              []podFacts  `json:"pods"`
	VolumeAttachments []vaFacts   `json:"volumeAttachments"`
	Nodes             []nodeFacts `json:"nodes"`
}

type pvcFacts struct {
	Namespace    string   `json:"namespace"`
	Name         string   `json:"name"`
	Phase        string   `json:"phase"`
	StorageClass string   `json:"storageClass,omitempty"`
	AccessModes  []string `json:"accessModes"`
}

type pvFacts struct {
	Name          string `json:"name"`
	Phase         string `json:"phase"`
	Driver        string `json:"driver"`
	ReclaimPolicy string `json:"reclaimPolicy"`
}

// podFacts is a pod using the PVC; Stuck says why it does not run.
type podFacts struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Node      string `json:"node,omitempty"`
	Phase     string `json:"phase"`
	Ready     bool   `json:"ready"`
	Stuck     string `json:"stuck,omitempty"`
}

type vaFacts struct {
	Name        string `json:"name"`
	Node        string `json:"node"`
	Attached    bool   `json:"attached"`
	Deleting    bool   `json:"deleting,omitempty"`
	AttachError string `json:"attachError,omitempty"`
	DetachError string `json:"detachError,omitempty"`
}

// nodeFacts is a node involved with the volume. Ready is the Ready
// condition's status ("True", "False", "Unknown"), or "absent" for a node
// Kubernetes does not have.
type nodeFacts struct {
	Name          string   `json:"name"`
	NodeID        string   `json:"nodeID,omitempty"` // the CSI node ID, when it differs
	Ready         string   `json:"ready"`
	Unschedulable bool     `json:"unschedulable,omitempty"`
	Taints        []string `json:"taints"`
}

// notReady reports a node that cannot be counted on to run anything.
func (n nodeFacts) notReady() bool { return n.Ready != string(corev1.ConditionTrue) }

// gatherKube reads the PVC, pods, VolumeAttachments and the nodes among
// them and the CSI node IDs given (the nodes of the Ceph records).
func (s *session) gatherKube(ctx context.Context, ref *volumeRef, nodeIDs []string) (*kubeFacts, []string) {
	if s.kube == nil || ref == nil || (ref.PVC == "" && ref.PV == nil && len(nodeIDs) == 0) {
		return nil, nil
	}
	var notes []string
	k := &kubeFacts{Pods: []podFacts{}, VolumeAttachments: []vaFacts{}, Nodes: []nodeFacts{}}
	names := s.kube.nodeNames(ctx)
	wanted := map[string]string{} // node name -> CSI node ID
	for _, id := range nodeIDs {
		name := id
		if n, ok := names[id]; ok {
			name = n
		}
		wanted[name] = id
	}
	if ref.PVC != "" {
		ns, name, _ := strings.Cut(ref.PVC, "/")
		if pvc, err := s.kube.pvc(ctx, ns, name); err == nil {
			k.PVC = &pvcFacts{Namespace: ns, Name: name, Phase: string(pvc.Status.Phase), AccessModes: []string{}}
			if pvc.Spec.StorageClassName != nil {
				k.PVC.StorageClass = *pvc.Spec.StorageClassName
			}
			for _, m := range pvc.Spec.AccessModes {
				k.PVC.AccessModes = append(k.PVC.AccessModes, string(m))
			}
		} else {
			notes = append(notes, fmt.Sprintf("PVC %s: %v", ref.PVC, err))
		}
		pods, err := s.kube.podsUsing(ctx, ns, name)
		if err != nil {
			notes = append(notes, err.Error())
		}
		for i := range pods {
			k.Pods = append(k.Pods, s.describePod(ctx, &pods[i]))
			if n := pods[i].Spec.NodeName; n != "" {
				if _, ok := wanted[n]; !ok {
					wanted[n] = ""
				}
			}
		}
	}
	if pv := ref.PV; pv != nil {
		k.PV = &pvFacts{Name: pv.Name, Phase: string(pv.Status.Phase), ReclaimPolicy: string(pv.Spec.PersistentVolumeReclaimPolicy)}
		if pv.Spec.CSI != nil {
			k.PV.Driver = pv.Spec.CSI.Driver
		}
		vas, err := s.kube.attachments(ctx, pv.Name)
		if err != nil {
			notes = append(notes, err.Error())
		}
		for _, va := range vas {
			f := vaFacts{Name: va.Name, Node: va.Spec.NodeName, Attached: va.Status.Attached, Deleting: va.DeletionTimestamp != nil}
			if e := va.Status.AttachError; e != nil {
				f.AttachError = e.Message
			}
			if e := va.Status.DetachError; e != nil {
				f.DetachError = e.Message
			}
			k.VolumeAttachments = append(k.VolumeAttachments, f)
			if _, ok := wanted[va.Spec.NodeName]; !ok {
				wanted[va.Spec.NodeName] = ""
			}
		}
	}
	for name, id := range wanted {
		k.Nodes = append(k.Nodes, s.describeNode(ctx, name, id))
	}
	sort.Slice(k.Nodes, func(i, j int) bool { return k.Nodes[i].Name < k.Nodes[j].Name })
	return k, notes
}

func (s *session) describeNode(ctx context.Context, name, id string) nodeFacts {
	f := nodeFacts{Name: name, Ready: "absent", Taints: []string{}}
	if id != name {
		f.NodeID = id
	}
	n, err := s.kube.node(ctx, name)
	if err != nil {
		f.Ready = "unknown: " + err.Error()
		return f
	}
	if n == nil {
		return f
	}
	f.Ready, f.Unschedulable = string(corev1.ConditionUnknown), n.Spec.Unschedulable
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			f.Ready = string(c.Status)
		}
	}
	for _, t := range n.Spec.Taints {
		f.Taints = append(f.Taints, fmt.Sprintf("%s=%s:%s", t.Key, t.Value, t.Effect))
	}
	return f
}

// describePod says whether the pod runs, and if not why, from its
// containers' waiting reasons and its latest warning.
func (s *session) describePod(ctx context.Context, p *corev1.Pod) podFacts {
	f := podFacts{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, Phase: string(p.Status.Phase)}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			f.Ready = true
		}
	}
	if f.Ready || p.Status.Phase == corev1.PodSucceeded {
		return f
	}
	var why []string
	if p.DeletionTimestamp != nil {
		why = append(why, "terminating")
	}
	for _, c := range p.Status.ContainerStatuses {
		if w := c.State.Waiting; w != nil && w.Reason != "" {
			why = append(why, w.Reason)
			break
		}
	}
	if ws := s.kube.warnings(ctx, p); len(ws) > 0 {
		last := ws[len(ws)-1]
		why = append(why, last.Reason+": "+oneLine(last.Message))
	}
	if len(why) == 0 {
		why = append(why, "not ready")
	}
	f.Stuck = strings.Join(why, "; ")
	return f
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// writeKube prints the Kubernetes facts in status's text layout.
func writeKube(w io.Writer, k *kubeFacts) {
	if k == nil {
		return
	}
	if k.PVC != nil {
		fmt.Fprintf(w, "pvc:\t%s/%s (%s, %s, class %s)\n", k.PVC.Namespace, k.PVC.Name, k.PVC.Phase,
			strings.Join(k.PVC.AccessModes, ","), orDash(k.PVC.StorageClass))
	}
	if k.PV != nil {
		fmt.Fprintf(w, "pv:\t%s (%s, %s, reclaim %s)\n", k.PV.Name, k.PV.Phase, k.PV.Driver, k.PV.ReclaimPolicy)
	}
	fmt.Fprintln(w, "pods:")
	for _, p := range k.Pods {
		state := p.Phase
		if p.Ready {
			state += ", ready"
		}
		if p.Stuck != "" {
			state += ", " + p.Stuck
		}
		fmt.Fprintf(w, "  %s/%s\ton %s\t%s\n", p.Namespace, p.Name, orDash(p.Node), state)
	}
	none(w, len(k.Pods))
	fmt.Fprintln(w, "volumeattachments:")
	for _, va := range k.VolumeAttachments {
		state := "attached"
		if !va.Attached {
			state = "not attached"
		}
		if va.Deleting {
			state += ", being deleted"
		}
		for _, e := range []string{va.AttachError, va.DetachError} {
			if e != "" {
				state += ", " + oneLine(e)
			}
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\n", va.Node, shorten(va.Name, 24), state)
	}
	none(w, len(k.VolumeAttachments))
	fmt.Fprintln(w, "nodes:")
	for _, n := range k.Nodes {
		state := "Ready"
		if n.notReady() {
			state = "NOT READY (" + n.Ready + ")"
		}
		if n.Unschedulable {
			state += ", cordoned"
		}
		if len(n.Taints) > 0 {
			state += ", taints " + strings.Join(n.Taints, " ")
		}
		fmt.Fprintf(w, "  %s\t%s\n", n.Name, state)
	}
	none(w, len(k.Nodes))
}

// shorten cuts a long generated name, keeping its end.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n+1:]
}
