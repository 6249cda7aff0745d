package mapper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/mount"
)

// fakeNBD plays rbd-nbd as it behaves on a real kernel: map adds a device;
// list-mapped prints the devices as JSON (daemon pid as "id", "snap" empty
// for an image, a "cookie"), with no newline, after a warning line as the
// merged stderr would; unmap disconnects the device even while it is
// mounted (the kernel then fails that mount's I/O) and prints nothing.
// Map returns before the daemon has connected the device, so list-mapped
// may not show it yet: connectAfter is how many listings miss it.
type fakeNBD struct {
	t            *testing.T
	dev          string // fake /dev: map creates the device node there
	devices      []fakeNBDDevice
	unmap        error // what unmap returns
	connectAfter int
}

// fakeNBDDevice is one entry of rbd-nbd list-mapped --format json.
type fakeNBDDevice struct {
	PID       int    `json:"id"`
	Pool      string `json:"pool"`
	Namespace string `json:"namespace"`
	Image     string `json:"image"`
	Snap      string `json:"snap"`
	Device    string `json:"device"`
	Cookie    string `json:"cookie"`

	unlistedFor int // listings still to miss it: its daemon is connecting
}

func (f *fakeNBD) handle(argv []string) ([]byte, error) {
	switch argv[1] {
	case "list-mapped":
		connected := []fakeNBDDevice{}
		for i := range f.devices {
			if f.devices[i].unlistedFor > 0 {
				f.devices[i].unlistedFor--
				continue
			}
			connected = append(connected, f.devices[i])
		}
		out, err := json.Marshal(connected)
		if err != nil {
			f.t.Fatal(err)
		}
		return append([]byte("2026-01-01T00:00:00 7f -1 did not load config file [global]\n"), out...), nil
	case "map":
		checkKeyfile(f.t, argv)
		spec := strings.SplitN(argv[len(argv)-1], "/", 3)
		e := fakeNBDDevice{PID: 4000 + len(f.devices), Pool: spec[0], Image: spec[len(spec)-1],
			Device: filepath.Join(f.dev, fmt.Sprintf("nbd%d", len(f.devices))), unlistedFor: f.connectAfter}
		if len(spec) == 3 {
			e.Namespace = spec[1]
		}
		writeFile(f.t, e.Device, "")
		f.devices = append(f.devices, e)
		return []byte(e.Device + "\n"), nil
	case "unmap":
		if f.unmap != nil {
			return nil, f.unmap
		}
		f.devices = slices.DeleteFunc(f.devices, func(d fakeNBDDevice) bool { return d.Device == argv[len(argv)-1] })
		return nil, nil
	}
	f.t.Fatalf("unexpected command %q", argv)
	return nil, nil
}

