package volume

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestPage(t *testing.T) {
	tests := []struct {
		name       string
		token      string
		max        int32
		n          int
		start, end int
		next       string
		code       codes.Code
	}{
		{"everything", "", 0, 5, 0, 5, "", codes.OK},
		{"first page", "", 2, 5, 0, 2, "2", codes.OK},
		{"middle page", "2", 2, 5, 2, 4, "4", codes.OK},
		{"last page", "4", 2, 5, 4, 5, "", codes.OK},
		{"exactly the rest", "3", 2, 5, 3, 5, "", codes.OK},
		{"token at the end", "5", 2, 5, 5, 5, "", codes.OK},
		{"empty", "", 3, 0, 0, 0, "", codes.OK},
		{"token past the end", "6", 2, 5, 0, 0, "", codes.Aborted},
		{"token not a number", "x", 2, 5, 0, 0, "", codes.Aborted},
		{"negative token", "-1", 2, 5, 0, 0, "", codes.Aborted},
		{"negative max", "", -1, 5, 0, 0, "", codes.InvalidArgument},
	}
	for _, tc := range tests {
		start, end, next, err := Page(tc.token, tc.max, tc.n)
		if status.Code(err) != tc.code || start != tc.start || end != tc.end || next != tc.next {
			t.Errorf("%s: Page = %d, %d, %q, %v; want %d, %d, %q, %v", tc.name, start, end, next, err,
				tc.start, tc.end, tc.next, tc.code)
		}
	}
}
