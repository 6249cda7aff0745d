package rbd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/pelagic-csi/pelagic/pkg/mapper"
)

func (e *nodeEnv) unstage(t *testing.T) {
	t.Helper()
	if _, err := e.n.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{
		VolumeId: e.volID, StagingTargetPath: e.staging}); err != nil {
		t.Fatalf("NodeUnstageVolume: %v", err)
	}
}

func (e *nodeEnv) mappingRecord(t *testing.T) (NodeMapping, bool) {
	t.Helper()
	r, err := readRecords(context.Background(), e.pool, nodeTestImage)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := r.Mappings[nodeTestNode]
	return m, ok
}

// TestStageRecordsMappingUntilCleanUnmap: the record names the mapping's
// own client instance and goes only with a clean unmap.
func TestStageRecordsMappingUntilCleanUnmap(t *testing.T) {
	e := newNodeEnv(t)
	e.stage(t, e.stageReq(mountCap(rwo)))
	m, ok := e.mappingRecord(t)
	if !ok || m.ClientAddr != e.record(t).Mapping.ClientAddr || m.ClientAddr == "" {
		t.Fatalf("mapping record %+v (present %v); want the client of %+v", m, ok, e.record(t).Mapping)
	}
	e.unstage(t)
	if _, ok := e.mappingRecord(t); ok {
		t.Fatal("mapping record stays after a clean unstage")
	}
}

// TestUnstageAfterRestartQueuesRecordRemoval: a restarted plugin has no
// connection at unstage (the request carries no secrets); the removal
// waits in the state directory and is done by the next stage.
func TestUnstageAfterRestartQueuesRecordRemoval(t *testing.T) {
	e := newNodeEnv(t)
	state := t.TempDir()
	e.n.opts.StateDir = state
	e.stage(t, e.stageReq(mountCap(rwo)))
	restarted := NewNode(e.n.opts)
	e.n = restarted
	e.unstage(t)
	if _, ok := e.mappingRecord(t); !ok {
		t.Fatal("the record went without a connection?")
	}
	if _, err := os.Stat(filepath.Join(state, "forget.json")); err != nil {
		t.Fatalf("no queued removal: %v", err)
	}
	// Another volume's stage reaches the cluster and drains the queue.
	if err := e.pool.CreateImage(context.Background(), ImageSpec{Name: "csi-vol-other", Size: gib}); err != nil {
		t.Fatal(err)
	}
	req := e.stageReq(mountCap(rwo))
	req.VolumeId = nodeVolID("0a1b2c3d-0000-4000-8000-000000000002")
	req.StagingTargetPath = filepath.Join(e.root, "other-staging")
	req.VolumeContext[CtxImageName] = "csi-vol-other"
	e.stage(t, req)
	if _, ok := e.mappingRecord(t); ok {
		t.Fatal("the queued removal was not done by the next stage")
	}
	if _, err := os.Stat(filepath.Join(state, "forget.json")); !os.IsNotExist(err) {
		t.Fatalf("queue file left behind: %v", err)
	}
}

// TestQueuedRemovalSparesNewerMapping: a queued removal names the client
// it unmapped; a newer mapping's record is left alone.
func TestQueuedRemovalSparesNewerMapping(t *testing.T) {
	e := newNodeEnv(t)
	e.n.opts.StateDir = t.TempDir()
	e.n = NewNode(e.n.opts)
	e.n.forgets.add(context.Background(), pendingForget{ClusterID: testClusterID, Pool: testPool, Image: nodeTestImage,
		ClientAddr: "192.0.2.1:0/1"})
	e.stage(t, e.stageReq(mountCap(rwo))) // records the FakeMapper's next instance, 192.0.2.1:0/1000
	if m, ok := e.mappingRecord(t); !ok || m.ClientAddr != e.record(t).Mapping.ClientAddr {
		t.Fatalf("the new mapping's record was removed: %+v %v", m, ok)
	}
}

