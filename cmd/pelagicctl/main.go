// Command pelagicctl tells an operator who holds a stuck Pelagic volume and
// what to do about it; see package ctl. Installed as kubectl-pelagic it is
// the kubectl plugin "kubectl pelagic".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/cmd/pelagicctl/ctl"
)

func main() {
	// The controller code pelagicctl fences through logs its steps; the
	// tool reports them itself.
	klog.SetLogger(logr.Discard())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := ctl.Tool{Stdout: os.Stdout, Stderr: os.Stderr, Name: ctl.ProgramName(os.Args[0])}.Run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
