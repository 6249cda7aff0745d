package volume

import (
	"fmt"
	"testing"
)

type namedCluster string

func (c namedCluster) ClusterID() string { return string(c) }

func TestKnown(t *testing.T) {
	var k Known[namedCluster]
	if _, ok := k.Cluster("a"); ok || len(k.Pools()) != 0 {
		t.Fatal("a new Known knows something")
	}
	k.Remember("b", "rbd", "")
	k.Remember("a", "rbd", "tenant")
	k.Remember("a", "rbd", "")
	k.Remember("a", "ssd", "")
	k.Remember("a", "rbd", "") // twice is once
	var got []string
	for _, p := range k.Pools() {
		got = append(got, fmt.Sprintf("%s:%s/%s", p.Cluster, p.Pool, p.Namespace))
	}
	if want := "[a:rbd/ a:rbd/tenant a:ssd/ b:rbd/]"; fmt.Sprint(got) != want {
		t.Errorf("Pools = %v, want %s", got, want)
	}
	if c, ok := k.Cluster("b"); !ok || c != "b" {
		t.Errorf("Cluster(b) = %q, %v", c, ok)
	}
}
