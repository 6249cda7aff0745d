package nodefs

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestCheckPath(t *testing.T) {
	const kubelet = "/var/lib/kubelet"
	tests := []struct {
		path, root string
		ok         bool
	}{
		{"/var/lib/kubelet/pods/p/volumes/v/mount", kubelet, true},
		{"/var/lib/kubelet/plugins/x/globalmount", kubelet + "/", true},
		{"/anywhere", "", true},
		{"", "", false},
		{"relative/path", "", false},
		{"/var/lib/kubelet/../../etc", kubelet, false},
		{"/var/lib/kubelet/pods/../..", "", false},
		{"/var/lib/kubelet", kubelet, false}, // the directory itself
		{"/var/lib/kubeletx/pods", kubelet, false},
		{"/etc/passwd", kubelet, false},
		{"/var/lib/kubelet/plugins/x/\x00/globalmount", kubelet, false},
		{"/var/lib/kubelet/plugins/x/" + strings.Repeat("a", 242), kubelet, true}, // its record's name is 255 bytes
		{"/var/lib/kubelet/plugins/x/" + strings.Repeat("a", 243), kubelet, false},
		{"/var/lib/kubelet/" + strings.Repeat("a/", 2030), kubelet, true}, // 4077 bytes, 4090 with its record's suffix
		{"/var/lib/kubelet/" + strings.Repeat("a/", 2040), kubelet, false},
	}
	for _, tc := range tests {
		err := CheckPath("target path", tc.path, tc.root)
		if (err == nil) != tc.ok || (err != nil && status.Code(err) != codes.InvalidArgument) {
			t.Errorf("CheckPath(%q, %q) = %v, want ok %v", tc.path, tc.root, err, tc.ok)
		}
	}
}
