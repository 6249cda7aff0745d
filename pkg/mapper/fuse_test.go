package mapper

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pelagic-csi/pelagic/pkg/mount"
)

func TestFuseMapRejects(t *testing.T) {
	host := newFakeHost(t)
	writeFile(t, filepath.Join(host.dev, "fuse"), "")
	tests := []struct {
		name    string
		cfg     func(*Config)
		opts    MapOptions
		wantErr error
	}{
		{"exclusive", nil, MapOptions{Exclusive: true}, ErrUnsupportedOption},
		{"map options", nil, MapOptions{Options: "queue_depth=128"}, ErrUnsupportedOption},
		{"no state directory", func(c *Config) { c.StateDir = "" }, MapOptions{}, ErrUnavailable},
		{"state directory too long for sockets", func(c *Config) { c.StateDir = "/" + strings.Repeat("x", 80) }, MapOptions{}, ErrUnavailable},
		{"no /dev/fuse", func(c *Config) { c.DevRoot = t.TempDir() }, MapOptions{}, ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &fakeRunner{}
			cfg := host.config(r, nil)
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			_, err := newFuse(cfg).Map(context.Background(), testImage(), tt.opts)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Map = %v, want %v", err, tt.wantErr)
			}
			if len(r.calls) != 0 {
				t.Fatalf("ran %q", r.calls)
			}
		})
	}
}

func TestFuseCheckRunsTools(t *testing.T) {
	host := newFakeHost(t)
	writeFile(t, filepath.Join(host.dev, "fuse"), "")
	r := &fakeRunner{handle: func(argv []string) ([]byte, error) {
		if argv[0] == "rbd-fuse" {
			return nil, execError(127, "rbd-fuse: not found")
		}
		return nil, nil
	}}
	err := newFuse(host.config(r, nil)).Check(context.Background())
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "rbd-fuse") {
		t.Fatalf("Check = %v, want ErrUnavailable naming rbd-fuse", err)
	}
}

func TestFuseDirsAreDistinct(t *testing.T) {
	f := newFuse(newFakeHost(t).config(&fakeRunner{}, nil))
	// "<pool>-<ns>-<image>" would give these the same directory.
	a := f.dirFor("c", "a-b", "", "c")
	b := f.dirFor("c", "a", "b", "c")
	other := f.dirFor("c2", "a-b", "", "c")
	if a == b || a == other {
		t.Fatalf("directories collide: %s %s %s", a, b, other)
	}
}

func TestFuseListAndUnmapFromState(t *testing.T) {
	host := newFakeHost(t)
	mounts := mount.NewFakeMounter()
	r := &fakeRunner{}
	f := newFuse(host.config(r, mounts))
	mkdir(t, filepath.Join(host.sysfs, "block"))

	// Two recorded mappings whose processes and loop devices are gone.
	var dirs []string
	for _, name := range []string{"a", "b"} {
		dir := f.dirFor("c1", "rbd", "", name)
		mkdir(t, filepath.Join(dir, fuseMountDir))
		st := fuseState{ClusterID: "c1", Pool: "rbd", Image: name, Mountpoint: filepath.Join(dir, fuseMountDir),
			Device: "/dev/loop" + name, ClientAddr: "127.0.0.1:0/" + name}
		if err := writeFuseState(dir, st); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, fuseLogFile), "log")
		dirs = append(dirs, dir)
	}
	got, err := f.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Mapping{
		{Mapper: Fuse, Pool: "rbd", Image: "a", Device: "/dev/loopa", ClientAddr: "127.0.0.1:0/a"},
		{Mapper: Fuse, Pool: "rbd", Image: "b", Device: "/dev/loopb", ClientAddr: "127.0.0.1:0/b"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("List = %+v\nwant %+v", got, want)
	}

	if err := f.Unmap(context.Background(), Mapping{Device: "/dev/loopa"}, UnmapOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dirs[0]); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mapping directory left behind: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dirs[1], fuseStateFile)); err != nil {
		t.Fatalf("the other mapping was disturbed: %v", err)
	}
	// Unmapping again is success.
	if err := f.Unmap(context.Background(), Mapping{Device: "/dev/loopa"}, UnmapOptions{}); err != nil {
		t.Fatal(err)
	}
	if calls := mounts.CallLog(); !reflect.DeepEqual(calls, []string{"Unmount " + filepath.Join(dirs[0], fuseMountDir)}) {
		t.Fatalf("mount calls %q", calls)
	}
}

