package mapper

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseClassOptions(t *testing.T) {
	tests := []struct {
		name            string
		in              string
		krbd, nbd, fuse string
		plain           bool
		mappers         []string
		wantErr         string
	}{
		{name: "empty", in: ""},
		{name: "plain form is krbd's", in: "lock_on_read, queue_depth=1024",
			krbd: "lock_on_read,queue_depth=1024", plain: true, mappers: []string{KRBD}},
		{name: "per mapper, ceph-csi's example", in: "krbd:lock_on_read,queue_depth=1024;nbd:try-netlink",
			krbd: "lock_on_read,queue_depth=1024", nbd: "try-netlink", mappers: []string{KRBD, NBD}},
		{name: "nbd only", in: "nbd:try-netlink,io-timeout=30", nbd: "try-netlink,io-timeout=30", mappers: []string{NBD}},
		{name: "unmap example", in: "krbd:force;nbd:force", krbd: "force", nbd: "force", mappers: []string{KRBD, NBD}},
		{name: "mapper names in any spelling and case", in: " KRBD : noudev ; rbd-nbd:try-netlink;", krbd: "noudev",
			nbd: "try-netlink", mappers: []string{KRBD, NBD}},
		{name: "value holding ':' after a prefix", in: "krbd:read_from_replica=localize,crush_location=zone:zone1",
			krbd: "read_from_replica=localize,crush_location=zone:zone1", mappers: []string{KRBD}},
		{name: "plain part beside a prefixed one", in: "noudev;nbd:try-netlink", krbd: "noudev", nbd: "try-netlink",
			plain: true, mappers: []string{KRBD, NBD}},
		{name: "empty part for a mapper", in: "fuse:", mappers: []string{}},
		{name: "value holding ':' without a prefix", in: "crush_location=zone:zone1", wantErr: "need one"},
		{name: "unknown mapper", in: "iscsi:foo", wantErr: `"iscsi"`},
		{name: "a mapper twice", in: "krbd:a;krbd:b", wantErr: "twice"},
		{name: "plain and krbd: both", in: "a;krbd:b", wantErr: "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := ParseClassOptions(tt.in)
			if tt.wantErr != "" {
				if !errors.Is(err, ErrBadOptions) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseClassOptions(%q) = %v, want ErrBadOptions naming %s", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []string{o.For(KRBD), o.For(NBD), o.For(Fuse)}
			if want := []string{tt.krbd, tt.nbd, tt.fuse}; !reflect.DeepEqual(got, want) {
				t.Errorf("krbd, nbd, fuse options = %q, want %q", got, want)
			}
			if o.For("rbd") != tt.krbd || o.For("nbd") != tt.nbd {
				t.Errorf("For does not accept other spellings of the mapper")
			}
			if o.Plain() != tt.plain {
				t.Errorf("Plain() = %v, want %v", o.Plain(), tt.plain)
			}
			if m := o.Mappers(); len(m)+len(tt.mappers) > 0 && !reflect.DeepEqual(m, tt.mappers) {
				t.Errorf("Mappers() = %v, want %v", m, tt.mappers)
			}
		})
	}
}

func TestCheckOptions(t *testing.T) {
	tests := []struct {
		name, mapper, options string
		unmap                 bool
		wantErr               string
	}{
		{name: "krbd map options", mapper: "krbd", options: "lock_on_read,queue_depth=1024,crush_location=zone:z1,ms_mode=secure"},
		{name: "krbd under ceph-csi's name", mapper: "rbd", options: "noudev"},
		{name: "krbd unknown option", mapper: "krbd", options: "lock_on_read,try-netlink", wantErr: `no map option "try-netlink"`},
		{name: "krbd unmap force", mapper: "krbd", options: "force", unmap: true},
		{name: "krbd unmap option it only takes at map", mapper: "krbd", options: "queue_depth=1", unmap: true, wantErr: "queue_depth"},
		{name: "nbd map options", mapper: "rbd-nbd", options: "try-netlink,io-timeout=30,reattach-timeout=300"},
		{name: "nbd flags spelt with dashes", mapper: "nbd", options: "--try-netlink"},
		{name: "nbd encryption", mapper: "nbd", options: "encryption-format=luks2", wantErr: "encryption-format"},
		{name: "nbd has no unmap options", mapper: "nbd", options: "force", unmap: true, wantErr: "takes no unmap options"},
		{name: "fuse takes no map options", mapper: "fuse", options: "ro", wantErr: "takes no map options"},
		{name: "fuse takes no unmap options", mapper: "rbd-fuse", options: "force", unmap: true, wantErr: "takes no unmap options"},
		{name: "nothing is fine for every mapper", mapper: "fuse", options: " , "},
		{name: "unknown mapper", mapper: "iscsi", options: "x", wantErr: "unknown mapper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := CheckMapOptions
			if tt.unmap {
				check = CheckUnmapOptions
			}
			err := check(tt.mapper, tt.options)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error naming %s", err, tt.wantErr)
			}
		})
	}
}

func TestUnmappableFeatures(t *testing.T) {
	all := []string{"layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten", "journaling"}
	tests := []struct {
		mapper string
		want   []string
	}{
		{KRBD, []string{"journaling"}},
		{"rbd", []string{"journaling"}},
		{NBD, nil},
		{Fuse, nil},
	}
	for _, tt := range tests {
		if got := UnmappableFeatures(tt.mapper, all); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("UnmappableFeatures(%s) = %v, want %v", tt.mapper, got, tt.want)
		}
	}
}
