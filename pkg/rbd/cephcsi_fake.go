package rbd

import (
	"context"

	"github.com/pelagic-csi/pelagic/pkg/journal"
)

// CephCSI implements Pool: an in-memory stand-in for ceph-csi's journal
// under instanceID, whose records read back marked as ceph-csi's. Tests
// seed it with Reserve, as ceph-csi would have written it.
func (p *FakePool) CephCSI(instanceID string) journal.Journal {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cephCSI == nil {
		p.cephCSI = map[string]*journal.Memory{}
	}
	j, ok := p.cephCSI[instanceID]
	if !ok {
		j = journal.NewMemory()
		j.Origin = journal.OriginCephCSI
		p.cephCSI[instanceID] = j
	}
	return j
}

// ListImages implements Pool.
func (p *FakePool) ListImages(context.Context) ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.hook("ListImages"); err != nil {
		return nil, err
	}
	return p.names(false), nil
}

// TrashNames lists the trashed images, sorted.
func (p *FakePool) TrashNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.names(true)
}

// SetDataPool gives the named image a data pool.
func (p *FakePool) SetDataPool(name string, poolID int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if img, err := p.byName(name); err == nil {
		img.dataPool = poolID
	}
}
