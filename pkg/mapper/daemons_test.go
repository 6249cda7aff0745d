package mapper

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
	"github.com/pelagic-csi/pelagic/pkg/mount"
)

// TestDaemonCommandsGoToTheDaemonRunner: the commands that leave a daemon
// behind run through Config.Daemons (the daemon host), everything else
// through Runner.
func TestDaemonCommandsGoToTheDaemonRunner(t *testing.T) {
	t.Run("rbd-nbd", func(t *testing.T) {
		host := newFakeHost(t, "nbd")
		nbdHost := &fakeNBD{t: t, dev: host.dev}
		plain := &fakeRunner{handle: nbdHost.handle}
		daemons := &fakeRunner{handle: func(argv []string) ([]byte, error) {
			checkKeyfile(t, argv)
			return nbdHost.handle(argv)
		}}
		cfg := host.config(plain, nil)
		cfg.Daemons = daemons
		if _, err := newNBD(cfg).Map(context.Background(), testImage(), MapOptions{}); err != nil {
			t.Fatal(err)
		}
		if len(daemons.calls) != 1 || daemons.calls[0][1] != "map" {
			t.Fatalf("daemon runner ran %q; want rbd-nbd map only", daemons.calls)
		}
		for _, argv := range plain.calls {
			if argv[0] == "rbd-nbd" && argv[1] == "map" {
				t.Fatalf("rbd-nbd map ran in the plugin: %q", argv)
			}
		}
	})
	t.Run("rbd-fuse", func(t *testing.T) {
		host := newFakeHost(t)
		writeFile(t, filepath.Join(host.dev, "fuse"), "")
		plain := &fakeRunner{}
		var keyfile string
		daemons := &fakeRunner{handle: func(argv []string) ([]byte, error) {
			checkKeyfile(t, argv)
			keyfile = argAfter(argv, "--keyfile")
			return nil, execError(1, "rbd-fuse: cannot connect")
		}}
		cfg := host.config(plain, nil)
		cfg.Daemons = daemons
		cfg.ProcRoot = t.TempDir()
		mkdir(t, filepath.Join(host.sysfs, "block"))
		if _, err := newFuse(cfg).Map(context.Background(), testImage(), MapOptions{}); err == nil {
			t.Fatal("Map succeeded although rbd-fuse failed")
		}
		if len(daemons.calls) != 1 || daemons.calls[0][0] != "rbd-fuse" {
			t.Fatalf("daemon runner ran %q; want rbd-fuse", daemons.calls)
		}
		for _, argv := range plain.calls {
			if argv[0] == "rbd-fuse" {
				t.Fatalf("rbd-fuse ran in the plugin: %q", argv)
			}
		}
		if filepath.Dir(filepath.Dir(keyfile)) != ceph.KeyFileDir(host.state) {
			t.Fatalf("keyfile %s is not in %s", keyfile, ceph.KeyFileDir(host.state))
		}
		if _, err := os.Stat(keyfile); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("keyfile left behind: %v", err)
		}
	})
}

// The key files themselves are tested in package ceph; here, where the
// mappers put them and that the start-up sweep also removes the keyfiles
// older versions kept in fuse mapping directories.
func TestKeyfilesAreSwept(t *testing.T) {
	state := t.TempDir()
	leftover, _, err := writeKeyfile(state, testImage().Creds)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(filepath.Dir(leftover)) != ceph.KeyFileDir(state) {
		t.Fatalf("keyfile %s is not in %s", leftover, ceph.KeyFileDir(state))
	}
	legacy := filepath.Join(state, "fuse", "0123456789abcdef", "keyfile")
	writeFile(t, legacy, testKey)
	state2 := filepath.Join(state, "fuse", "0123456789abcdef", fuseStateFile)
	writeFile(t, state2, "{}")
	if err := SweepKeyfiles(state); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{leftover, legacy} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the sweep: %v", p, err)
		}
	}
	if _, err := os.Stat(state2); err != nil {
		t.Errorf("the sweep removed a mapping's state: %v", err)
	}
	if _, _, err := writeKeyfile("", testImage().Creds); !errors.Is(err, ErrUnavailable) {
		t.Errorf("writeKeyfile without a state directory = %v; want ErrUnavailable", err)
	}
}

// fuseFixture records one fuse mapping of testImage on loop7, rbd-fuse
// running as pid 42, and returns the mapper and its state.
func fuseFixture(t *testing.T, r *fakeRunner, mounts *mount.FakeMounter) (*fuse, fuseState, Config) {
	t.Helper()
	host := newFakeHost(t)
	writeFile(t, filepath.Join(host.dev, "fuse"), "")
	cfg := host.config(r, mounts)
	cfg.ProcRoot = t.TempDir()
	f := newFuse(cfg)
	img := testImage()
	dir := f.dirFor(img.ClusterID, img.Pool, img.RadosNamespace, img.Name)
	st := fuseState{ClusterID: img.ClusterID, Pool: img.Pool, Image: img.Name, Mountpoint: filepath.Join(dir, fuseMountDir),
		Device: filepath.Join(host.dev, "loop7"), PID: 42, ClientAddr: "127.0.0.1:0/7", ClientID: "client.7"}
	mkdir(t, st.Mountpoint)
	if err := writeFuseState(dir, st); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(cfg.ProcRoot, "42", "cmdline"), "rbd-fuse\x00"+st.Mountpoint+"\x00")
	writeFile(t, filepath.Join(host.sysfs, "block", "loop7", "loop", "backing_file"), st.imageFile()+"\n")
	writeFile(t, filepath.Join(host.dev, "loop7"), "")
	mounts.Mounts[st.Mountpoint] = mount.FakeMount{Device: "rbd-fuse", FSType: "fuse.rbd-fuse"}
	return f, st, cfg
}

