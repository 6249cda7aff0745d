package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

// kernel is an installed kernel image and the version its modules are under.
type kernel struct {
	version string // "6.1.0-57-amd64"
	image   string // /boot/vmlinuz-VERSION
}

// installedKernel returns the newest kernel in /boot whose modules are
// installed (linux-image-amd64 brings one).
func installedKernel() (kernel, error) {
	images, _ := filepath.Glob("/boot/vmlinuz-*")
	var found []kernel
	for _, img := range images {
		version := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		if _, err := os.Stat(filepath.Join("/lib/modules", version, "modules.dep")); err == nil {
			found = append(found, kernel{version: version, image: img})
		}
	}
	if len(found) == 0 {
		return kernel{}, errors.New("vm: no kernel with modules installed: apt-get install linux-image-amd64")
	}
	sort.Slice(found, func(i, j int) bool { return versionLess(found[i].version, found[j].version) })
	return found[len(found)-1], nil
}

// versionLess orders "6.1.0-9-amd64" before "6.1.0-10-amd64".
func versionLess(a, b string) bool {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' })
	}
	pa, pb := split(a), split(b)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		var na, nb int
		_, ea := fmt.Sscan(pa[i], &na)
		_, eb := fmt.Sscan(pb[i], &nb)
		if ea == nil && eb == nil {
			return na < nb
		}
		return pa[i] < pb[i]
	}
	return len(pa) < len(pb)
}

// moduleFiles returns the module files that load names, dependencies
// first, as modprobe would insert them; built-in ones need no file.
func moduleFiles(ctx context.Context, k kernel, names []string) ([]string, error) {
	var files []string
	seen := map[string]bool{}
	for _, name := range names {
		out, err := exec.CommandContext(ctx, "modprobe", "-S", k.version, "--show-depends", name).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("vm: modprobe --show-depends %s for %s: %w: %s", name, k.version, err, out)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 && f[0] == "insmod" && !seen[f[1]] {
				seen[f[1]] = true
				files = append(files, f[1])
			}
		}
	}
	return files, nil
}

// packInitramfs builds, in dir, the guest's initramfs: a static busybox,
// the init script, and the modules it loads (listed in /modules, in load
// order). It returns the path of the packed cpio archive.
func packInitramfs(ctx context.Context, k kernel, dir string) (string, error) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return "", fmt.Errorf("vm: busybox is needed (busybox-static): %w", err)
	}
	modules, err := moduleFiles(ctx, k, guestModules)
	if err != nil {
		return "", err
	}
	root := filepath.Join(dir, "root")
	for _, d := range []string{"bin", "dev", "proc", "sys"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	// init's stdio: the kernel opens /dev/console before devtmpfs is mounted.
	if err := syscall.Mknod(filepath.Join(root, "dev", "console"), syscall.S_IFCHR|0o600, 5<<8|1); err != nil {
		return "", fmt.Errorf("vm: creating /dev/console: %w", err)
	}
	copies := map[string]string{busybox: "bin/busybox"}
	for _, m := range modules {
		copies[m] = strings.TrimPrefix(m, "/")
	}
	for from, to := range copies {
		if err := copyFile(from, filepath.Join(root, to), 0o755); err != nil {
			return "", err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(initScript), 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, "modules"), []byte(strings.Join(modules, "\n")+"\n"), 0o644); err != nil {
		return "", err
	}
	archive := filepath.Join(dir, "initramfs.cpio")
	if err := packCPIO(ctx, root, archive); err != nil {
		return "", err
	}
	return archive, os.RemoveAll(root)
}

// packCPIO writes the tree under root as a newc cpio archive, the format
// the kernel unpacks an initramfs from.
func packCPIO(ctx context.Context, root, archive string) error {
	var names bytes.Buffer
	err := filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		names.WriteString(rel + "\n")
		return err
	})
	if err != nil {
		return err
	}
	out, err := os.Create(archive)
	if err != nil {
		return err
	}
	defer out.Close()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "cpio", "--quiet", "-o", "-H", "newc")
	cmd.Dir, cmd.Stdin, cmd.Stdout, cmd.Stderr = root, &names, out, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("vm: cpio: %w: %s", err, stderr.String())
	}
	return out.Close()
}

func copyFile(from, to string, mode os.FileMode) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, data, mode)
}