func TestNBDMap(t *testing.T) {
	tests := []struct {
		name      string
		namespace string
		opts      MapOptions
		want      []string
	}{
		{"plain", "", MapOptions{}, []string{"--try-netlink", "rbd/csi-vol-1"}},
		{"namespace", "ns1", MapOptions{}, []string{"--try-netlink", "rbd/ns1/csi-vol-1"}},
		{"read-only exclusive", "", MapOptions{ReadOnly: true, Exclusive: true},
			[]string{"--read-only", "--exclusive", "--try-netlink", "rbd/csi-vol-1"}},
		{"options become flags", "", MapOptions{Options: "io-timeout=30,try-netlink"},
			[]string{"--io-timeout=30", "--try-netlink", "rbd/csi-vol-1"}},
		{"netlink added to options", "", MapOptions{Options: "io-timeout=30"},
			[]string{"--try-netlink", "--io-timeout=30", "rbd/csi-vol-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newFakeHost(t, "nbd")
			nbdHost := &fakeNBD{t: t, dev: host.dev, devices: []fakeNBDDevice{{PID: 4000, Pool: "rbd", Image: "other", Device: "/dev/nbd0"}}}
			r := &fakeRunner{handle: nbdHost.handle}
			img := testImage()
			img.RadosNamespace = tt.namespace
			got, err := newNBD(host.config(r, nil)).Map(context.Background(), img, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got.Device != filepath.Join(host.dev, "nbd1") || got.Image != "csi-vol-1" || got.RadosNamespace != tt.namespace || got.Mapper != NBD {
				t.Fatalf("Map = %+v", got)
			}
			var mapArgv []string
			for _, argv := range r.calls {
				if argv[1] == "map" {
					mapArgv = argv
				}
			}
			want := append([]string{"rbd-nbd", "map", "--conf", "/dev/null", "--id", "csi-rbd", "--keyfile", argAfter(mapArgv, "--keyfile"),
				"-m", "10.0.0.1:6789,10.0.0.2:6789"}, tt.want...)
			if !reflect.DeepEqual(mapArgv, want) {
				t.Fatalf("argv %q\nwant %q", mapArgv, want)
			}
			r.assertNoKey(t)
		})
	}
}

func TestNBDMapReturnsExistingMapping(t *testing.T) {
	host := newFakeHost(t, "nbd")
	nbdHost := &fakeNBD{t: t, devices: []fakeNBDDevice{{PID: 4005, Pool: "rbd", Image: "csi-vol-1", Device: "/dev/nbd5"}}}
	r := &fakeRunner{handle: nbdHost.handle}
	got, err := newNBD(host.config(r, nil)).Map(context.Background(), testImage(), MapOptions{})
	if err != nil || got.Device != "/dev/nbd5" {
		t.Fatalf("Map = %+v, %v; want the existing /dev/nbd5", got, err)
	}
	for _, argv := range r.calls {
		if argv[1] != "list-mapped" {
			t.Fatalf("ran %q for an image already mapped", argv)
		}
	}
}

// TestNBDMapAdmitsFirst: rbd-nbd opens the image as it maps, so Admit
// runs before it; its refusal is Map's answer and rbd-nbd never maps.
func TestNBDMapAdmitsFirst(t *testing.T) {
	host := newFakeHost(t, "nbd")
	nbdHost := &fakeNBD{t: t, dev: host.dev}
	r := &fakeRunner{handle: nbdHost.handle}
	refused := errors.New("held elsewhere")
	_, err := newNBD(host.config(r, nil)).Map(context.Background(), testImage(),
		MapOptions{Admit: func(context.Context) error { return refused }})
	if !errors.Is(err, refused) {
		t.Fatalf("Map = %v, want Admit's refusal", err)
	}
	for _, argv := range r.calls {
		if argv[1] != "list-mapped" {
			t.Fatalf("ran %q though Admit refused", argv)
		}
	}
}

// TestNBDMapReusedDevice: while the image is mapped, another mapping on
// the node is unmapped, and the new mapping gets the device it freed.
func TestNBDMapReusedDevice(t *testing.T) {
	host := newFakeHost(t, "nbd")
	nbdHost := &fakeNBD{t: t, dev: host.dev, devices: []fakeNBDDevice{{PID: 4000, Pool: "rbd", Image: "other",
		Device: filepath.Join(host.dev, "nbd0")}}}
	r := &fakeRunner{handle: func(argv []string) ([]byte, error) {
		if argv[1] == "map" {
			nbdHost.devices = nil
		}
		return nbdHost.handle(argv)
	}}
	got, err := newNBD(host.config(r, nil)).Map(context.Background(), testImage(), MapOptions{})
	if err != nil || got.Device != filepath.Join(host.dev, "nbd0") || got.Image != "csi-vol-1" {
		t.Fatalf("Map = %+v, %v; want csi-vol-1 on the reused nbd0", got, err)
	}
}

// TestNBDMapWaitsForTheDaemonToConnect: rbd-nbd returns before its daemon
// connects the device, and until then list-mapped does not show it.
func TestNBDMapWaitsForTheDaemonToConnect(t *testing.T) {
	for _, tt := range []struct {
		name      string
		connectIn int // listings that miss the new device
		timeout   time.Duration
		wantErr   bool
	}{
		{"connects soon", 3, 10 * time.Second, false},
		{"never connects", 1 << 30, 200 * time.Millisecond, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			host := newFakeHost(t, "nbd")
			nbdHost := &fakeNBD{t: t, dev: host.dev, connectAfter: tt.connectIn}
			cfg := host.config(&fakeRunner{handle: nbdHost.handle}, nil)
			cfg.DeviceTimeout = tt.timeout
			got, err := newNBD(cfg).Map(context.Background(), testImage(), MapOptions{})
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), "list-mapped does not show") {
					t.Fatalf("Map = %+v, %v; want an error saying the device never showed", got, err)
				}
				return
			}
			if err != nil || got.Device != filepath.Join(host.dev, "nbd0") {
				t.Fatalf("Map = %+v, %v; want csi-vol-1 on nbd0", got, err)
			}
		})
	}
}

