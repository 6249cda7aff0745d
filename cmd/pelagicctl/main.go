// Command pelagicctl tells an operator who holds a stuck Pelagic RBD volume
// and lifts fences; see package ctl.
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
	code := ctl.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
