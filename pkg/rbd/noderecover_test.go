package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/pelagic-csi/pelagic/pkg/mapper"
	"github.com/pelagic-csi/pelagic/pkg/nodefs"
)

// stagedAndPublished stages the volume and publishes it at two targets,
// the second read-only.
func (e *nodeEnv) stagedAndPublished(t *testing.T, c *csi.VolumeCapability) (rw, ro string) {
	t.Helper()
	e.hasFilesystem(nodeTestDev, "ext4")
	e.stage(t, e.stageReq(c))
	rw, ro = e.target("pod1"), e.target("pod2")
	e.publish(t, e.publishReq(rw, c))
	req := e.publishReq(ro, c)
	req.Readonly = true
	e.publish(t, req)
	return rw, ro
}

// TestNodeStageReplacesDeadMapping: the daemon of a staged and published
// volume died. The next NodeStage takes down the dead mounts (lazily: a
// pod may hold files there), unmaps by force, and only then records the
// new client instance in place of the old; it formats nothing, mounts the
// new device and binds every target again as it was.
func TestNodeStageReplacesDeadMapping(t *testing.T) {
	for _, block := range []bool{false, true} {
		t.Run(accessType(block), func(t *testing.T) {
			e := newNodeEnv(t)
			c := mountCap(rwo)
			if block {
				c = blockCap(rwo)
			}
			rw, ro := e.stagedAndPublished(t, c)
			old := e.record(t).Mapping
			e.krbd.Kill(old.Device)
			e.hasFilesystem("/dev/fake1", "ext4") // the next device the fake hands out: the same image
			calls0 := len(e.mnt.CallLog())

			var atRecord []string // what had happened when the new record was written
			e.pool.Before = func(method, _ string) {
				if method != "UpdateRecords" {
					return
				}
				atRecord = append(slices.Clone(e.mnt.CallLog()[calls0:]), fmt.Sprintf("%d Unmap", len(e.krbd.UnmapCalls())))
			}
			e.stage(t, e.stageReq(c))

			fresh := e.record(t)
			if fresh.Mapping.ClientAddr == old.ClientAddr || fresh.Mapping.Device == old.Device {
				t.Fatalf("restaged on the dead mapping %+v", old)
			}
			if m, _ := e.mappingRecord(t); m.ClientAddr != fresh.Mapping.ClientAddr {
				t.Fatalf("mapping record names %s, want the new instance %s", m.ClientAddr, fresh.Mapping.ClientAddr)
			}
			if calls := e.krbd.UnmapCalls(); len(calls) != 1 || !calls[0].Opts.Force || calls[0].Mapping.Device != old.Device {
				t.Fatalf("unmap calls %+v; want one forced unmap of %s", calls, old.Device)
			}
			wantBefore := []string{"Detach " + rw, "Detach " + ro}
			if !block {
				wantBefore = append(wantBefore, "Detach "+e.staging)
			}
			if !slices.Equal(atRecord, append(wantBefore, "1 Unmap")) {
				t.Fatalf("when the new instance was recorded: %q; want the old mounts detached and the old mapping unmapped, nothing mounted", atRecord)
			}
			if got := e.calls("Format"); len(got) > 0 {
				t.Errorf("Format calls %q; the volume was formatted again", got)
			}
			if !slices.Equal(targetPaths(fresh), []string{rw, ro}) {
				t.Errorf("recorded targets %q, want %q", targetPaths(fresh), []string{rw, ro})
			}
			source := e.staging
			if block {
				source = fresh.Mapping.Device
			} else if m := e.mnt.Mounts[e.staging]; m.Device != fresh.Mapping.Device {
				t.Errorf("staging mount %+v, want the new device %s", m, fresh.Mapping.Device)
			}
			for target, readOnly := range map[string]bool{rw: false, ro: true} {
				if m := e.mnt.Mounts[target]; m.BindOf != source || m.ReadOnly != readOnly {
					t.Errorf("target %s: %+v; want a bind of %s, read-only %v", target, m, source, readOnly)
				}
			}
			// Healthy again, and a further stage changes nothing.
			resp, err := e.n.NodeGetVolumeHealth(context.Background(), &csi.NodeGetVolumeHealthRequest{VolumeId: e.volID})
			if err != nil || len(resp.GetVolumeHealth().GetHealthStatuses()) != 0 {
				t.Fatalf("health after the replacement: %v, %v", resp, err)
			}
			e.stage(t, e.stageReq(c))
			if n := len(e.krbd.MapCalls()); n != 2 {
				t.Errorf("%d Map calls; want the first and the replacement only", n)
			}
		})
	}
}

