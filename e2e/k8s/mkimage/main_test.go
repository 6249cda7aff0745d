package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// The layer is reproducible and holds the tree as an image needs it: root
// owned, directories, files and symlinks; the archive's manifest and config
// point at it by its digest, as `ctr images import` expects.
func TestArchiveOfATree(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("busybox", filepath.Join(dir, "bin", "sh")); err != nil {
		t.Fatal(err)
	}
	layer, err := layerOf(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := layerOf(dir)
	if !bytes.Equal(layer, again) {
		t.Error("the same tree gave two different layers")
	}
	entries := readTar(t, layer)
	if h := entries["bin/sh"].hdr; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
		t.Errorf("bin/sh = %+v, want a symlink to busybox", h)
	}
	if h := entries["bin/busybox"].hdr; h == nil || h.Uid != 0 || h.Mode&0o111 == 0 {
		t.Errorf("bin/busybox = %+v, want an executable owned by root", h)
	}
	if entries["bin/"].hdr == nil {
		t.Error("no bin/ directory entry")
	}

	out := filepath.Join(t.TempDir(), "image.tar")
	os.Args = []string{"mkimage", "-dir", dir, "-tag", "example.com/busybox:1", "-cmd", "sh", "-o", out}
	main()
	archive, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	files := readTar(t, archive)
	var manifest []manifestEntry
	if err := json.Unmarshal(files["manifest.json"].data, &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("manifest.json: %v %s", err, files["manifest.json"].data)
	}
	m := manifest[0]
	if len(m.RepoTags) != 1 || m.RepoTags[0] != "example.com/busybox:1" || len(m.Layers) != 1 {
		t.Errorf("manifest = %+v", m)
	}
	sum := sha256.Sum256(files[m.Layers[0]].data)
	var cfg imageConfig
	if err := json.Unmarshal(files[m.Config].data, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.RootFS.DiffIDs[0] != "sha256:"+hex.EncodeToString(sum[:]) || cfg.Config.Cmd[0] != "sh" {
		t.Errorf("config = %+v, layer digest %x", cfg, sum)
	}
}

// tarEntry is one member of a tar archive.
type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

func readTar(t *testing.T, b []byte) map[string]tarEntry {
	t.Helper()
	out := map[string]tarEntry{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = tarEntry{h, data}
	}
}