func TestRemoveFuseDirNeverRecurses(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, fuseStateFile), "{}")
	image := filepath.Join(dir, fuseMountDir, "image") // as if rbd-fuse were still mounted
	writeFile(t, image, "data")
	if err := removeFuseDir(dir); err == nil {
		t.Fatal("removeFuseDir succeeded with a non-empty mount directory")
	}
	if _, err := os.Stat(image); err != nil {
		t.Fatalf("the image file was removed: %v", err)
	}
}

func TestFuseAlive(t *testing.T) {
	host := newFakeHost(t)
	cfg := host.config(&fakeRunner{}, nil)
	cfg.ProcRoot = t.TempDir()
	f := newFuse(cfg)
	cmdline := func(pid string, args ...string) {
		writeFile(t, filepath.Join(cfg.ProcRoot, pid, "cmdline"), strings.Join(args, "\x00")+"\x00")
	}
	cmdline("10", "/usr/bin/rbd-fuse", "-c", "/s/conf", "/s/a/mnt")
	cmdline("11", "rbd-fuse", "-c", "/s/conf", "/s/b/mnt")
	cmdline("12", "sleep", "/s/c/mnt")
	writeFile(t, filepath.Join(cfg.ProcRoot, "13", "cmdline"), "") // a zombie
	cmdline("self", "x")

	for _, tt := range []struct {
		mountpoint string
		want       int
	}{{"/s/a/mnt", 10}, {"/s/b/mnt", 11}, {"/s/c/mnt", 0}, {"/s/d/mnt", 0}} {
		if got := f.findPID(tt.mountpoint); got != tt.want {
			t.Errorf("findPID(%s) = %d, want %d", tt.mountpoint, got, tt.want)
		}
	}
	if f.fuseAlive(10, "/s/b/mnt") || f.fuseAlive(13, "/s/a/mnt") {
		t.Error("fuseAlive accepted the wrong process")
	}
}

func TestLearnedAddrs(t *testing.T) {
	log := strings.Join([]string{
		"-325> 2026 7f 1 -- 127.0.0.1:0/1064355063 learned_addr learned my addr 127.0.0.1:0/1064355063 (peer_addr_for_me v1:127.0.0.1:0/0)",
		"-202> 2026 7f 1 -- learned_addr learned my addr [v2:10.0.0.5:0/228790166,v1:10.0.0.5:0/228790166] (peer_addr_for_me v2:10.0.0.5:0/0)",
		"-100> 2026 7f 1 -- learned_addr learned my addr v2:[fd00::5]:0/42 (peer_addr_for_me v2:[fd00::5]:0/0)",
		"unrelated line",
	}, "\n")
	want := map[string]bool{"127.0.0.1:0/1064355063": true, "10.0.0.5:0/228790166": true, "[fd00::5]:0/42": true}
	if got := learnedAddrs(log); !reflect.DeepEqual(got, want) {
		t.Fatalf("learnedAddrs = %v, want %v", got, want)
	}
}

func TestAsokCommand(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "a.asok")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		buf := make([]byte, 0, 256)
		one := make([]byte, 1)
		for {
			if _, err := io.ReadFull(conn, one); err != nil || one[0] == 0 {
				break
			}
			buf = append(buf, one[0])
		}
		var cmd map[string]any
		_ = json.Unmarshal(buf, &cmd)
		reply := []byte(`{"echo":"` + cmd["prefix"].(string) + `"}`)
		_ = binary.Write(conn, binary.BigEndian, uint32(len(reply)))
		_, _ = conn.Write(reply)
	}()
	got, err := asokCommand(context.Background(), socket, map[string]any{"prefix": "log dump"})
	if err != nil || string(got) != `{"echo":"log dump"}` {
		t.Fatalf("asokCommand = %s, %v", got, err)
	}
}

func TestFuseMapReturnsHealthyMapping(t *testing.T) {
	mounts := mount.NewFakeMounter()
	r := &fakeRunner{}
	f, st, _ := fuseFixture(t, r, mounts)
	img := testImage()
	got, err := f.Map(context.Background(), img, MapOptions{})
	if err != nil || got != st.mapping() {
		t.Fatalf("Map = %+v, %v; want the recorded %+v", got, err, st.mapping())
	}
	if _, err := f.Map(context.Background(), img, MapOptions{ReadOnly: true}); err == nil {
		t.Fatal("Map read-only over a read-write mapping succeeded")
	}
	if len(r.calls) != 0 {
		t.Fatalf("ran %q for a healthy mapping", r.calls)
	}
}
