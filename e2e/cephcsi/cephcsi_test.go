package cephcsi

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigJSON(t *testing.T) {
	tests := []struct {
		name     string
		clusters []Cluster
		want     string
	}{
		{"defaults left to ceph-csi", []Cluster{{ClusterID: "a", Monitors: []string{"v1:127.0.0.1:6789"}}},
			`[{"clusterID":"a","monitors":["v1:127.0.0.1:6789"],"rbd":{},"cephFS":{}}]`},
		{"namespaces and group", []Cluster{{ClusterID: "b", Monitors: []string{"m1", "m2"}, RBDNamespace: "ns1",
			SubvolumeGroup: "g", CephFSNamespace: "fsns"}},
			`[{"clusterID":"b","monitors":["m1","m2"],"rbd":{"radosNamespace":"ns1"},"cephFS":{"subvolumeGroup":"g","radosNamespace":"fsns"}}]`},
		{"no monitors", []Cluster{{ClusterID: "c"}}, ""},
		{"no cluster ID", []Cluster{{Monitors: []string{"m"}}}, ""},
	}
	for _, tc := range tests {
		got, err := ConfigJSON(tc.clusters)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: no error, got %s", tc.name, got)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("%s: %s, %v\n want %s", tc.name, got, err, tc.want)
		}
	}
}

func TestUnpack(t *testing.T) {
	dir := t.TempDir()
	payload := []byte("#!/bin/sh\necho ceph-csi\n")
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(payload)
	w.Close()
	for name, content := range map[string][]byte{"cephcsi.gz": gz.Bytes(), "plain": payload} {
		src := filepath.Join(dir, name)
		if err := os.WriteFile(src, content, 0o644); err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, name+".out")
		if err := unpack(src, dst); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, _ := os.ReadFile(dst)
		st, _ := os.Stat(dst)
		if !bytes.Equal(got, payload) || st.Mode().Perm()&0o100 == 0 {
			t.Errorf("%s: unpacked %q mode %v", name, got, st.Mode())
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "bad.gz"), []byte{0x1f, 0x8b, 0, 1, 2}, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unpack(filepath.Join(dir, "bad.gz"), filepath.Join(dir, "bad.out")); err == nil {
		t.Error("a corrupt gzip file unpacked without error")
	}
}

func TestBinaryPathFindsTheFileInADirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cephcsi.gz"), []byte{0x1f, 0x8b}, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvBinary, dir)
	if got := binaryPath(t); got != filepath.Join(dir, "cephcsi.gz") {
		t.Errorf("binaryPath = %s", got)
	}
}

func TestLogTailRedactsKeys(t *testing.T) {
	d := &Driver{work: t.TempDir()}
	key := "AQ" + strings.Repeat("x", 38) + "==" // the shape of a cephx key
	log := "one\ntwo --key=" + key + "\nthree\n"
	if err := os.WriteFile(filepath.Join(d.work, "log"), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, want := d.LogTail(2), "two --key=<key>\nthree"; got != want {
		t.Errorf("LogTail = %q, want %q", got, want)
	}
}