// TestReplacementWaitsForTheOldWatch: a killed daemon's watch stays until
// the OSD times it out; the new instance is recorded only once it is gone.
func TestReplacementWaitsForTheOldWatch(t *testing.T) {
	e := newNodeEnv(t)
	e.stagedAndPublished(t, mountCap(rwo))
	old := e.record(t).Mapping
	e.krbd.Kill(old.Device)
	e.pool.SetWatchers(nodeTestImage, Watcher{Addr: old.ClientAddr, ID: 4000})

	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := e.n.NodeStageVolume(short, e.stageReq(mountCap(rwo)))
	wantNodeErr(t, err, codes.DeadlineExceeded, old.ClientAddr)
	if len(e.krbd.MapCalls()) != 1 {
		t.Fatal("mapped again while the old instance's watch was listed")
	}
	if m, _ := e.mappingRecord(t); m.ClientAddr != old.ClientAddr {
		t.Fatalf("the old instance's record was replaced early: %+v", m)
	}
	if rec := e.record(t); rec.Mapping.Device != old.Device {
		t.Fatalf("the stage record moved on: %+v", rec.Mapping)
	}

	go func() {
		time.Sleep(300 * time.Millisecond)
		e.pool.SetWatchers(nodeTestImage)
	}()
	e.stage(t, e.stageReq(mountCap(rwo))) // the retry finishes the job
	if rec := e.record(t); rec.Mapping.ClientAddr == old.ClientAddr {
		t.Fatal("still on the old instance")
	}
}

// TestReplacementRefusedWhenAnotherNodeTookTheVolume: while this node's
// mapping was dead, another node was given the volume; the replacement is
// refused by name and this node's old record is not touched.
func TestReplacementRefusedWhenAnotherNodeTookTheVolume(t *testing.T) {
	e := newNodeEnv(t)
	e.stagedAndPublished(t, mountCap(rwo))
	old := e.record(t).Mapping
	e.krbd.Kill(old.Device)
	e.setMeta(t, metaAttachPrefix+"node-b", Attachment{Node: "node-b", Mode: rwo.String()})
	e.otherNodeMaps(t)
	_, err := e.n.NodeStageVolume(context.Background(), e.stageReq(mountCap(rwo)))
	wantNodeErr(t, err, codes.FailedPrecondition, "node-b")
	if m, _ := e.mappingRecord(t); m.ClientAddr != old.ClientAddr {
		t.Fatalf("mapping record %+v; want the old one untouched", m)
	}
	if e.krbd.NewMappings() != 1 {
		t.Fatal("mapped while another node holds the volume")
	}
}

