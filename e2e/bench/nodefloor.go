package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/mount"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// fuseFloor is the node's floor: what the fuse mapper and the node do,
// with the tools run directly and the driver's flags: rbd-fuse on one
// image with the librbd cache off, a loop device on its file, mkfs.ext4
// without discard, mount, a bind mount, and their undoing.
type fuseFloor struct {
	dir     string
	conf    string
	keyfile string
	user    string
	pool    string
	run     util.Runner

	mu   sync.Mutex
	maps map[int]*floorMapping
}

// floorMapping is one staged floor volume.
type floorMapping struct {
	image   string
	mnt     string // rbd-fuse's mount; mnt/IMAGE is the image
	device  string
	staging string
	target  string
	fuseLog string
	exited  chan error // rbd-fuse's exit
}

// floorPoll is how often the floor looks for rbd-fuse's image file.
const floorPoll = 10 * time.Millisecond

func newFuseFloor(dir, monHost, user, key, pool string) (*fuseFloor, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f := &fuseFloor{dir: dir, conf: filepath.Join(dir, "ceph.conf"), keyfile: filepath.Join(dir, "keyfile"),
		user: user, pool: pool, run: util.ExecRunner{DefaultTimeout: callTimeout}, maps: map[int]*floorMapping{}}
	// As the fuse mapper's: the monitors and no librbd cache; no admin socket.
	conf := "[global]\nmon_host = " + monHost + "\nrbd_cache = false\nadmin_socket =\n"
	if err := os.WriteFile(f.conf, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(f.keyfile, []byte(key), 0o600); err != nil {
		return nil, err
	}
	return f, nil
}

// close removes the keyfile; mappings are undone by unstage.
func (f *fuseFloor) close() { _ = os.Remove(f.keyfile) }

func (f *fuseFloor) mapping(i int) *floorMapping {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.maps[i]
}

// stage maps image with rbd-fuse and a loop device, formats it and mounts it.
func (f *fuseFloor) stage(ctx context.Context, i int, image string, step stepFunc) error {
	d := filepath.Join(f.dir, strconv.Itoa(i))
	m := &floorMapping{image: image, mnt: filepath.Join(d, "mnt"), staging: filepath.Join(d, "staging"),
		target: filepath.Join(d, "target"), fuseLog: filepath.Join(d, "rbd-fuse.log")}
	if err := step("rbd-fuse", func() error { return f.startFuse(ctx, m) }); err != nil {
		return err
	}
	f.mu.Lock()
	f.maps[i] = m
	f.mu.Unlock()
	err := step("losetup", func() (err error) {
		m.device, err = mount.AttachLoop(ctx, f.run, filepath.Join(m.mnt, image), false)
		return err
	})
	if err != nil {
		return err
	}
	if err := step("mkfs", func() error {
		return f.exec(ctx, "mkfs.ext4", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", m.device)
	}); err != nil {
		return err
	}
	return step("mount", func() error {
		if err := os.MkdirAll(m.staging, 0o750); err != nil {
			return err
		}
		return f.exec(ctx, "mount", "-t", "ext4", m.device, m.staging)
	})
}

// startFuse runs rbd-fuse in the foreground as a child, so its exit is
// known, and waits until it serves the image.
func (f *fuseFloor) startFuse(ctx context.Context, m *floorMapping) error {
	if err := os.MkdirAll(m.mnt, 0o700); err != nil {
		return err
	}
	cmd := exec.Command("rbd-fuse", "-f", "-c", f.conf, "--id", f.user, "--keyfile", f.keyfile,
		"--log-file", m.fuseLog, "--log-to-stderr=false", "--err-to-stderr=false",
		"--poolname="+f.pool, "--image="+m.image, m.mnt)
	if err := cmd.Start(); err != nil {
		return err
	}
	m.exited = make(chan error, 1)
	go func() { m.exited <- cmd.Wait() }()
	file := filepath.Join(m.mnt, m.image)
	tick := time.NewTicker(floorPoll)
	defer tick.Stop()
	for {
		if _, err := os.Stat(file); err == nil {
			return nil
		}
		select {
		case err := <-m.exited:
			m.exited <- err
			return fmt.Errorf("rbd-fuse for %s exited: %v", m.image, err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for rbd-fuse to serve %s: %w", m.image, ctx.Err())
		case <-tick.C:
		}
	}
}

func (f *fuseFloor) publish(ctx context.Context, i int) error {
	m := f.mapping(i)
	if m == nil {
		return errSkip
	}
	if err := os.MkdirAll(m.target, 0o750); err != nil {
		return err
	}
	return f.exec(ctx, "mount", "--bind", m.staging, m.target)
}

func (f *fuseFloor) unpublish(ctx context.Context, i int) error {
	m := f.mapping(i)
	if m == nil {
		return errSkip
	}
	if err := f.exec(ctx, "umount", "-c", m.target); err != nil {
		return err
	}
	return os.Remove(m.target)
}

// unstage unmounts, detaches the loop device and unmounts rbd-fuse,
// waiting for it to exit: only then has its Ceph client let go of the image.
func (f *fuseFloor) unstage(ctx context.Context, i int, step stepFunc) error {
	m := f.mapping(i)
	if m == nil {
		return errSkip
	}
	if err := step("umount", func() error { return f.exec(ctx, "umount", "-c", m.staging) }); err != nil {
		return err
	}
	if err := step("losetup -d", func() error { return f.exec(ctx, "losetup", "-d", m.device) }); err != nil {
		return err
	}
	err := step("rbd-fuse exit", func() error {
		if err := f.exec(ctx, "umount", "-c", m.mnt); err != nil {
			return err
		}
		select {
		case <-m.exited:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("waiting for rbd-fuse of %s to exit: %w", m.image, ctx.Err())
		}
	})
	if err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.maps, i)
	f.mu.Unlock()
	return nil
}

func (f *fuseFloor) exec(ctx context.Context, name string, args ...string) error {
	_, err := f.run.Run(ctx, name, args...)
	return err
}

// teardown undoes, best effort, whatever a failed run left staged.
func (f *fuseFloor) teardown(ctx context.Context) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, m := range f.maps {
		for _, args := range [][]string{{"umount", "-c", m.target}, {"umount", "-c", m.staging},
			{"losetup", "-d", m.device}, {"umount", "-c", m.mnt}} {
			_ = f.exec(ctx, args[0], args[1:]...)
		}
		delete(f.maps, i)
	}
}
