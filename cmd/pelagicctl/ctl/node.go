package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// Host is the node the node commands look at: its mappers, its mounts,
// /proc, and how to signal a process. Zero fields take this machine's.
type Host struct {
	Mappers  []mapper.Mapper
	Mounts   mount.Mounter
	ProcRoot string
	Signal   func(pid int, sig syscall.Signal) error
	// NodeID is the node plugin's node ID, for its mapping records;
	// default --node, else the host name.
	NodeID string
}

// host returns the Tool's Host with this machine's defaults filled in.
func (s *session) host() (*Host, error) {
	h := Host{}
	if s.tool.Host != nil {
		h = *s.tool.Host
	}
	runner := util.ExecRunner{DefaultTimeout: s.opts.timeout}
	if h.Mounts == nil {
		h.Mounts = mount.NewHostMounter(mount.Config{Runner: runner})
	}
	if h.Mappers == nil {
		reg, err := mapper.NewRegistry(mapper.Config{Runner: runner, Mounts: h.Mounts, StateDir: s.opts.stateDir})
		if err != nil {
			return nil, err
		}
		h.Mappers = reg.All()
	}
	if h.ProcRoot == "" {
		h.ProcRoot = "/proc"
	}
	if h.Signal == nil {
		h.Signal = syscall.Kill
	}
	if s.opts.node != "" {
		h.NodeID = s.opts.node
	}
	if h.NodeID == "" {
		h.NodeID, _ = os.Hostname()
	}
	return &h, nil
}

// showMappedReport is what this node maps.
type showMappedReport struct {
	Node     string       `json:"node"`
	Mappings []mappedLine `json:"mappings"`
	Notes    []string     `json:"notes,omitempty"`
}

// mappedLine is one mapping with its paths, pods and holders.
type mappedLine struct {
	Mapper     string       `json:"mapper"`
	Device     string       `json:"device"`
	Pool       string       `json:"pool"`
	Namespace  string       `json:"radosNamespace,omitempty"`
	Image      string       `json:"image"`
	ClientAddr string       `json:"clientAddr,omitempty"`
	ClientID   string       `json:"clientID,omitempty"`
	VolumeID   string       `json:"volumeID,omitempty"`
	Staging    string       `json:"staging,omitempty"`
	Targets    []string     `json:"targets"`
	Pods       []podRef     `json:"pods"`
	Holders    []procHolder `json:"holders"`
	mapping    mapper.Mapping
	mapperImpl mapper.Mapper
}

// podRef is a pod the kubelet's target path names.
type podRef struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	PV        string `json:"pv,omitempty"`
}

// procHolder is a process holding the device, or a file below its mounts.
type procHolder struct {
	PID     int    `json:"pid"`
	Command string `json:"command"`
	Path    string `json:"path"`
}

// stagedVolume is the part of the node plugin's stage record pelagicctl
// reads: which mapping, and where it is published.
type stagedVolume struct {
	VolumeID string               `json:"volumeID"`
	Mapping  mapper.Mapping       `json:"mapping"`
	Targets  []nodefs.Publication `json:"targets"`
}

func runShowMapped(ctx context.Context, s *session, _ []string) (report, error) {
	h, err := s.host()
	if err != nil {
		return nil, err
	}
	return s.showMapped(ctx, h)
}