// TestNodePublishReplacesDeadMapping: NodePublish maps a dead mapping
// again with the secrets of the volume's NodeStage in this process, or
// with its own; a restarted plugin without either says NodeStage will.
func TestNodePublishReplacesDeadMapping(t *testing.T) {
	ctx := context.Background()
	t.Run("same process", func(t *testing.T) {
		e := newNodeEnv(t)
		rw, _ := e.stagedAndPublished(t, mountCap(rwo))
		old := e.record(t).Mapping
		e.krbd.Kill(old.Device)
		e.publish(t, e.publishReq(rw, mountCap(rwo)))
		if rec := e.record(t); rec.Mapping.ClientAddr == old.ClientAddr {
			t.Fatal("publish left the dead mapping")
		}
		if m := e.mnt.Mounts[rw]; m.Device != e.record(t).Mapping.Device {
			t.Fatalf("target %+v, want the new device", m)
		}
	})
	t.Run("restarted plugin", func(t *testing.T) {
		e := newNodeEnv(t)
		rw, _ := e.stagedAndPublished(t, mountCap(rwo))
		e.krbd.Kill(e.record(t).Mapping.Device)
		e.n = NewNode(e.n.opts)
		_, err := e.n.NodePublishVolume(ctx, e.publishReq(rw, mountCap(rwo)))
		wantNodeErr(t, err, codes.FailedPrecondition, "NodeStage")
		if len(e.krbd.MapCalls()) != 1 {
			t.Fatal("mapped without credentials?")
		}
		req := e.publishReq(rw, mountCap(rwo))
		req.Secrets = testSecrets // a class with a node-publish secret
		e.publish(t, req)
		if len(e.krbd.MapCalls()) != 2 {
			t.Fatal("the publish with secrets did not map again")
		}
	})
}

func TestNodeStageIncompatible(t *testing.T) {
	for _, tc := range []struct {
		name          string
		staged, again *csi.VolumeCapability
		code          codes.Code
	}{
		{"same capability", mountCap(rwo), mountCap(rwo), codes.OK},
		{"filesystem, then block", mountCap(rwo), blockCap(rwo), codes.AlreadyExists},
		{"block, then filesystem", blockCap(rwo), mountCap(rwo), codes.AlreadyExists},
		{"writable, then read-only", mountCap(rwo), mountCap(singleReader), codes.AlreadyExists},
		{"read-only, then writable", blockCap(multiReader), blockCap(rwx), codes.AlreadyExists},
		{"another writable mode", mountCap(rwo), mountCap(singleWriter), codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			e.hasFilesystem(nodeTestDev, "ext4")
			e.stage(t, e.stageReq(tc.staged))
			calls := len(e.mnt.CallLog())
			_, err := e.n.NodeStageVolume(context.Background(), e.stageReq(tc.again))
			wantCode(t, err, tc.code)
			if tc.code != codes.OK {
				for _, c := range e.mnt.CallLog()[calls:] {
					if !strings.HasPrefix(c, "IsMountPoint") {
						t.Errorf("a refused stage called %s", c)
					}
				}
			}
		})
	}
}

func TestNodePublishIncompatible(t *testing.T) {
	base := mountCapFS(rwo, "ext4", "noatime")
	for _, tc := range []struct {
		name     string
		again    *csi.VolumeCapability
		readOnly bool
		code     codes.Code
	}{
		{"same", mountCapFS(rwo, "ext4", "noatime"), false, codes.OK},
		{"same, flags unordered and fs type defaulted", mountCapFS(rwo, "", "noatime"), false, codes.OK},
		{"read-only now", mountCapFS(rwo, "ext4", "noatime"), true, codes.AlreadyExists},
		{"other mount flags", mountCapFS(rwo, "ext4", "nodev"), false, codes.AlreadyExists},
		{"other access mode", mountCapFS(singleWriter, "ext4", "noatime"), false, codes.AlreadyExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			e.stage(t, e.stageReq(base))
			target := e.target("pod1")
			e.publish(t, e.publishReq(target, base))
			req := e.publishReq(target, tc.again)
			req.Readonly = tc.readOnly
			_, err := e.n.NodePublishVolume(context.Background(), req)
			wantCode(t, err, tc.code)
			if got := e.calls("BindMount"); len(got) != 1 {
				t.Errorf("BindMount calls %q", got)
			}
		})
	}
}

