package ceph

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
)

// Prober checks that every configured cluster's monitors answer. It uses
// a cached connection when one exists (a real mon command), and otherwise
// dials the monitors and waits for their protocol banner, which needs no
// credentials but still proves a live monitor, not just an open port.
type Prober struct {
	Config *Config
	Pool   *ConnPool
}

// Probe returns nil when every cluster answered before ctx ended.
func (p *Prober) Probe(ctx context.Context) error {
	var errs []error
	for _, c := range p.Config.Clusters() {
		if err := p.probeCluster(ctx, c); err != nil {
			errs = append(errs, fmt.Errorf("cluster %q: %w", c.ClusterID, err))
		}
	}
	return errors.Join(errs...)
}

func (p *Prober) probeCluster(ctx context.Context, c *ClusterConfig) error {
	if p.Pool != nil {
		if conns := p.Pool.Cached(c.ClusterID); len(conns) > 0 {
			_, err := conns[0].MonCommand(ctx, map[string]any{"prefix": "mon stat", "format": "json"})
			return err
		}
	}
	var errs []error
	for _, m := range c.Monitors {
		err := probeBanner(ctx, m)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// probeBanner connects to one monitor and reads the "ceph v..." banner that
// both messenger versions send first.
func probeBanner(ctx context.Context, mon string) error {
	addr := MonTCPAddr(mon)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("monitor %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	banner := make([]byte, 4)
	if _, err := io.ReadFull(conn, banner); err != nil {
		return fmt.Errorf("monitor %s did not answer: %w", addr, err)
	}
	if string(banner) != "ceph" {
		return fmt.Errorf("monitor %s answered with something that is not Ceph", addr)
	}
	return nil
}
