package journal

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"sync"
)

// Memory is an in-memory Journal for unit tests of the services.
type Memory struct {
	// Origin, when set, marks every record read back (OriginCephCSI: a
	// stand-in for ceph-csi's journal).
	Origin string

	mu      sync.Mutex
	names   map[string]*Record
	records map[string]*Record
}

// NewMemory returns an empty in-memory journal.
func NewMemory() *Memory {
	return &Memory{names: map[string]*Record{}, records: map[string]*Record{}}
}

func (m *Memory) copyRecord(r *Record) *Record {
	c := *r
	c.Params = maps.Clone(r.Params)
	if m.Origin != "" {
		c.Origin = m.Origin
	}
	return &c
}

// LookupName implements Journal.
func (m *Memory) LookupName(_ context.Context, kind Kind, name string) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.names[nameKey(kind, name)]; ok {
		return m.copyRecord(r), nil
	}
	return nil, ErrNotFound
}

// Lookup implements Journal.
func (m *Memory) Lookup(_ context.Context, kind Kind, uuid string) (*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.records[string(kind)+"/"+uuid]; ok {
		return m.copyRecord(r), nil
	}
	return nil, ErrNotFound
}

// Reserve implements Journal.
func (m *Memory) Reserve(_ context.Context, rec *Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := nameKey(rec.Kind, rec.Name)
	if _, ok := m.names[key]; ok {
		return fmt.Errorf("%w: %s %q", ErrNameTaken, rec.Kind, rec.Name)
	}
	m.names[key] = m.copyRecord(rec)
	m.records[string(rec.Kind)+"/"+rec.UUID] = m.copyRecord(rec)
	return nil
}

// Repair implements the directory rewrite; in memory there is nothing to lose.
func (m *Memory) Repair(_ context.Context, rec *Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.records[string(rec.Kind)+"/"+rec.UUID] = m.copyRecord(rec)
	return nil
}

// Remove implements Journal.
func (m *Memory) Remove(_ context.Context, rec *Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.names, nameKey(rec.Kind, rec.Name))
	delete(m.records, string(rec.Kind)+"/"+rec.UUID)
	return nil
}

// List implements Journal.
func (m *Memory) List(_ context.Context, kind Kind, startAfter string, max int) ([]*Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*Record
	for _, r := range m.records {
		if r.Kind == kind && r.UUID > startAfter {
			out = append(out, m.copyRecord(r))
		}
	}
	sortByUUID(out)
	if max > 0 && len(out) > max {
		out = out[:max]
	}
	return out, nil
}

func nameKey(kind Kind, name string) string { return string(kind) + "/" + name }

func sortByUUID(recs []*Record) {
	sort.Slice(recs, func(i, k int) bool { return recs[i].UUID < recs[k].UUID })
}