func (s *session) showMapped(ctx context.Context, h *Host) (*showMappedReport, error) {
	r := &showMappedReport{Node: h.NodeID, Mappings: []mappedLine{}}
	staged := map[string]struct {
		path string
		rec  stagedVolume
	}{}
	for _, e := range (nodefs.StagedIndex{Dir: s.opts.stateDir}).All() {
		var rec stagedVolume
		if err := nodefs.ReadRecord(e.StagingPath, &rec); err != nil {
			r.Notes = append(r.Notes, fmt.Sprintf("staged volume %s: %v", e.VolumeID, err))
			continue
		}
		staged[rec.Mapping.Device] = struct {
			path string
			rec  stagedVolume
		}{e.StagingPath, rec}
	}
	for _, m := range h.Mappers {
		list, err := m.List(ctx)
		if err != nil {
			if !errors.Is(err, mapper.ErrUnavailable) {
				r.Notes = append(r.Notes, fmt.Sprintf("%s: %v", m.Name(), err))
			}
			continue
		}
		for _, mp := range list {
			l := mappedLine{Mapper: mp.Mapper, Device: mp.Device, Pool: mp.Pool, Namespace: mp.RadosNamespace, Image: mp.Image,
				ClientAddr: mp.ClientAddr, ClientID: mp.ClientID, Targets: []string{}, Pods: []podRef{}, mapping: mp, mapperImpl: m}
			if st, ok := staged[mp.Device]; ok {
				l.VolumeID, l.Staging = st.rec.VolumeID, st.path
				if l.ClientAddr == "" {
					l.ClientAddr, l.ClientID = st.rec.Mapping.ClientAddr, st.rec.Mapping.ClientID
				}
				for _, t := range st.rec.Targets {
					l.Targets = append(l.Targets, t.Path)
					if p, ok := podOfPath(s.opts.kubeletDir, t.Path); ok {
						l.Pods = append(l.Pods, p)
					}
				}
			} else {
				r.Notes = append(r.Notes, fmt.Sprintf("%s (%s/%s) has no stage record in %s: mapped outside the node plugin, "+
					"or a plugin with another --state-dir", mp.Device, mp.Pool, mp.Image, s.opts.stateDir))
			}
			l.Holders = procHolders(h.ProcRoot, mp.Device, append([]string{l.Staging}, l.Targets...))
			r.Mappings = append(r.Mappings, l)
		}
	}
	s.namePods(ctx, r)
	sort.Slice(r.Mappings, func(i, j int) bool { return r.Mappings[i].Device < r.Mappings[j].Device })
	return r, nil
}

// podOfPath reads the pod UID and PV from a kubelet target path:
// KUBELET/pods/UID/volumes/kubernetes.io~csi/PV/mount for a filesystem,
// KUBELET/plugins/kubernetes.io/csi/volumeDevices/publish/PV/UID for a block volume.
func podOfPath(kubeletDir, path string) (podRef, bool) {
	rel, err := filepath.Rel(kubeletDir, path)
	if err != nil || strings.HasPrefix(rel, "..") {
		return podRef{}, false
	}
	parts := strings.Split(rel, string(filepath.Separator))
	switch {
	case len(parts) >= 5 && parts[0] == "pods" && parts[2] == "volumes" && parts[3] == "kubernetes.io~csi":
		return podRef{UID: parts[1], PV: parts[4]}, true
	case len(parts) >= 7 && parts[0] == "plugins" && parts[3] == "volumeDevices" && parts[4] == "publish":
		return podRef{UID: parts[6], PV: parts[5]}, true
	}
	return podRef{}, false
}

// namePods fills in the names of the pods by UID, with Kubernetes.
func (s *session) namePods(ctx context.Context, r *showMappedReport) {
	if s.kube == nil {
		for _, m := range r.Mappings {
			if len(m.Pods) > 0 {
				r.Notes = append(r.Notes, s.kubeNote+"; pods are named by UID")
				return
			}
		}
		return
	}
	byUID := map[string][2]string{}
	lctx, cancel := s.kube.bounded(ctx)
	defer cancel()
	pods, err := s.kube.c.CoreV1().Pods("").List(lctx, metav1.ListOptions{})
	if err != nil {
		r.Notes = append(r.Notes, fmt.Sprintf("naming pods: %v", err))
		return
	}
	for _, p := range pods.Items {
		byUID[string(p.UID)] = [2]string{p.Namespace, p.Name}
	}
	for i := range r.Mappings {
		for j := range r.Mappings[i].Pods {
			p := &r.Mappings[i].Pods[j]
			if n, ok := byUID[p.UID]; ok {
				p.Namespace, p.Name = n[0], n[1]
			}
		}
	}
}

