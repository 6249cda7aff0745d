package rbd

import (
	"encoding/hex"
	"testing"
)

func TestDecodeHeaderReplies(t *testing.T) {
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Replies of a Pacific OSD: a 1 GiB image of order 22, an image with no
	// parent, and a clone of image 104baa289ce5 (pool 1) at snapshot 164.
	size, err := decodeSize(unhex("160000004000000000"))
	if err != nil || size != 1<<30 {
		t.Errorf("size = %d, %v; want 1 GiB", size, err)
	}
	tests := []struct {
		name  string
		reply string
		want  *HeadParent
		bad   bool
	}{
		{"no parent", "010118000000ffffffffffffffff0000000000000000feffffffffffffff", nil, false},
		{"clone", "0101240000000100000000000000000000000c000000313034626161323839636535a400000000000000",
			&HeadParent{PoolID: 1, ImageID: "104baa289ce5", SnapID: 164}, false},
		{"truncated", "0101240000000100000000000000000000000c0000003130", nil, true},
		{"length beyond the reply", "010118000000ffffffffffffffff00000000ffffff00feffffffffffffff", nil, true},
		{"version 0", "000118000000ffffffffffffffff0000000000000000feffffffffffffff", nil, true},
		{"empty", "", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeParent(unhex(tc.reply))
			if (err != nil) != tc.bad {
				t.Fatalf("error %v, want error %t", err, tc.bad)
			}
			switch {
			case tc.want == nil && got != nil:
				t.Errorf("parent %+v, want none", got)
			case tc.want != nil && (got == nil || *got != *tc.want):
				t.Errorf("parent %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := decodeSize([]byte{1, 2}); err == nil {
		t.Error("a short get_size reply decoded")
	}
}
