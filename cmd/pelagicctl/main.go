// Command pelagicctl tells an operator who holds a stuck Pelagic volume and
// what to do about it; see package ctl. Installed as kubectl-pelagic it is
// the kubectl plugin "kubectl pelagic".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pelagic-csi/pelagic/cmd/pelagicctl/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := ctl.Run(ctx, os.Args[0], os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
