package main

import (
	"os"
	"strings"
	"testing"
)

func TestReport(t *testing.T) {
	stream := strings.Join([]string{
		`{"Action":"run","Package":"p","Test":"TestOK"}`,
		`{"Action":"output","Package":"p","Test":"TestOK","Output":"=== RUN   TestOK\n"}`,
		`{"Action":"pass","Package":"p","Test":"TestOK"}`,
		`{"Action":"output","Package":"p","Test":"TestBad","Output":"    x_test.go:9: wrong answer\n"}`,
		`{"Action":"fail","Package":"p","Test":"TestBad"}`,
		`{"Action":"output","Package":"p","Test":"TestNo","Output":"=== RUN   TestNo\n"}`,
		`{"Action":"output","Package":"p","Test":"TestNo","Output":"    x_test.go:12: needs CAP_SYS_RESOURCE\n"}`,
		`{"Action":"output","Package":"p","Test":"TestNo","Output":"--- SKIP: TestNo (0.00s)\n"}`,
		`{"Action":"skip","Package":"p","Test":"TestNo"}`,
		`{"Action":"output","Package":"p","Output":"FAIL\tp\t0.1s\n"}`,
		`{"Action":"fail","Package":"p"}`,
		`{"Action":"output","Package":"q","Test":"TestHang","Output":"panic: test timed out after 1s\n"}`,
		`{"Action":"fail","Package":"q"}`,
		`{"Action":"output","Package":"r","Output":"ok  \tr\t0.2s\n"}`,
		`{"Action":"pass","Package":"r"}`,
		`{"ImportPath":"s","Action":"build-output","Output":"s/a.go:1: syntax error\n"}`,
		`{"ImportPath":"s","Action":"build-fail"}`,
		`go: some message`,
	}, "\n")
	var out strings.Builder
	if run(strings.NewReader(stream), &out, nil) {
		t.Error("a failed test and a failed build reported as success")
	}
	for _, want := range []string{
		"x_test.go:9: wrong answer", "FAIL\tp\t0.1s", "panic: test timed out", "ok  \tr\t0.2s",
		"s/a.go:1: syntax error", "go: some message",
		"tests: 1 passed, 1 failed, 1 skipped",
		"skipped: p TestNo: x_test.go:12: needs CAP_SYS_RESOURCE",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "=== RUN   TestOK") {
		t.Errorf("a passing test's output is printed:\n%s", out.String())
	}
	out.Reset()
	if !run(strings.NewReader(`{"Action":"pass","Package":"r","Test":"TestA"}`), &out, nil) {
		t.Errorf("all passing reported as failure:\n%s", out.String())
	}
}

func TestReportFindsKeys(t *testing.T) {
	const key = "test-only-not-a-key-0123456789"
	stream := strings.Join([]string{
		`{"Action":"output","Package":"p","Test":"TestA","Output":"I1130 fuse.go:1] mapped\n"}`,
		`{"Action":"output","Package":"p","Test":"TestA","Output":"I1130 exec.go:1] rbd-fuse --key ` + key + `\n"}`,
		`{"Action":"pass","Package":"p","Test":"TestA"}`,
	}, "\n")
	var out strings.Builder
	if run(strings.NewReader(stream), &out, []string{key}) {
		t.Error("a key in a passing test's output reported as success")
	}
	if strings.Contains(out.String(), key) {
		t.Errorf("the report prints the key:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "secrets: 1 of 2 output lines carry one of the 1 keys") ||
		!strings.Contains(out.String(), "a key in the output of p TestA") {
		t.Errorf("the report does not name the leak:\n%s", out.String())
	}
}

func TestReadSecrets(t *testing.T) {
	dir := t.TempDir()
	bare, ring := dir+"/k", dir+"/keyring"
	if err := os.WriteFile(bare, []byte("test-only-bare-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ring, []byte("[client.admin]\n\tkey = test-only-ring-0123456789\n\tcaps mon = \"allow *\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readSecrets(bare + "," + ring)
	if err != nil || strings.Join(got, " ") != "test-only-bare-0123456789 test-only-ring-0123456789" {
		t.Errorf("readSecrets = %v, %v", got, err)
	}
}
