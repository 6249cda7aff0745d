// Command demo walks volumes through their whole life over CSI against
// running Pelagic drivers, printing each step and its time: an RBD volume,
// then, given the CephFS drivers' endpoints, a CephFS volume shared by two
// nodes.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/pelagic-csi/pelagic/e2e/lifecycle"
)

func main() {
	endpoint := flag.String("endpoint", "", "RBD driver endpoint")
	clusterID := flag.String("cluster-id", "", "clusterID of the StorageClass")
	pool := flag.String("pool", "rbd", "RBD pool")
	user := flag.String("user", "", "cephx user ID")
	keyFile := flag.String("key-file", "", "file holding the cephx key")
	work := flag.String("work-dir", "", "directory for staging and target paths")
	fsEndpoints := flag.String("cephfs-endpoints", "", "CephFS endpoints: controller and node a, then node b (comma-separated)")
	fsName := flag.String("fs-name", "cephfs", "CephFS filesystem")
	fsUser := flag.String("fs-user", "", "cephx user ID of the CephFS secrets")
	fsKeyFile := flag.String("fs-key-file", "", "file holding the CephFS user's cephx key")
	flag.Parse()
	conn := dial(*endpoint)
	defer conn.Close()
	err := lifecycle.Run(conn, lifecycle.Config{ClusterID: *clusterID, Pool: *pool, WorkDir: *work + "/rbd",
		Secrets: map[string]string{"userID": *user, "userKey": readKey(*keyFile)}}, os.Stdout)
	if err != nil {
		fail(err)
	}
	if *fsEndpoints == "" {
		return
	}
	eps := strings.Split(*fsEndpoints, ",")
	if len(eps) != 2 {
		fail(fmt.Errorf("-cephfs-endpoints: want two, got %q", *fsEndpoints))
	}
	a, b := dial(eps[0]), dial(eps[1])
	defer a.Close()
	defer b.Close()
	fmt.Println()
	err = lifecycle.RunCephFS(a, [2]*grpc.ClientConn{a, b}, lifecycle.CephFSConfig{ClusterID: *clusterID, FSName: *fsName,
		WorkDir: *work + "/cephfs", Secrets: map[string]string{"adminID": *fsUser, "adminKey": readKey(*fsKeyFile)}}, os.Stdout)
	if err != nil {
		fail(err)
	}
}

func dial(endpoint string) *grpc.ClientConn {
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(err)
	}
	return conn
}

func readKey(path string) string {
	key, err := os.ReadFile(path)
	if err != nil {
		fail(err)
	}
	return strings.TrimSpace(string(key))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "demo: FAILED:", err)
	os.Exit(1)
}