func TestFuseMappingAlive(t *testing.T) {
	for _, tt := range []struct {
		name    string
		breakIt func(t *testing.T, st fuseState, cfg Config, mounts *mount.FakeMounter)
		dead    bool
	}{
		{"in place", nil, false},
		{"rbd-fuse exited", func(t *testing.T, _ fuseState, cfg Config, _ *mount.FakeMounter) {
			_ = os.RemoveAll(filepath.Join(cfg.ProcRoot, "42"))
		}, true},
		{"pid reused by another program", func(t *testing.T, _ fuseState, cfg Config, _ *mount.FakeMounter) {
			writeFile(t, filepath.Join(cfg.ProcRoot, "42", "cmdline"), "sleep\x00100\x00")
		}, true},
		{"fuse mount gone", func(_ *testing.T, st fuseState, _ Config, mounts *mount.FakeMounter) {
			delete(mounts.Mounts, st.Mountpoint)
		}, true},
		{"loop device detached", func(_ *testing.T, _ fuseState, cfg Config, _ *mount.FakeMounter) {
			_ = os.RemoveAll(filepath.Join(cfg.SysfsRoot, "block", "loop7"))
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mounts := mount.NewFakeMounter()
			r := &fakeRunner{}
			f, st, cfg := fuseFixture(t, r, mounts)
			if tt.breakIt != nil {
				tt.breakIt(t, st, cfg, mounts)
			}
			err := f.Alive(context.Background(), st.mapping())
			if dead := errors.Is(err, ErrMappingDead); dead != tt.dead || (!tt.dead && err != nil) {
				t.Fatalf("Alive = %v; want dead %v", err, tt.dead)
			}
			if len(r.calls) != 0 {
				t.Fatalf("Alive ran %q", r.calls)
			}
		})
	}
	mounts := mount.NewFakeMounter()
	f, st, _ := fuseFixture(t, &fakeRunner{}, mounts)
	other := st.mapping()
	other.Device = "/dev/loop9"
	if err := f.Alive(context.Background(), other); !errors.Is(err, ErrMappingDead) {
		t.Fatalf("Alive of a mapping never recorded = %v", err)
	}
}

// TestFuseForcedUnmapOfADeadMapping: rbd-fuse died under a mounted
// filesystem. A plain Unmap refuses (the loop device is in use); a forced
// one leaves the loop device to detach on its last close, detaches the
// dead mount lazily and clears the mapping.
func TestFuseForcedUnmapOfADeadMapping(t *testing.T) {
	mounts := mount.NewFakeMounter()
	r := &fakeRunner{}
	f, st, cfg := fuseFixture(t, r, mounts)
	_ = os.RemoveAll(filepath.Join(cfg.ProcRoot, "42")) // rbd-fuse is gone
	mounts.Mounts["/staging"] = mount.FakeMount{Device: st.Device, FSType: "ext4"}
	ctx := context.Background()

	if err := f.Unmap(ctx, st.mapping(), UnmapOptions{}); !errors.Is(err, ErrBusy) {
		t.Fatalf("Unmap of a mapping in use = %v; want ErrBusy", err)
	}
	if err := f.Unmap(ctx, st.mapping(), UnmapOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if want := [][]string{{"losetup", "-d", st.Device}}; !reflect.DeepEqual(r.calls, want) {
		t.Fatalf("ran %q, want %q", r.calls, want)
	}
	if calls := mounts.CallLog(); calls[len(calls)-1] != "Detach "+st.Mountpoint {
		t.Fatalf("mount calls %q; want the dead rbd-fuse mount detached", calls)
	}
	if _, err := os.Stat(filepath.Dir(st.Mountpoint)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mapping directory left: %v", err)
	}
}

func TestKeyedMutexHonoursContext(t *testing.T) {
	var k keyedMutex
	unlock, err := k.lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := k.lock(ctx, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock = %v; want DeadlineExceeded", err)
	}
	other, err := k.lock(context.Background(), "b")
	if err != nil {
		t.Fatal(err)
	}
	other()
	unlock()
	again, err := k.lock(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	again()
}

func TestKernelMappersAlive(t *testing.T) {
	ctx := context.Background()
	host := newFakeHost(t, "rbd", "nbd")
	host.addRBDDevice(t, "3", map[string]string{"pool": "rbd", "name": "csi-vol-1"})
	k := newKRBD(host.config(&fakeRunner{}, nil))
	if err := k.Alive(ctx, Mapping{Device: filepath.Join(host.dev, "rbd3")}); err != nil {
		t.Errorf("krbd Alive of a mapped device = %v", err)
	}
	if err := k.Alive(ctx, Mapping{Device: filepath.Join(host.dev, "rbd4")}); !errors.Is(err, ErrMappingDead) {
		t.Errorf("krbd Alive of an unmapped device = %v; want ErrMappingDead", err)
	}

	// list-mapped shows only devices an rbd-nbd process serves.
	nbdHost := &fakeNBD{t: t, dev: host.dev, devices: []fakeNBDDevice{{PID: 4000, Pool: "rbd", Image: "csi-vol-1", Device: "/dev/nbd0"}}}
	n := newNBD(host.config(&fakeRunner{handle: nbdHost.handle}, nil))
	if err := n.Alive(ctx, Mapping{Device: "/dev/nbd0"}); err != nil {
		t.Errorf("rbd-nbd Alive of a served device = %v", err)
	}
	if err := n.Alive(ctx, Mapping{Device: "/dev/nbd1"}); !errors.Is(err, ErrMappingDead) {
		t.Errorf("rbd-nbd Alive of a device no daemon serves = %v; want ErrMappingDead", err)
	}
}
