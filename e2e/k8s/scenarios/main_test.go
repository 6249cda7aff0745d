package main

import "testing"

func TestSelected(t *testing.T) {
	tests := []struct {
		only, id string
		want     bool
	}{
		{"", "2", true},
		{"1", "1", true},
		{"1", "2", false},
		{"3", "3a", true},
		{"3", "3b", true},
		{"3a", "3b", false},
		{"1, 7", "7b", true},
		{"7b", "7", false},
	}
	for _, tc := range tests {
		if got := selected(tc.only, tc.id); got != tc.want {
			t.Errorf("selected(%q, %q) = %v, want %v", tc.only, tc.id, got, tc.want)
		}
	}
}

func TestEveryScenarioHasADistinctID(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range scenarios() {
		if seen[s.id] || s.run == nil || s.timeout <= 0 {
			t.Errorf("scenario %q: duplicate, no function or no timeout", s.id)
		}
		seen[s.id] = true
	}
}