func TestPublicationReadsOlderRecords(t *testing.T) {
	var rec stageRecord
	if err := json.Unmarshal([]byte(`{"volumeID":"v","targets":["/a",{"path":"/b","readOnly":true,"capability":"SINGLE_NODE_WRITER/block"}]}`), &rec); err != nil {
		t.Fatal(err)
	}
	want := []nodefs.Publication{{Path: "/a"}, {Path: "/b", ReadOnly: true, Capability: "SINGLE_NODE_WRITER/block"}}
	if !slices.Equal(rec.Targets, want) {
		t.Fatalf("targets %+v, want %+v", rec.Targets, want)
	}
	// An older record compares with nothing: republishing it succeeds.
	if why := (nodefs.Publication{Path: "/a"}).Conflict(capabilityKey(blockCap(rwx)), true); why != "" {
		t.Fatalf("conflict with an older record: %s", why)
	}
}

// resizingMapper is a FakeMapper that also grows its devices.
type resizingMapper struct {
	*mapper.FakeMapper
	err error
}

func (r resizingMapper) Resize(context.Context, mapper.Mapping) error { return r.err }

func TestNodeExpandCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code codes.Code
	}{
		{"grown", nil, codes.OK},
		{"device busy: try again", fmt.Errorf("%w: losetup", mapper.ErrBusy), codes.Unavailable},
		{"mapper cannot run here", fmt.Errorf("%w: losetup missing", mapper.ErrUnavailable), codes.FailedPrecondition},
		{"timeout", context.DeadlineExceeded, codes.DeadlineExceeded},
		{"other", errors.New("EIO"), codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			reg, err := mapper.RegistryOf("", resizingMapper{e.krbd, tc.err})
			if err != nil {
				t.Fatal(err)
			}
			e.n.opts.Mappers = reg
			c := blockCap(rwo)
			e.stage(t, e.stageReq(c))
			target := e.target("pod1")
			e.publish(t, e.publishReq(target, c))
			e.mnt.Sizes[nodeTestDev] = 2 * gib
			resp, err := e.n.NodeExpandVolume(context.Background(), &csi.NodeExpandVolumeRequest{VolumeId: e.volID,
				VolumePath: target, StagingTargetPath: e.staging, VolumeCapability: c})
			wantCode(t, err, tc.code)
			if err == nil && resp.GetCapacityBytes() != 2*gib {
				t.Errorf("capacity %d, want the grown device's", resp.GetCapacityBytes())
			}
		})
	}
}

// TestStagedIndex: the node knows which volumes it staged, across a
// restart, until it unstages them; Adopt drops entries whose stage record
// is gone.
func TestStagedIndex(t *testing.T) {
	ctx := context.Background()
	e := newNodeEnv(t)
	e.stage(t, e.stageReq(mountCap(rwo)))
	e.n = NewNode(e.n.opts) // restarted
	e.n.Adopt(ctx)
	if got := e.n.vols.Staged.StagingPath(e.volID); got != e.staging {
		t.Fatalf("index gives %q, want %s", got, e.staging)
	}
	if _, err := e.n.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: e.volID}); err != nil {
		t.Fatalf("health by volume ID after a restart: %v", err)
	}
	e.unstage(t)
	_, err := e.n.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: e.volID})
	wantCode(t, err, codes.NotFound)

	e.stage(t, e.stageReq(mountCap(rwo)))
	if err := os.Remove(nodefs.RecordPath(e.staging)); err != nil {
		t.Fatal(err)
	}
	e.n.Adopt(ctx)
	if got := e.n.vols.Staged.All(); len(got) != 0 {
		t.Fatalf("index after Adopt: %+v; want the entry without a stage record gone", got)
	}
}

// TestNodeStageOfStagedVolumeWhosePoolIsGone: NotFound, as for a first stage.
func TestNodeStageOfStagedVolumeWhosePoolIsGone(t *testing.T) {
	e := newNodeEnv(t)
	e.stage(t, e.stageReq(mountCap(rwo)))
	e.n.opts.Connector = &FakeConnector{Clusters: map[string]*FakeCluster{testClusterID: NewFakeCluster(testClusterID)}}
	_, err := e.n.NodeStageVolume(context.Background(), e.stageReq(mountCap(rwo)))
	wantNodeErr(t, err, codes.NotFound, testPool)
}
