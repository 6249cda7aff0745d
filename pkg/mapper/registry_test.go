package mapper

import (
	"context"
	"errors"
	"testing"
)

func TestRegistryGet(t *testing.T) {
	tests := []struct {
		name, def, get, want string
		wantErr              error
	}{
		{name: "empty is the default", get: "", want: KRBD},
		{name: "configured default", def: "rbd-fuse", get: "", want: Fuse},
		{name: "krbd", get: "krbd", want: KRBD},
		{name: "rbd (ceph-csi's name for krbd)", get: "rbd", want: KRBD},
		{name: "rbd-nbd", get: "rbd-nbd", want: NBD},
		{name: "nbd", get: "nbd", want: NBD},
		{name: "fuse", get: "fuse", want: Fuse},
		{name: "rbd-fuse", get: "rbd-fuse", want: Fuse},
		{name: "case and spaces", get: " KRBD ", want: KRBD},
		{name: "unknown", get: "iscsi", wantErr: ErrUnknownMapper},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewRegistry(Config{Runner: &fakeRunner{}, StateDir: t.TempDir(), Default: tt.def})
			if err != nil {
				t.Fatal(err)
			}
			m, err := r.Get(tt.get)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Get(%q) error = %v, want %v", tt.get, err, tt.wantErr)
			}
			if err == nil && m.Name() != tt.want {
				t.Fatalf("Get(%q) = %s, want %s", tt.get, m.Name(), tt.want)
			}
		})
	}
}

func TestNewRegistryRejects(t *testing.T) {
	if _, err := NewRegistry(Config{}); err == nil {
		t.Error("NewRegistry without a Runner succeeded")
	}
	if _, err := NewRegistry(Config{Runner: &fakeRunner{}, Default: "iscsi"}); !errors.Is(err, ErrUnknownMapper) {
		t.Errorf("NewRegistry with an unknown default = %v", err)
	}
}

func TestRegistryOfFakes(t *testing.T) {
	krbd, fuse := NewFakeMapper(KRBD), NewFakeMapper(Fuse)
	r, err := RegistryOf("fuse", krbd, fuse)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := r.Get(""); err != nil || m != fuse {
		t.Fatalf("Get(\"\") = %v, %v; want the fuse fake", m, err)
	}
	if _, err := r.Get("nbd"); !errors.Is(err, ErrUnknownMapper) {
		t.Fatalf("Get(nbd) without an nbd mapper = %v", err)
	}
	if _, err := RegistryOf("", NewFakeMapper("iscsi")); !errors.Is(err, ErrUnknownMapper) {
		t.Fatalf("RegistryOf with a bad name = %v", err)
	}
}

func TestFakeMapper(t *testing.T) {
	ctx := context.Background()
	f := NewFakeMapper(KRBD)
	a, err := f.Map(ctx, testImage(), MapOptions{})
	if err != nil {
		t.Fatal(err)
	}
	again, _ := f.Map(ctx, testImage(), MapOptions{})
	if again != a {
		t.Fatalf("second Map = %+v, want %+v", again, a)
	}
	f.BusyDevices[a.Device] = true
	if err := f.Unmap(ctx, a, UnmapOptions{}); !errors.Is(err, ErrBusy) {
		t.Fatalf("Unmap busy = %v", err)
	}
	delete(f.BusyDevices, a.Device)
	for i := 0; i < 2; i++ {
		if err := f.Unmap(ctx, a, UnmapOptions{}); err != nil {
			t.Fatalf("Unmap #%d = %v", i, err)
		}
	}
	if ms, _ := f.List(ctx); len(ms) != 0 {
		t.Fatalf("List after Unmap = %+v", ms)
	}
	if n := len(f.MapCalls()); n != 2 {
		t.Fatalf("%d Map calls recorded, want 2", n)
	}
}
