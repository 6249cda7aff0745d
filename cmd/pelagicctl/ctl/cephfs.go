package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	gocephfs "github.com/ceph/go-ceph/cephfs"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/cephfs"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// CephFS volumes follow the layout docs/ceph-csi-format.md describes
// (ceph-csi's, which the CephFS service keeps): the volume ID's location
// is the filesystem's FSCID, and the subvolume is the volume-name prefix
// and the ID's UUID, in the cluster config's subvolume group. The PV's
// volume attributes (fsName, subvolumeName) win when there is a PV.
const cephfsVolumePrefix = "csi-vol-"

// FileSystems is what pelagicctl reads of CephFS: the mgr volumes module
// and who has a subvolume mounted (the MDS's client sessions).
type FileSystems interface {
	Volumes() cephfs.Volumes
	// Names lists the filesystems, to find one by its FSCID.
	Names(ctx context.Context) ([]string, error)
	// Sessions lists the client sessions of fs (its rank 0 MDS).
	Sessions(ctx context.Context, fs string) ([]FSSession, error)
}

// FSSession is one CephFS client session: a mount somewhere.
type FSSession struct {
	ID         int64  `json:"id"`     // client global ID, as in client.4567
	Addr       string `json:"addr"`   // the client instance IP:PORT/NONCE
	Host       string `json:"host"`   // the host name the client reported
	Root       string `json:"root"`   // the path it mounted
	Entity     string `json:"entity"` // the cephx user, without client.
	MountPoint string `json:"mountPoint,omitempty"`
}

// FakeFileSystems is FileSystems over a cephfs.FakeVolumes and a fixed
// list of sessions, for tests.
type FakeFileSystems struct {
	Fake        *cephfs.FakeVolumes
	FSNames     []string
	SessionList map[string][]FSSession // by filesystem
}

// Volumes implements FileSystems.
func (f *FakeFileSystems) Volumes() cephfs.Volumes { return f.Fake }

// Names implements FileSystems.
func (f *FakeFileSystems) Names(context.Context) ([]string, error) { return f.FSNames, nil }

// Sessions implements FileSystems.
func (f *FakeFileSystems) Sessions(_ context.Context, fs string) ([]FSSession, error) {
	return f.SessionList[fs], nil
}

// cephFileSystems is FileSystems over a RADOS connection.
type cephFileSystems struct {
	conn    *ceph.Conn
	volumes cephfs.Volumes
}

func realFileSystems(cl rbd.Cluster) (FileSystems, error) {
	withConn, ok := cl.(interface{ Conn() *ceph.Conn })
	if !ok {
		return nil, errors.New("this cluster connection cannot reach CephFS")
	}
	c := withConn.Conn()
	return &cephFileSystems{conn: c, volumes: cephfs.NewMgrVolumes(c.Conn)}, nil
}

func (c *cephFileSystems) Volumes() cephfs.Volumes { return c.volumes }

func (c *cephFileSystems) Names(ctx context.Context) ([]string, error) {
	out, err := c.conn.MonCommand(ctx, map[string]any{"prefix": "fs ls", "format": "json"})
	if err != nil {
		return nil, fmt.Errorf("listing filesystems: %w", err)
	}
	var list []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		return nil, fmt.Errorf("listing filesystems: %w", err)
	}
	names := make([]string, len(list))
	for i, l := range list {
		names[i] = l.Name
	}
	return names, nil
}

// Sessions asks the MDS of rank 0 for its sessions, through a libcephfs
// handle on the same connection (initialised, never mounted).
func (c *cephFileSystems) Sessions(ctx context.Context, fs string) ([]FSSession, error) {
	out, err := util.Do(ctx, "listing the client sessions of "+fs, func() ([]byte, error) {
		m, err := gocephfs.CreateFromRados(c.conn.Conn)
		if err != nil {
			return nil, err
		}
		defer func() { _ = m.Release() }()
		if err := m.Init(); err != nil {
			return nil, err
		}
		cmd, _ := json.Marshal(map[string]string{"prefix": "session ls", "format": "json"})
		buf, status, err := m.MdsCommand(fs+":0", [][]byte{cmd})
		if err != nil {
			return nil, fmt.Errorf("%w (%s)", err, status)
		}
		return buf, nil
	})
	if err != nil {
		return nil, err
	}
	return parseSessions(out)
}

