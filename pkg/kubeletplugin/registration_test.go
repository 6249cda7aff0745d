package kubeletplugin

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// The kubelet's side of registration, over the real socket: GetInfo, then
// NotifyRegistrationStatus; stopping removes the socket.
func TestRegistrationAsTheKubeletSeesIt(t *testing.T) {
	dir := t.TempDir()
	r := NewRegistration(RegistrationOptions{
		DriverName: "rook-ceph.rbd.csi.ceph.com",
		Endpoint:   "/var/lib/kubelet/plugins/rook-ceph.rbd.csi.ceph.com/csi.sock",
		Dir:        dir,
	})
	if want := filepath.Join(dir, "rook-ceph.rbd.csi.ceph.com-reg.sock"); r.SocketPath() != want {
		t.Fatalf("socket %s, want %s", r.SocketPath(), want)
	}
	// A socket left by a crashed run is replaced.
	if err := os.WriteFile(r.SocketPath(), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- r.Serve(ctx) }()

	conn, err := grpc.NewClient("unix://"+r.SocketPath(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := registerapi.NewRegistrationClient(conn)
	callCtx, callCancel := context.WithTimeout(ctx, 10*time.Second)
	defer callCancel()
	info, err := client.GetInfo(callCtx, &registerapi.InfoRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatal(err)
	}
	if info.GetType() != registerapi.CSIPlugin || info.GetName() != "rook-ceph.rbd.csi.ceph.com" ||
		info.GetEndpoint() != "/var/lib/kubelet/plugins/rook-ceph.rbd.csi.ceph.com/csi.sock" ||
		len(info.GetSupportedVersions()) == 0 {
		t.Errorf("GetInfo = %v", info)
	}

	if ok, reason := r.Status(); ok || reason != "" {
		t.Errorf("status before the kubelet answered = %v %q", ok, reason)
	}
	if _, err := client.NotifyRegistrationStatus(callCtx, &registerapi.RegistrationStatus{
		PluginRegistered: false, Error: "plugin name already registered"}); err != nil {
		t.Fatal(err)
	}
	if ok, reason := r.Status(); ok || reason != "plugin name already registered" {
		t.Errorf("status after a refusal = %v %q", ok, reason)
	}
	if _, err := client.NotifyRegistrationStatus(callCtx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if ok, reason := r.Status(); !ok || reason != "" {
		t.Errorf("status after registration = %v %q", ok, reason)
	}

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := os.Stat(r.SocketPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Serve returned: %v", err)
	}
}

func TestRegistrationSocketInMissingDirectory(t *testing.T) {
	// The kubelet creates its registration directory; a plugin started
	// before it creates the directory rather than failing.
	dir := filepath.Join(t.TempDir(), "plugins_registry")
	r := NewRegistration(RegistrationOptions{DriverName: "d.example.com", Endpoint: "/x/csi.sock", Dir: dir})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- r.Serve(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(r.SocketPath()); err == nil && fi.Mode()&os.ModeSocket != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no registration socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve = %v", err)
	}
}