// procHolders scans /proc for processes with the device, or a file below
// one of the paths, open (or as their working directory). It never stats
// below the paths: a hung mount must not hang it.
func procHolders(procRoot, device string, paths []string) []procHolder {
	out := []procHolder{}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return out
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join(procRoot, e.Name())
		links := []string{filepath.Join(dir, "cwd")}
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			links = append(links, filepath.Join(dir, "fd", fd.Name()))
		}
		for _, l := range links {
			target, err := os.Readlink(l)
			if err != nil || !holds(target, device, paths) {
				continue
			}
			out = append(out, procHolder{PID: pid, Command: commandOf(dir), Path: target})
			break
		}
	}
	return out
}

func holds(target, device string, paths []string) bool {
	if device != "" && target == device {
		return true
	}
	for _, p := range paths {
		if p != "" && (target == p || strings.HasPrefix(target, p+"/")) {
			return true
		}
	}
	return false
}

func commandOf(procDir string) string {
	b, err := os.ReadFile(filepath.Join(procDir, "comm"))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

func (r *showMappedReport) writeText(w io.Writer, _ time.Time) {
	if len(r.Mappings) == 0 {
		fmt.Fprintf(w, "nothing mapped on %s\n", r.Node)
	}
	for _, m := range r.Mappings {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "%s\t%s %s/%s\n", m.Device, m.Mapper, m.Pool, m.Image)
		fmt.Fprintf(tw, "  client:\t%s\n", strings.TrimSpace(orDash(m.ClientID)+" at "+orDash(m.ClientAddr)))
		if m.VolumeID != "" {
			fmt.Fprintf(tw, "  volume:\t%s\n", m.VolumeID)
		}
		fmt.Fprintf(tw, "  staging:\t%s\n", orDash(m.Staging))
		for _, t := range m.Targets {
			fmt.Fprintf(tw, "  target:\t%s\n", t)
		}
		for _, p := range m.Pods {
			name := "uid " + p.UID
			if p.Name != "" {
				name = p.Namespace + "/" + p.Name
			}
			fmt.Fprintf(tw, "  pod:\t%s (PV %s)\n", name, orDash(p.PV))
		}
		for _, h := range m.Holders {
			fmt.Fprintf(tw, "  held by:\tpid %d (%s) on %s\n", h.PID, h.Command, h.Path)
		}
		tw.Flush()
	}
	writeNotes(w, nil, r.Notes)
}

// unmapReport says what unmap did, step by step.
type unmapReport struct {
	Device   string       `json:"device"`
	Image    string       `json:"image"`
	VolumeID string       `json:"volumeID,omitempty"`
	Killed   []procHolder `json:"killed,omitempty"`
	Steps    []string     `json:"steps"`
}

func runUnmap(ctx context.Context, s *session, args []string) (report, error) {
	h, err := s.host()
	if err != nil {
		return nil, err
	}
	mapped, err := s.showMapped(ctx, h)
	if err != nil {
		return nil, err
	}
	m, err := s.findMapped(ctx, mapped, args[0])
	if err != nil {
		return nil, err
	}
	r := &unmapReport{Device: m.Device, Image: m.Pool + "/" + m.Image, VolumeID: m.VolumeID, Steps: []string{}}
	if len(m.Holders) > 0 {
		if !s.opts.kill {
			return nil, fmt.Errorf("%s is held by %s: stop them, or pass --kill to send them SIGTERM; nothing was unmounted",
				m.Device, describeHolders(m.Holders))
		}
		if err := killHolders(ctx, h, m.Holders); err != nil {
			return nil, err
		}
		r.Killed = m.Holders
		r.Steps = append(r.Steps, "sent SIGTERM to "+describeHolders(m.Holders)+"; they exited")
	}
	for _, t := range m.Targets {
		if err := h.Mounts.Unmount(ctx, t); err != nil {
			return r, fmt.Errorf("unmounting target %s: %w (steps done: %s)", t, err, strings.Join(r.Steps, "; "))
		}
		r.Steps = append(r.Steps, "unmounted target "+t)
	}
	if m.Staging != "" {
		if err := h.Mounts.Unmount(ctx, m.Staging); err != nil {
			return r, fmt.Errorf("unmounting staging path %s: %w (steps done: %s)", m.Staging, err, strings.Join(r.Steps, "; "))
		}
		r.Steps = append(r.Steps, "unmounted staging path "+m.Staging)
	}
	if err := m.mapperImpl.Unmap(ctx, m.mapping, mapper.UnmapOptions{}); err != nil {
		return r, fmt.Errorf("unmapping %s: %w (steps done: %s)", m.Device, err, strings.Join(r.Steps, "; "))
	}
	r.Steps = append(r.Steps, "unmapped "+m.Device)
	r.Steps = append(r.Steps, s.forgetStaged(ctx, h, m)...)
	return r, nil
}