// parseSessions reads the MDS's "session ls" answer.
func parseSessions(b []byte) ([]FSSession, error) {
	var raw []struct {
		ID       int64          `json:"id"`
		Inst     string         `json:"inst"`            // "client.4567 v1:10.0.0.2:0/3371829"
		Metadata map[string]any `json:"client_metadata"` // strings, and a features object
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("reading the MDS sessions: %w", err)
	}
	out := make([]FSSession, 0, len(raw))
	for _, r := range raw {
		_, addr, _ := strings.Cut(r.Inst, " ")
		str := func(k string) string { v, _ := r.Metadata[k].(string); return v }
		out = append(out, FSSession{ID: r.ID, Addr: ceph.PlainAddr(addr), Host: str("hostname"),
			Root: str("root"), Entity: str("entity_id"), MountPoint: str("mount_point")})
	}
	return out, nil
}

// cephfsStatusReport is everything status found about a CephFS volume.
type cephfsStatusReport struct {
	Type       string     `json:"type"` // "cephfs"
	VolumeID   string     `json:"volumeID,omitempty"`
	FS         string     `json:"fs"`
	FSID       int64      `json:"fsID"`
	Group      string     `json:"group"`
	Subvolume  string     `json:"subvolume"`
	State      string     `json:"state"` // complete, snapshot-retained, or a clone's state
	Path       string     `json:"path,omitempty"`
	QuotaBytes int64      `json:"quotaBytes"` // 0: no quota
	UsedBytes  int64      `json:"usedBytes"`
	DataPool   string     `json:"dataPool,omitempty"`
	Clients    []fsClient `json:"clients"`
	Kubernetes *kubeFacts `json:"kubernetes,omitempty"`
	Unresolved []string   `json:"unresolved,omitempty"`
	Verdict    verdict    `json:"verdict"`
}

// fsClient is a client that has the subvolume mounted, and its node.
type fsClient struct {
	Client     string `json:"client"` // client.4567
	Addr       string `json:"addr"`
	Node       string `json:"node"` // the host name it reported
	User       string `json:"user"`
	MountPoint string `json:"mountPoint,omitempty"`
}

func (s *session) fileSystems() (FileSystems, error) {
	if s.tool.FileSystems != nil {
		return s.tool.FileSystems(s.raw)
	}
	return realFileSystems(s.raw)
}

// cephfsStatus describes the subvolume of a CephFS volume.
func (s *session) cephfsStatus(ctx context.Context, ref *volumeRef) (*cephfsStatusReport, error) {
	fss, err := s.fileSystems()
	if err != nil {
		return nil, err
	}
	sv, info, err := s.findSubvolume(ctx, fss, ref)
	if err != nil {
		return nil, err
	}
	r := &cephfsStatusReport{Type: kindCephFS, VolumeID: ref.VolumeID, FS: sv.FS, FSID: info.ID, Group: sv.Group,
		Subvolume: sv.Name, Clients: []fsClient{}}
	svi, err := fss.Volumes().Subvolume(ctx, sv)
	switch {
	case errors.Is(err, cephfs.ErrInProgress):
		st, cerr := fss.Volumes().CloneStatus(ctx, sv)
		r.State = "clone " + string(st.State)
		if cerr != nil {
			r.State = "clone in progress"
		}
	case err != nil:
		return nil, fmt.Errorf("subvolume %s: %w", sv, err)
	default:
		r.State, r.Path, r.QuotaBytes, r.UsedBytes, r.DataPool = string(svi.State), svi.Path, svi.BytesQuota, svi.BytesUsed,
			svi.DataPool
	}
	if r.Path != "" {
		sessions, err := fss.Sessions(ctx, sv.FS)
		if err != nil {
			r.Unresolved = append(r.Unresolved, fmt.Sprintf("who mounts it: %v", err))
		}
		for _, ses := range sessions {
			if ses.Root == r.Path || strings.HasPrefix(ses.Root, r.Path+"/") {
				r.Clients = append(r.Clients, fsClient{Client: fmt.Sprintf("client.%d", ses.ID), Addr: ses.Addr,
					Node: ses.Host, User: ses.Entity, MountPoint: ses.MountPoint})
			}
		}
		sort.Slice(r.Clients, func(i, j int) bool { return r.Clients[i].Node+r.Clients[i].Addr < r.Clients[j].Node+r.Clients[j].Addr })
	}
	var nodes []string
	for _, c := range r.Clients {
		nodes = append(nodes, c.Node)
	}
	var notes []string
	r.Kubernetes, notes = s.gatherKube(ctx, ref, nodes)
	r.Unresolved = append(append(append([]string{}, ref.Notes...), r.Unresolved...), notes...)
	r.Verdict = judgeCephFS(r)
	return r, nil
}

