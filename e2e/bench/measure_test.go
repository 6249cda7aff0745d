package main

import (
	"reflect"
	"testing"
	"time"
)

func TestBatches(t *testing.T) {
	for _, tc := range []struct {
		name            string
		n, conc, rounds int
		want            [][]int
	}{
		{"rounds as asked", 6, 1, 3, [][]int{{0, 1}, {2, 3}, {4, 5}}},
		{"no batch smaller than the concurrency", 20, 16, 5, [][]int{seq(20)}},
		{"uneven split", 5, 2, 5, [][]int{{0, 1}, {2, 3, 4}}},
		{"fewer items than workers", 3, 16, 5, [][]int{{0, 1, 2}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := batches(tc.n, tc.conc, tc.rounds); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("batches(%d, %d, %d) = %v, want %v", tc.n, tc.conc, tc.rounds, got, tc.want)
			}
		})
	}
}

func TestChunks(t *testing.T) {
	if got, want := chunks(5, 2), [][]int{{0, 1}, {2, 3}, {4}}; !reflect.DeepEqual(got, want) {
		t.Errorf("chunks(5, 2) = %v, want %v", got, want)
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 200; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    int
		want time.Duration
	}{{50, 100 * time.Millisecond}, {90, 180 * time.Millisecond}, {99, 198 * time.Millisecond}, {100, 200 * time.Millisecond}} {
		if got := percentile(d, tc.p); got != tc.want {
			t.Errorf("p%d = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile([]time.Duration{time.Second}, 50); got != time.Second {
		t.Errorf("p50 of one = %v", got)
	}
}

func TestAlignColumns(t *testing.T) {
	got := alignColumns([][]string{{"op", "ms"}, {"CreateVolume", "1.5"}}, 1)
	want := "op             ms\nCreateVolume  1.5\n"
	if got != want {
		t.Errorf("got\n%q\nwant\n%q", got, want)
	}
}
