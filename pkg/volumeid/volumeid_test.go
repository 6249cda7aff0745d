package volumeid

import (
	"errors"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	ids := []ID{
		{ClusterID: "rook-ceph", PoolID: 2, UUID: "0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c"},
		{ClusterID: "a-b-c-d", PoolID: 1<<62 + 5, UUID: "00000000-0000-0000-0000-000000000000"},
		{ClusterID: "x", PoolID: 0, UUID: "ffffffff-ffff-ffff-ffff-ffffffffffff"},
	}
	for _, id := range ids {
		if err := id.Validate(); err != nil {
			t.Fatalf("%+v: %v", id, err)
		}
		got, err := Parse(id.String())
		if err != nil {
			t.Fatalf("Parse(%q): %v", id.String(), err)
		}
		if got != id {
			t.Errorf("Parse(%q) = %+v, want %+v", id.String(), got, id)
		}
	}
}

func TestCephCSICompatible(t *testing.T) {
	// An ID in the form ceph-csi writes for a rook-ceph cluster.
	s := "0001-0009-rook-ceph-0000000000000002-9f0b2c1e-41a5-11ee-8c3a-0242ac120002"
	id, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if id.ClusterID != "rook-ceph" || id.PoolID != 2 || id.UUID != "9f0b2c1e-41a5-11ee-8c3a-0242ac120002" {
		t.Errorf("got %+v", id)
	}
}

func TestParseRejects(t *testing.T) {
	valid := ID{ClusterID: "c1", PoolID: 3, UUID: "0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c"}.String()
	cases := map[string]string{
		"empty":            "",
		"garbage":          "not-an-id",
		"wrong version":    "0002" + valid[4:],
		"trailing":         valid + "x",
		"truncated":        valid[:len(valid)-1],
		"bad length hex":   "0001-zzzz-c1-0000000000000003-0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c",
		"zero length":      "0001-0000--0000000000000003-0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c",
		"length too long":  "0001-0003-c1-0000000000000003-0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c",
		"upper-case uuid":  "0001-0002-c1-0000000000000003-0C8A6C8E-7C1F-4A3B-9D3E-2B1F0F1E2D3C",
		"bad pool":         "0001-0002-c1-00000000000000g3-0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c",
		"negative pool":    "0001-0002-c1-ffffffffffffffff-0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c",
		"missing dash":     "0001-0002-c1x0000000000000003-0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c",
		"uuid bad dashes":  "0001-0002-c1-0000000000000003-0c8a6c8e77c1f-4a3b-9d3e-2b1f0f1e2d3c",
		"csi-sanity style": "a-very-long-volume-id-that-does-not-exist",
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse(s); !errors.Is(err, ErrMalformed) {
				t.Errorf("Parse(%q) error = %v, want ErrMalformed", s, err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(ID{ClusterID: "rook-ceph", PoolID: 2, UUID: "0c8a6c8e-7c1f-4a3b-9d3e-2b1f0f1e2d3c"}.String())
	f.Add("0001-0001-x-0000000000000000-00000000-0000-0000-0000-000000000000")
	f.Add("0001-ffff-")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		// Whatever parses must encode back to the same string.
		if got := id.String(); got != s {
			t.Fatalf("Parse(%q) = %+v, which encodes to %q", s, id, got)
		}
	})
}

func TestOfBacking(t *testing.T) {
	const uuid = "0c4a7a7e-2f61-4b6e-9d1c-8a3c5b1f2e44"
	want := ID{ClusterID: "c1", PoolID: 7, UUID: uuid}.String()
	for name, w := range map[string]string{"csi-vol-" + uuid: want, uuid: want, "csi-vol-x": "", "": "",
		"csi-vol-" + strings.ToUpper(uuid): ""} {
		if got := OfBacking("c1", 7, name); got != w {
			t.Errorf("OfBacking(%q) = %q, want %q", name, got, w)
		}
	}
}