// TestRestageAfterFenceMapsAfresh: this node's instance was fenced while
// it was away; restaging must not mount the dead mapping again.
func TestRestageAfterFenceMapsAfresh(t *testing.T) {
	e := newNodeEnv(t)
	e.stage(t, e.stageReq(mountCap(rwo)))
	old := e.record(t).Mapping
	e.setMeta(t, metaFencePrefix+old.ClientAddr, Fence{Node: nodeTestNode, ClientAddr: old.ClientAddr,
		Expires: time.Now().Add(time.Hour), State: FenceDone})
	e.stage(t, e.stageReq(mountCap(rwo)))
	fresh := e.record(t).Mapping
	if fresh.ClientAddr == old.ClientAddr {
		t.Fatalf("restaged on the fenced instance %s", old.ClientAddr)
	}
	if calls := e.krbd.UnmapCalls(); len(calls) != 1 || !calls[0].Opts.Force {
		t.Fatalf("unmap calls %+v; want one forced unmap of the fenced mapping", calls)
	}
	if m, _ := e.mappingRecord(t); m.ClientAddr != fresh.ClientAddr {
		t.Fatalf("mapping record %+v; want the fresh instance %s", m, fresh.ClientAddr)
	}
}

// TestStageChecksAgainAfterMapping: another node takes the volume while
// this one maps it; the record is not written and the mapping is undone.
func TestStageChecksAgainAfterMapping(t *testing.T) {
	e := newNodeEnv(t)
	raced := false
	e.pool.Before = func(method, _ string) {
		if method == "UpdateRecords" && !raced {
			raced = true
			e.setMeta(t, metaAttachPrefix+"node-b", Attachment{Node: "node-b", Mode: rwo.String()})
			e.setMeta(t, metaMapPrefix+"node-b", NodeMapping{Node: "node-b", ClientAddr: otherNodeAddr})
		}
	}
	_, err := e.n.NodeStageVolume(context.Background(), e.stageReq(mountCap(rwo)))
	wantNodeErr(t, err, codes.FailedPrecondition, "node node-b", otherNodeAddr)
	if _, ok := e.mappingRecord(t); ok {
		t.Fatal("recorded a mapping after another node took the volume")
	}
	if len(e.krbd.UnmapCalls()) != 1 {
		t.Fatalf("the mapping was not undone: %+v", e.krbd.UnmapCalls())
	}
	if _, err := readStageRecord(e.staging); !os.IsNotExist(err) {
		t.Fatalf("stage record written: %v", err)
	}
}

// TestStageRecordsFromTheCheck: a first stage reads the image's records
// once, in its holder check, and writes its mapping record on them.
func TestStageRecordsFromTheCheck(t *testing.T) {
	e := newNodeEnv(t)
	reads, writes := e.pool.Calls("Records"), e.pool.Calls("UpdateRecords")
	e.stage(t, e.stageReq(mountCap(rwo)))
	if n := e.pool.Calls("Records") - reads; n != 1 {
		t.Errorf("%d reads of the records, want 1", n)
	}
	if n := e.pool.Calls("UpdateRecords") - writes; n != 1 {
		t.Errorf("%d writes of the records, want 1", n)
	}
	if m, ok := e.mappingRecord(t); !ok || m.Node != nodeTestNode {
		t.Fatalf("mapping record %+v, %v", m, ok)
	}
}

// TestMapperWatchers: the fuse mapper finds its rbd-fuse among the watchers
// the node's own connection lists, with their global IDs.
func TestMapperWatchers(t *testing.T) {
	pool := NewFakePool("rbd", 1)
	pool.AddImage("csi-vol-1", 1<<30, nil, Watcher{Addr: "10.0.0.1:0/123", ID: 4123, Cookie: 7})
	w := MapperWatchers{Connector: NewFakeConnector(NewFakeCluster(testClusterID, pool))}
	got, err := w.Watchers(context.Background(), mapper.Image{ClusterID: testClusterID, Pool: "rbd", Name: "csi-vol-1"})
	want := []mapper.Watcher{{Addr: "10.0.0.1:0/123", Client: 4123}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Watchers = %v, %v; want %v", got, err, want)
	}
	if _, err := w.Watchers(context.Background(), mapper.Image{ClusterID: testClusterID, Pool: "rbd", Name: "gone"}); !errors.Is(err, ErrImageNotFound) {
		t.Fatalf("Watchers of a missing image = %v, want ErrImageNotFound", err)
	}
}