// findSubvolume names the volume's subvolume: the PV's fsName and
// subvolumeName, else the filesystem whose FSCID the ID carries (or --fs)
// and the layout's name.
func (s *session) findSubvolume(ctx context.Context, fss FileSystems, ref *volumeRef) (cephfs.Subvolume, cephfs.FSInfo, error) {
	vid, ok := volumeIDOf(ref.VolumeID)
	if !ok {
		return cephfs.Subvolume{}, cephfs.FSInfo{}, fmt.Errorf("%s names no CephFS volume ID", ref.Arg)
	}
	sv := cephfs.Subvolume{FS: ref.FS, Group: s.cc.SubvolumeGroup(), Name: ref.Subvolume}
	if sv.FS == "" {
		sv.FS = s.opts.fsName
	}
	if sv.Name == "" {
		sv.Name = cephfsVolumePrefix + vid.UUID
	}
	candidates := []string{sv.FS}
	if sv.FS == "" {
		names, err := fss.Names(ctx)
		if err != nil {
			return sv, cephfs.FSInfo{}, err
		}
		candidates = names
	}
	for _, name := range candidates {
		info, err := fss.Volumes().FileSystem(ctx, name)
		if err != nil {
			return sv, info, fmt.Errorf("filesystem %s: %w", name, err)
		}
		if info.ID == int64(vid.PoolID) {
			sv.FS = name
			return sv, info, nil
		}
	}
	return sv, cephfs.FSInfo{}, fmt.Errorf("no filesystem has FSCID %d (volume %s); pass --fs NAME", vid.PoolID, ref.VolumeID)
}

func judgeCephFS(r *cephfsStatusReport) verdict {
	switch {
	case strings.HasPrefix(r.State, "clone"):
		return verdict{State: stateFree, Text: "being cloned (" + r.State + "): CreateVolume answers Aborted until it completes"}
	case r.State == string(cephfs.StateSnapRetained):
		return verdict{State: stateFree, Text: "deleted, its snapshots retained: the subvolume goes with its last snapshot"}
	case len(r.Clients) == 0:
		return verdict{State: stateFree, Text: "not mounted by any client"}
	}
	nodes := map[string]bool{}
	for _, c := range r.Clients {
		nodes[c.Node] = true
	}
	names := make([]string, 0, len(nodes))
	for n := range nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	return verdict{State: stateAttached, Text: fmt.Sprintf("mounted by %d client(s) on %s (a shared volume: no fencing)",
		len(r.Clients), strings.Join(names, ", "))}
}

func (r *cephfsStatusReport) writeText(w io.Writer, _ time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	if r.VolumeID != "" {
		fmt.Fprintf(tw, "volume:\t%s\n", r.VolumeID)
	}
	fmt.Fprintf(tw, "subvolume:\t%s/%s/%s (filesystem %d)\n", r.FS, r.Group, r.Subvolume, r.FSID)
	fmt.Fprintf(tw, "state:\t%s\n", r.State)
	if r.Path != "" {
		fmt.Fprintf(tw, "path:\t%s\n", r.Path)
	}
	quota := "none"
	if r.QuotaBytes > 0 {
		quota = humanBytes(r.QuotaBytes)
	}
	fmt.Fprintf(tw, "quota:\t%s, used %s\n", quota, humanBytes(r.UsedBytes))
	writeKube(tw, r.Kubernetes)
	fmt.Fprintln(tw, "clients:")
	for _, c := range r.Clients {
		fmt.Fprintf(tw, "  %s at %s\tnode %s\tas client.%s\t%s\n", c.Client, c.Addr, orDash(c.Node), c.User, orDash(c.MountPoint))
	}
	none(tw, len(r.Clients))
	for _, u := range r.Unresolved {
		fmt.Fprintf(tw, "unresolved:\t%s\n", u)
	}
	fmt.Fprintf(tw, "verdict:\t%s\n", r.Verdict.Text)
}
