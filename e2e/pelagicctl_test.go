package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/pelagic-csi/pelagic/cmd/pelagicctl/ctl"
	"github.com/pelagic-csi/pelagic/pkg/rbd"
)

// TestPelagicctlStatusAndFenceLift runs pelagicctl in-process against the
// local cluster: status shows a real attachment and fence, fence lift
// removes both the blocklist entry and the record, and the admin key never
// appears in what it prints.
func TestPelagicctlStatusAndFenceLift(t *testing.T) {
	e := newControllerEnv(t)
	ctx := testContext(t, 5*time.Minute)
	ctrl := e.controller(nil)

	req := e.createReq(uniqueName("pvc-ctl"), 64<<20)
	req.Parameters = maps.Clone(e.params)
	req.Parameters[rbd.ParamPVCName] = "data-ctl"
	req.Parameters[rbd.ParamPVCNamespace] = "shop"
	req.Parameters[rbd.ParamPVName] = "pv-ctl"
	created, err := ctrl.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	volID, image := created.GetVolume().GetVolumeId(), created.GetVolume().GetVolumeContext()[rbd.CtxImageName]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, _ = ctrl.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: volID, Secrets: e.secrets})
		_, _ = ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volID, Secrets: e.secrets})
	})
	if _, err := ctrl.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: volID, NodeId: "node-a",
		VolumeCapability: mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER), Secrets: e.secrets}); err != nil {
		t.Fatal(err)
	}

	// Fence a made-up client instance the way the controller fences a stale
	// holder: a blocklist entry plus a record on the image. Nothing uses the
	// nonce, so blocklisting it is harmless.
	fenced := fmt.Sprintf("127.0.0.1:0/%d", 100000+time.Now().UnixNano()%800000) // unique across runs on a reused cluster
	cl, pool := adminPool(ctx, t, e.cfg, e.conns, e.cluster, e.pool)
	if err := cl.Blocklist(ctx, fenced, time.Hour); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = cl.Unblocklist(ctx, fenced) // a failed test must not leave the entry for an hour
	})
	now := time.Now().UTC()
	record, _ := json.Marshal(rbd.Fence{Node: "node-old", ClientAddr: fenced, ClientID: "client.99999", At: now,
		Expires: now.Add(time.Hour), Reason: "e2e: a stale holder"})
	if err := pool.SetMetadata(ctx, image, map[string]string{rbd.FenceMetadataKey(fenced): string(record)}); err != nil {
		t.Fatal(err)
	}

	_, configPath := clusterConfig(t, e.cluster)
	keyFile := filepath.Join(t.TempDir(), "admin.key")
	if err := os.WriteFile(keyFile, []byte(e.cluster.AdminKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pelagicctl := func(args ...string) (int, string, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		code := ctl.Run(ctx, append([]string{"--config", configPath, "--keyfile", keyFile, "--id", e.cluster.AdminID}, args...),
			&out, &errOut)
		if strings.Contains(out.String()+errOut.String(), e.cluster.AdminKey) {
			t.Errorf("pelagicctl %v printed the admin key", args)
		}
		return code, out.String(), errOut.String()
	}

	code, out, errOut := pelagicctl("status", volID, "-o", "json")
	if code != ctl.ExitOK {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	var st struct {
		Image string `json:"image"`
		Owner struct {
			PVC, Namespace, PV string
		} `json:"owner"`
		Attachments []rbd.Attachment `json:"attachments"`
		Fences      []rbd.Fence      `json:"fences"`
		Verdict     struct{ State, Text string }
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json printed %q: %v", out, err)
	}
	if st.Image != image || st.Owner.PVC != "data-ctl" || st.Owner.Namespace != "shop" || st.Owner.PV != "pv-ctl" {
		t.Errorf("status image %q owner %+v, want %s of shop/data-ctl, pv-ctl", st.Image, st.Owner, image)
	}
	if len(st.Attachments) != 1 || st.Attachments[0].Node != "node-a" || st.Attachments[0].Mode != "SINGLE_NODE_WRITER" {
		t.Errorf("status attachments = %+v, want node-a SINGLE_NODE_WRITER", st.Attachments)
	}
	if len(st.Fences) != 1 || st.Fences[0].ClientAddr != fenced || st.Fences[0].Node != "node-old" {
		t.Errorf("status fences = %+v, want %s of node-old", st.Fences, fenced)
	}
	if st.Verdict.State != "attached" || !strings.Contains(st.Verdict.Text, "attached to node-a, not mapped there yet") {
		t.Errorf("verdict = %+v, want node-a attached and not mapped", st.Verdict)
	}

	code, out, errOut = pelagicctl("status", e.pool+"/"+image)
	if code != ctl.ExitOK {
		t.Fatalf("status POOL/IMAGE: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"volume:  " + volID, "PVC shop/data-ctl, PV pv-ctl", "node-a", "client.99999 at " + fenced, "(in force)"} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
	for _, args := range [][]string{{"volumes", e.pool}, {"fence", "ls", e.pool}} {
		code, out, errOut := pelagicctl(args...)
		// Tables shorten image names to their prefix and the UUID's last group.
		if code != ctl.ExitOK || !strings.Contains(out, "csi-vol-…"+image[len(image)-12:]) {
			t.Errorf("pelagicctl %v: exit %d, stdout %q, stderr %q; want a line for %s", args, code, out, errOut, image)
		}
	}

	blocklisted := func() bool {
		t.Helper()
		out, err := e.cluster.Ceph(ctx, "osd", "blocklist", "ls")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) > 0 && f[0] == fenced {
				return true
			}
		}
		return false
	}
	if !blocklisted() {
		t.Fatalf("%s is not in the blocklist before fence lift", fenced)
	}
	if code, _, errOut := pelagicctl("fence", "lift", volID, "127.0.0.1:0/1"); code != ctl.ExitFailed ||
		!strings.Contains(errOut, "no fence of 127.0.0.1:0/1 is recorded") {
		t.Errorf("fence lift of an unrecorded address: exit %d, stderr %q; want a refusal", code, errOut)
	}
	if code, out, errOut := pelagicctl("fence", "lift", volID, fenced); code != ctl.ExitOK {
		t.Fatalf("fence lift: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if blocklisted() {
		t.Errorf("%s is still in the blocklist after fence lift", fenced)
	}
	meta, err := pool.Metadata(ctx, image)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := meta[rbd.FenceMetadataKey(fenced)]; ok {
		t.Errorf("the fence record of %s is still on %s after fence lift", fenced, image)
	}
	if _, ok := meta["pelagic.csi/attach.node-a"]; !ok {
		t.Errorf("fence lift removed the attachment record too: %v", meta)
	}
}
