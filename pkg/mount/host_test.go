package mount

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// reply is a canned result for one command.
type reply struct {
	out  string
	exit int // 0: success
}

// fakeRunner records every command and answers from replies, keyed by the
// command line; commands without a reply succeed with no output.
type fakeRunner struct {
	mu      sync.Mutex
	replies map[string]reply
	calls   []string
}

func (r *fakeRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	line := strings.Join(append([]string{name}, args...), " ")
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, line)
	rep := r.replies[line]
	if rep.exit != 0 {
		return []byte(rep.out), &util.ExecError{Cmd: name, ExitCode: rep.exit, Output: rep.out, Err: errors.New("exit status")}
	}
	return []byte(rep.out), nil
}

// mountinfoLine is a mountinfo entry for the tests' fake mount tables.
func writeMountInfo(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestGetFormat(t *testing.T) {
	probe := "blkid -p -s TYPE -s PTTYPE -o export /dev/x"
	tests := []struct {
		name    string
		reply   reply
		want    string
		wantErr bool
	}{
		{"ext4", reply{out: "DEVNAME=/dev/x\nTYPE=ext4\n"}, "ext4", false},
		{"xfs", reply{out: "TYPE=xfs\n"}, "xfs", false},
		{"empty device: blkid exits 2", reply{exit: 2}, "", false},
		{"partition table only", reply{out: "PTTYPE=gpt\n"}, "", false},
		{"ambivalent probe fails", reply{out: "ambivalent result", exit: 8}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &fakeRunner{replies: map[string]reply{probe: tt.reply}}
			got, err := NewHostMounter(Config{Runner: r}).GetFormat(context.Background(), "/dev/x")
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("GetFormat = %q, %v; want %q, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	probe := "blkid -p -s TYPE -s PTTYPE -o export /dev/x"
	tests := []struct {
		name     string
		fstype   string
		options  []string
		probe    reply
		wantCmd  string // last command run, "" if none after the probe
		wantErr  error
		anyError bool
	}{
		{"ext4 forces whole-device mkfs, never discards", "ext4", nil, reply{exit: 2}, "mkfs.ext4 -F -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 /dev/x", nil, false},
		{"ext4 with options", "ext4", []string{"-m0"}, reply{exit: 2}, "mkfs.ext4 -F -m0 -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 /dev/x", nil, false},
		{"ext4 joins the class's extended options", "ext4", []string{"-E", "stride=4", "-m0"}, reply{exit: 2},
			"mkfs.ext4 -F -E stride=4,nodiscard,lazy_itable_init=1,lazy_journal_init=1 -m0 /dev/x", nil, false},
		{"ext4 keeps the class's lazy init", "ext4", []string{"-Elazy_journal_init=0,lazy_itable_init=0"}, reply{exit: 2},
			"mkfs.ext4 -F -Elazy_journal_init=0,lazy_itable_init=0,nodiscard /dev/x", nil, false},
		{"ext4 overrides a discard asked for", "ext3", []string{"-Ediscard"}, reply{exit: 2}, "mkfs.ext3 -F -Ediscard,nodiscard,lazy_itable_init=1,lazy_journal_init=1 /dev/x", nil, false},
		{"ext4: only the last -E counts", "ext4", []string{"-E", "stride=4", "-E", "stripe_width=8"}, reply{exit: 2},
			"mkfs.ext4 -F -E stride=4 -E stripe_width=8,nodiscard,lazy_itable_init=1,lazy_journal_init=1 /dev/x", nil, false},
		{"xfs never forced, never discards", "xfs", nil, reply{exit: 2}, "mkfs.xfs -K /dev/x", nil, false},
		{"xfs with options", "xfs", []string{"-K", "-m", "reflink=0"}, reply{exit: 2}, "mkfs.xfs -K -m reflink=0 /dev/x", nil, false},
		{"refuses a formatted device", "ext4", nil, reply{out: "TYPE=xfs\n"}, "", ErrDeviceNotEmpty, true},
		{"refuses a partitioned device", "xfs", nil, reply{out: "PTTYPE=dos\n"}, "", ErrDeviceNotEmpty, true},
		{"unsupported type", "zfs", nil, reply{exit: 2}, "", ErrUnsupportedFilesystem, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &fakeRunner{replies: map[string]reply{probe: tt.probe}}
			err := NewHostMounter(Config{Runner: r}).Format(context.Background(), "/dev/x", tt.fstype, tt.options)
			if (err != nil) != tt.anyError || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("Format error = %v, want %v", err, tt.wantErr)
			}
			var mkfs []string
			for _, c := range r.calls {
				if strings.HasPrefix(c, "mkfs") {
					mkfs = append(mkfs, c)
				}
			}
			var want []string
			if tt.wantCmd != "" {
				want = []string{tt.wantCmd}
			}
			if !reflect.DeepEqual(mkfs, want) {
				t.Fatalf("ran %q, want %q", mkfs, want)
			}
		})
	}
}

// TestFormatRefusalSaysWhatItFound: the node mounts the filesystem a
// refusal names instead of probing the device a second time.
func TestFormatRefusalSaysWhatItFound(t *testing.T) {
	probe := "blkid -p -s TYPE -s PTTYPE -o export /dev/x"
	tests := []struct {
		out  string
		want NotEmptyError
	}{
		{"TYPE=xfs\n", NotEmptyError{Device: "/dev/x", FSType: "xfs"}},
		{"PTTYPE=dos\n", NotEmptyError{Device: "/dev/x", PTType: "dos"}},
	}
	for _, tt := range tests {
		r := &fakeRunner{replies: map[string]reply{probe: {out: tt.out}}}
		err := NewHostMounter(Config{Runner: r}).Format(context.Background(), "/dev/x", "ext4", nil)
		var found *NotEmptyError
		if !errors.As(err, &found) || *found != tt.want {
			t.Errorf("probe %q: Format error = %#v, want %#v", tt.out, err, tt.want)
		}
	}
}

func TestMountCommands(t *testing.T) {
	tests := []struct {
		name    string
		do      func(m *HostMounter) error
		replies map[string]reply
		want    []string
		wantErr bool
	}{
		{
			name: "mount with type and options",
			do: func(m *HostMounter) error {
				return m.Mount(context.Background(), "/dev/x", "/mnt/a", "ext4", []string{"noatime", "discard"})
			},
			want: []string{"mount -t ext4 -o noatime,discard /dev/x /mnt/a"},
		},
		{
			name: "writable bind",
			do:   func(m *HostMounter) error { return m.BindMount(context.Background(), "/a", "/b", false) },
			want: []string{"mount --bind /a /b"},
		},
		{
			name: "read-only bind needs a remount",
			do:   func(m *HostMounter) error { return m.BindMount(context.Background(), "/a", "/b", true) },
			want: []string{"mount --bind /a /b", "mount -o remount,bind,ro /b"},
		},
		{
			name: "xfs grows through its mount path",
			do:   func(m *HostMounter) error { return m.ResizeFS(context.Background(), "/dev/x", "/mnt/a") },
			replies: map[string]reply{
				"blkid -p -s TYPE -s PTTYPE -o export /dev/x": {out: "TYPE=xfs\n"},
			},
			want: []string{"blkid -p -s TYPE -s PTTYPE -o export /dev/x", "xfs_growfs /mnt/a"},
		},
		{
			name:    "xfs cannot grow unmounted",
			do:      func(m *HostMounter) error { return m.ResizeFS(context.Background(), "/dev/x", "") },
			replies: map[string]reply{"blkid -p -s TYPE -s PTTYPE -o export /dev/x": {out: "TYPE=xfs\n"}},
			want:    []string{"blkid -p -s TYPE -s PTTYPE -o export /dev/x"},
			wantErr: true,
		},
		{
			name: "offline ext4 resize checks first",
			do:   func(m *HostMounter) error { return m.ResizeFS(context.Background(), "/dev/x", "") },
			replies: map[string]reply{
				"blkid -p -s TYPE -s PTTYPE -o export /dev/x": {out: "TYPE=ext4\n"},
				"e2fsck -f -p /dev/x":                         {exit: 1}, // errors fixed: fine
			},
			want: []string{"blkid -p -s TYPE -s PTTYPE -o export /dev/x", "e2fsck -f -p /dev/x", "resize2fs /dev/x"},
		},
		{
			name: "offline ext4 resize stops on an unrepaired filesystem",
			do:   func(m *HostMounter) error { return m.ResizeFS(context.Background(), "/dev/x", "") },
			replies: map[string]reply{
				"blkid -p -s TYPE -s PTTYPE -o export /dev/x": {out: "TYPE=ext4\n"},
				"e2fsck -f -p /dev/x":                         {exit: 4},
			},
			want:    []string{"blkid -p -s TYPE -s PTTYPE -o export /dev/x", "e2fsck -f -p /dev/x"},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &fakeRunner{replies: tt.replies}
			m := NewHostMounter(Config{Runner: r, MountInfoPath: writeMountInfo(t, "1 0 8:1 / / rw - ext4 /dev/root rw")})
			err := tt.do(m)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, want error %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(r.calls, tt.want) {
				t.Fatalf("ran %q, want %q", r.calls, tt.want)
			}
		})
	}
}

func TestOnlineExtResizeNotPermitted(t *testing.T) {
	for name, output := range map[string]string{
		"resize ioctl": "resize2fs 1.47.0 (5-Feb-2023)\nresize2fs: Permission denied to resize filesystem\n" +
			"Filesystem at /dev/x is mounted on /mnt/a; on-line resizing required\n",
		"add group ioctl": "resize2fs 1.46.2\nFilesystem at /dev/x is mounted on /mnt/a; on-line resizing required\n" +
			"resize2fs: Operation not permitted While trying to add group #1\n",
	} {
		t.Run(name, func(t *testing.T) {
			r := &fakeRunner{replies: map[string]reply{
				"blkid -p -s TYPE -s PTTYPE -o export /dev/x": {out: "TYPE=ext4\n"},
				"resize2fs /dev/x":                            {exit: 1, out: output},
			}}
			info := writeMountInfo(t,
				"1 0 8:1 / / rw - ext4 /dev/root rw",
				"2 1 7:3 / /mnt/a rw - ext4 /dev/x rw")
			err := NewHostMounter(Config{Runner: r, MountInfoPath: info}).ResizeFS(context.Background(), "/dev/x", "/mnt/a")
			if !errors.Is(err, ErrOnlineResizeNotPermitted) {
				t.Fatalf("error = %v, want ErrOnlineResizeNotPermitted", err)
			}
			for _, c := range r.calls {
				if strings.HasPrefix(c, "e2fsck") {
					t.Fatalf("ran %q on a mounted filesystem", c)
				}
			}
		})
	}
}

func TestMountTable(t *testing.T) {
	dir := t.TempDir()
	staging := filepath.Join(dir, "staging")
	publish := filepath.Join(dir, "with space")
	block := filepath.Join(dir, "block")
	for _, p := range []string{staging, publish} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(block, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	escaped := strings.ReplaceAll(publish, " ", `\040`)
	info := writeMountInfo(t,
		"1 0 8:1 / / rw - ext4 /dev/root rw",
		"2 1 7:3 / "+staging+" rw - ext4 /dev/loop3 rw",
		"3 1 7:3 / "+escaped+" ro - ext4 /dev/loop3 rw",
		"4 1 0:5 /loop3 "+block+" rw - devtmpfs devtmpfs rw")
	m := NewHostMounter(Config{Runner: &fakeRunner{}, MountInfoPath: info, SysfsRoot: t.TempDir()})
	ctx := context.Background()

	for _, tt := range []struct {
		path    string
		mounted bool
		source  string
	}{
		{staging, true, "/dev/loop3"},
		{publish, true, "/dev/loop3"},
		{block, true, "/dev/loop3"},
		{dir, false, ""},
		{filepath.Join(dir, "missing"), false, ""},
	} {
		got, err := m.IsMountPoint(ctx, tt.path)
		if err != nil || got != tt.mounted {
			t.Errorf("IsMountPoint(%s) = %v, %v; want %v", tt.path, got, err, tt.mounted)
		}
		src, err := m.MountSource(ctx, tt.path)
		if err != nil || src != tt.source {
			t.Errorf("MountSource(%s) = %q, %v; want %q", tt.path, src, err, tt.source)
		}
	}
	holders, err := m.Holders(ctx, "/dev/loop3")
	want := []string{staging, publish, block}
	if err != nil || !reflect.DeepEqual(holders, want) {
		t.Errorf("Holders = %q, %v; want %q", holders, err, want)
	}
}

func TestUnmountIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	r := &fakeRunner{}
	m := NewHostMounter(Config{Runner: r, MountInfoPath: writeMountInfo(t, "1 0 8:1 / / rw - ext4 /dev/root rw")})
	for _, p := range []string{dir, filepath.Join(dir, "gone")} {
		if err := m.Unmount(context.Background(), p); err != nil {
			t.Fatalf("Unmount(%s) = %v", p, err)
		}
	}
	if len(r.calls) != 0 {
		t.Fatalf("ran %q for paths that are not mounted", r.calls)
	}
}

func TestDeviceSize(t *testing.T) {
	r := &fakeRunner{replies: map[string]reply{"blockdev --getsize64 /dev/x": {out: "1073741824\n"}}}
	got, err := NewHostMounter(Config{Runner: r}).DeviceSize(context.Background(), "/dev/x")
	if err != nil || got != 1<<30 {
		t.Fatalf("DeviceSize = %d, %v", got, err)
	}
}

func TestUnescapeOctal(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:   "/a b",
		`/tab\011x`: "/tab\tx",
		`/back\134`: `/back\`,
		`/plain`:    "/plain",
		`/short\04`: `/short\04`,
	} {
		if got := unescapeOctal(in); got != want {
			t.Errorf("unescapeOctal(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUnmountCommands(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	link := filepath.Join(dir, "link")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	sysfs := t.TempDir()
	// loop5 is a read-only view of loop3 (a read-only block publication),
	// loop6 a writable loop device over a file.
	writeFile := func(path, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(filepath.Join(sysfs, "block/loop5/loop/backing_file"), "/dev/loop3\n")
	writeFile(filepath.Join(sysfs, "block/loop5/ro"), "1\n")
	writeFile(filepath.Join(sysfs, "block/loop6/loop/backing_file"), "/var/lib/pelagic/fuse/x/mnt/img\n")
	writeFile(filepath.Join(sysfs, "block/loop6/ro"), "0\n")
	for _, tt := range []struct {
		name   string
		source string // loop device bound at target
		do     func(m *HostMounter) error
		want   []string
	}{
		{"unmount names the resolved path", "loop6", func(m *HostMounter) error { return m.Unmount(context.Background(), target) },
			[]string{"umount -c " + target}},
		{"through a symlink", "loop6", func(m *HostMounter) error { return m.Unmount(context.Background(), link) },
			[]string{"umount -c " + target}},
		{"detach is lazy", "loop6", func(m *HostMounter) error { return m.Detach(context.Background(), target) },
			[]string{"umount -l -c " + target}},
		{"a read-only view goes with its mount", "loop5", func(m *HostMounter) error { return m.Unmount(context.Background(), target) },
			[]string{"umount -c " + target, "losetup -d /dev/loop5"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &fakeRunner{}
			info := writeMountInfo(t, "1 0 8:1 / / rw - ext4 /dev/root rw",
				"2 1 0:5 /"+tt.source+" "+target+" rw - devtmpfs devtmpfs rw")
			m := NewHostMounter(Config{Runner: r, MountInfoPath: info, SysfsRoot: sysfs})
			if err := tt.do(m); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(r.calls, tt.want) {
				t.Fatalf("ran %q, want %q", r.calls, tt.want)
			}
		})
	}
}
