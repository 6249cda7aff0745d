package csiserver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

type countingProber struct {
	calls atomic.Int32
	err   error
	block bool // wait for ctx to end (giving up, healthy, after 2s)
}

func (p *countingProber) Probe(ctx context.Context) error {
	p.calls.Add(1)
	if p.block {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
			return nil
		}
	}
	return p.err
}

func TestGetPluginInfo(t *testing.T) {
	s := NewIdentity(IdentityOptions{Name: "rbd.pelagic.csi", Version: "v0.1.0"})
	resp, err := s.GetPluginInfo(context.Background(), &csi.GetPluginInfoRequest{})
	if err != nil || resp.GetName() != "rbd.pelagic.csi" || resp.GetVendorVersion() != "v0.1.0" {
		t.Errorf("GetPluginInfo = %v, %v", resp, err)
	}
}

func TestGetPluginCapabilities(t *testing.T) {
	tests := []struct {
		name      string
		opts      IdentityOptions
		services  []csi.PluginCapability_Service_Type
		expansion bool
	}{
		{"node only", IdentityOptions{}, nil, false},
		{"controller", IdentityOptions{Controller: true, Expansion: true},
			[]csi.PluginCapability_Service_Type{csi.PluginCapability_Service_CONTROLLER_SERVICE}, true},
		{"controller with topology", IdentityOptions{Controller: true, Topology: true},
			[]csi.PluginCapability_Service_Type{csi.PluginCapability_Service_CONTROLLER_SERVICE,
				csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := NewIdentity(tc.opts).GetPluginCapabilities(context.Background(), &csi.GetPluginCapabilitiesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			var services []csi.PluginCapability_Service_Type
			expansion := false
			for _, c := range resp.GetCapabilities() {
				if s := c.GetService(); s != nil {
					services = append(services, s.GetType())
				}
				if e := c.GetVolumeExpansion(); e != nil {
					expansion = e.GetType() == csi.PluginCapability_VolumeExpansion_ONLINE
				}
			}
			if len(services) != len(tc.services) || expansion != tc.expansion {
				t.Fatalf("services %v, expansion %v; want %v, %v", services, expansion, tc.services, tc.expansion)
			}
			for i := range services {
				if services[i] != tc.services[i] {
					t.Errorf("services %v, want %v", services, tc.services)
				}
			}
		})
	}
}

func TestProbe(t *testing.T) {
	tests := []struct {
		name      string
		prober    *countingProber
		cacheFor  time.Duration
		ready     bool
		wantCalls int32
	}{
		{"healthy, cached", &countingProber{}, time.Hour, true, 1},
		{"healthy, not cached", &countingProber{}, time.Nanosecond, true, 2},
		{"failing, cached", &countingProber{err: errors.New("no monitor answered")}, time.Hour, false, 1},
		{"hanging", &countingProber{block: true}, time.Hour, false, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewIdentity(IdentityOptions{Prober: tc.prober, ProbeTimeout: 50 * time.Millisecond, ProbeCacheFor: tc.cacheFor})
			for range 2 {
				start := time.Now()
				resp, err := s.Probe(context.Background(), &csi.ProbeRequest{})
				if err != nil || resp.GetReady().GetValue() != tc.ready {
					t.Fatalf("Probe = %v, %v; want ready %v", resp, err, tc.ready)
				}
				if d := time.Since(start); d > time.Second {
					t.Fatalf("Probe took %v with a 50ms probe timeout", d)
				}
				time.Sleep(time.Millisecond)
			}
			if got := tc.prober.calls.Load(); got != tc.wantCalls {
				t.Errorf("prober called %d times, want %d", got, tc.wantCalls)
			}
		})
	}

	resp, err := NewIdentity(IdentityOptions{}).Probe(context.Background(), &csi.ProbeRequest{})
	if err != nil || !resp.GetReady().GetValue() {
		t.Errorf("Probe without a prober = %v, %v", resp, err)
	}
}

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		in, network, addr string
		wantErr           bool
	}{
		{"unix:///csi/csi.sock", "unix", "/csi/csi.sock", false},
		{"unix:/csi/csi.sock", "unix", "/csi/csi.sock", false},
		{"unix://csi/csi.sock", "unix", "csi/csi.sock", false},
		{"/var/lib/kubelet/plugins/rbd.pelagic.csi/csi.sock", "unix", "/var/lib/kubelet/plugins/rbd.pelagic.csi/csi.sock", false},
		{"tcp://127.0.0.1:10000", "tcp", "127.0.0.1:10000", false},
		{"tcp://:10000", "tcp", ":10000", false},
		{"unix://", "", "", true},
		{"tcp://", "", "", true},
		{"http://localhost:80", "", "", true},
		{"csi.sock", "", "", true},
		{"unix://%zz", "", "", true},
	}
	for _, tc := range tests {
		network, addr, err := ParseEndpoint(tc.in)
		if (err != nil) != tc.wantErr || network != tc.network || addr != tc.addr {
			t.Errorf("ParseEndpoint(%q) = %q, %q, %v; want %q, %q, error %v", tc.in, network, addr, err, tc.network, tc.addr, tc.wantErr)
		}
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "plugin", "csi.sock")
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := Listen("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Addr().String() != path {
		t.Errorf("listening on %s, want %s", l.Addr(), path)
	}
}
