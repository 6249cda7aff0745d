package ceph

import (
	"slices"
	"testing"
)

func TestAddrVec(t *testing.T) {
	tests := []struct {
		in          string
		vec, plains []string
	}{
		{"10.0.0.5:0/228790166", []string{"10.0.0.5:0/228790166"}, []string{"10.0.0.5:0/228790166"}},
		{"v1:10.0.0.5:0/7", []string{"v1:10.0.0.5:0/7"}, []string{"10.0.0.5:0/7"}},
		{"any:10.0.0.5:0/7", []string{"any:10.0.0.5:0/7"}, []string{"10.0.0.5:0/7"}},
		{"[v2:10.0.0.5:0/7,v1:10.0.0.5:0/7]", []string{"v2:10.0.0.5:0/7", "v1:10.0.0.5:0/7"},
			[]string{"10.0.0.5:0/7", "10.0.0.5:0/7"}},
		{"[any:10.0.0.5:0/7]", []string{"any:10.0.0.5:0/7"}, []string{"10.0.0.5:0/7"}},
		{"v2:[fd00::5]:0/42", []string{"v2:[fd00::5]:0/42"}, []string{"[fd00::5]:0/42"}},
		{"[v2:[fd00::5]:3300/0,v1:[fd00::5]:6789/0]", []string{"v2:[fd00::5]:3300/0", "v1:[fd00::5]:6789/0"},
			[]string{"[fd00::5]:3300/0", "[fd00::5]:6789/0"}},
		{"[fd00::1]:6789", []string{"[fd00::1]:6789"}, []string{"[fd00::1]:6789"}}, // IPv6, not a vector
		{"[fd00::1]:0/9", []string{"[fd00::1]:0/9"}, []string{"[fd00::1]:0/9"}},
		{"", nil, nil},
		{"v1:", []string{"v1:"}, nil},
	}
	for _, tc := range tests {
		if got := AddrVec(tc.in); !slices.Equal(got, tc.vec) {
			t.Errorf("AddrVec(%q) = %q, want %q", tc.in, got, tc.vec)
		}
		if got := PlainAddrs(tc.in); !slices.Equal(got, tc.plains) {
			t.Errorf("PlainAddrs(%q) = %q, want %q", tc.in, got, tc.plains)
		}
	}
}

func TestSameClient(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"10.0.0.2:0/1001", "10.0.0.2:0/1001", true},
		{"v1:10.0.0.2:0/1001", "10.0.0.2:0/1001", true},
		{"10.0.0.2:0/1001", "v2:10.0.0.2:0/1001", true},
		{"any:10.0.0.2:0/1001", "v1:10.0.0.2:0/1001", true},
		{"10.0.0.2:0/1001", "10.0.0.2:0/1002", false}, // another instance of the same host
		{"10.0.0.2:0/1001", "10.0.0.3:0/1001", false},
		{"", "", false}, // an unknown address is nobody
		{"", "10.0.0.2:0/1001", false},
	}
	for _, tc := range tests {
		if got := SameClient(tc.a, tc.b); got != tc.want {
			t.Errorf("SameClient(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