// findMapped finds the mapping a DEVICE or VOLUME argument names.
func (s *session) findMapped(ctx context.Context, r *showMappedReport, arg string) (*mappedLine, error) {
	var volumeID, pool, image string
	if !strings.HasPrefix(arg, "/dev/") {
		ref, err := s.resolveNames(ctx, arg)
		if err != nil {
			return nil, err
		}
		volumeID, pool, image = ref.VolumeID, ref.Pool, ref.Image
	}
	for i := range r.Mappings {
		m := &r.Mappings[i]
		switch {
		case m.Device == arg,
			volumeID != "" && m.VolumeID == volumeID,
			image != "" && m.Pool == pool && m.Image == image:
			return m, nil
		}
	}
	return nil, fmt.Errorf("%s is not mapped on this node (see %s showmapped)", arg, s.tool.name())
}

func describeHolders(hs []procHolder) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = fmt.Sprintf("pid %d (%s)", h.PID, h.Command)
	}
	return strings.Join(parts, ", ")
}

// killHolders sends SIGTERM and waits, until --timeout, for them to exit.
func killHolders(ctx context.Context, h *Host, hs []procHolder) error {
	for _, p := range hs {
		if err := h.Signal(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("SIGTERM to pid %d (%s): %w", p.PID, p.Command, err)
		}
	}
	for {
		alive := 0
		for _, p := range hs {
			if _, err := os.Stat(filepath.Join(h.ProcRoot, strconv.Itoa(p.PID))); err == nil {
				alive++
			}
		}
		if alive == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of the processes holding the device still run after SIGTERM: %w", alive, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// forgetStaged removes what the node plugin kept of the unmapped volume,
// as NodeUnstage does: its stage record and index entry, and, with Ceph
// access, this node's mapping record naming the gone client instance.
func (s *session) forgetStaged(ctx context.Context, h *Host, m *mappedLine) []string {
	var steps []string
	if m.Staging != "" {
		if err := nodefs.RemoveRecord(m.Staging); err == nil {
			steps = append(steps, "removed the stage record of "+m.Staging)
		}
		if m.VolumeID != "" {
			_ = (nodefs.StagedIndex{Dir: s.opts.stateDir}).Remove(m.VolumeID)
		}
	}
	if s.cluster == nil {
		return append(steps, fmt.Sprintf("no key given: node %s's mapping record of %s stays in Ceph, so the next "+
			"publish elsewhere fences the (gone) client %s; rerun with a key to remove it", h.NodeID, m.Image, m.ClientAddr))
	}
	pool, err := s.cluster.Pool(ctx, m.Pool, m.Namespace)
	if err == nil {
		var removed bool
		if removed, err = rbd.RemoveMappingRecord(ctx, pool, m.Image, h.NodeID, m.ClientAddr); err == nil && removed {
			return append(steps, fmt.Sprintf("removed node %s's mapping record of %s/%s", h.NodeID, m.Pool, m.Image))
		} else if err == nil {
			return append(steps, fmt.Sprintf("no mapping record of node %s names %s (see --node)", h.NodeID, m.ClientAddr))
		}
	}
	return append(steps, fmt.Sprintf("the mapping record stays: %v", err))
}

func (r *unmapReport) writeText(w io.Writer, _ time.Time) {
	fmt.Fprintf(w, "unmap %s (%s):\n", r.Device, r.Image)
	for _, st := range r.Steps {
		fmt.Fprintf(w, "  %s\n", st)
	}
}