func TestNBDCheckWithoutModule(t *testing.T) {
	host := newFakeHost(t, "rbd")
	r := &fakeRunner{handle: func([]string) ([]byte, error) { return nil, execError(1, "Module nbd not found") }}
	if err := newNBD(host.config(r, nil)).Check(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Check = %v, want ErrUnavailable", err)
	}
	_, err := newNBD(host.config(r, nil)).Map(context.Background(), testImage(), MapOptions{})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Map = %v, want ErrUnavailable", err)
	}
}

func TestNBDUnmap(t *testing.T) {
	mapped := []fakeNBDDevice{{PID: 4000, Pool: "rbd", Image: "csi-vol-1", Device: "/dev/nbd0"}}
	tests := []struct {
		name     string
		devices  []fakeNBDDevice
		mounted  bool // a filesystem on /dev/nbd0 is mounted at /staging
		opts     UnmapOptions
		unmapErr error
		wantErr  error
		anyErr   bool
		ranUnmap bool
	}{
		{name: "not mapped is success"},
		{name: "mapped", devices: mapped, ranUnmap: true},
		// rbd-nbd would disconnect it: the mapper must refuse first.
		{name: "mounted is busy", devices: mapped, mounted: true, wantErr: ErrBusy, anyErr: true},
		{name: "mounted, forced", devices: mapped, mounted: true, opts: UnmapOptions{Force: true}, ranUnmap: true},
		{name: "rbd-nbd fails", devices: mapped, unmapErr: execError(1, "rbd-nbd: failed to unmap"), anyErr: true, ranUnmap: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newFakeHost(t, "nbd")
			nbdHost := &fakeNBD{t: t, devices: slices.Clone(tt.devices), unmap: tt.unmapErr}
			r := &fakeRunner{handle: nbdHost.handle}
			mounts := mount.NewFakeMounter()
			if tt.mounted {
				mounts.Mounts["/staging"] = mount.FakeMount{Device: "/dev/nbd0"}
			}
			err := newNBD(host.config(r, mounts)).Unmap(context.Background(), Mapping{Device: "/dev/nbd0"}, tt.opts)
			if (err != nil) != tt.anyErr || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("Unmap = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil && !strings.Contains(err.Error(), "/staging") {
				t.Fatalf("busy error %q does not name the mount", err)
			}
			ran := false
			for _, argv := range r.calls {
				if argv[1] == "unmap" {
					ran = true
					if !reflect.DeepEqual(argv, []string{"rbd-nbd", "unmap", "--conf", "/dev/null", "/dev/nbd0"}) {
						t.Fatalf("ran %q", argv)
					}
				}
			}
			if ran != tt.ranUnmap {
				t.Fatalf("ran unmap: %v, want %v", ran, tt.ranUnmap)
			}
		})
	}
}
