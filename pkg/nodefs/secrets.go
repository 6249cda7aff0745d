package nodefs

import (
	"maps"
	"sync"
)

// StageSecrets keeps, in memory only, the secrets of each volume's last
// NodeStage: NodePublish carries none, and needs them to mount or map a
// volume again whose mount or mapping died while this process ran. The
// zero value is ready to use.
type StageSecrets struct {
	mu sync.Mutex
	m  map[string]map[string]string
}

// Remember keeps the secrets of a volume's NodeStage.
func (s *StageSecrets) Remember(volumeID string, secrets map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]map[string]string{}
	}
	s.m[volumeID] = maps.Clone(secrets)
}

// Get returns the secrets kept for a volume, nil when none are.
func (s *StageSecrets) Get(volumeID string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[volumeID]
}

// Forget drops a volume's secrets, at its NodeUnstage.
func (s *StageSecrets) Forget(volumeID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, volumeID)
}
