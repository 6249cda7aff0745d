// Command demo walks one RBD volume through its whole life over CSI
// against a running Pelagic driver, printing each step and its time.
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
	endpoint := flag.String("endpoint", "", "driver endpoint")
	clusterID := flag.String("cluster-id", "", "clusterID of the StorageClass")
	pool := flag.String("pool", "rbd", "RBD pool")
	user := flag.String("user", "", "cephx user ID")
	keyFile := flag.String("key-file", "", "file holding the cephx key")
	work := flag.String("work-dir", "", "directory for staging and target paths")
	flag.Parse()
	key, err := os.ReadFile(*keyFile)
	if err != nil {
		fail(err)
	}
	conn, err := grpc.NewClient(*endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	err = lifecycle.Run(conn, lifecycle.Config{ClusterID: *clusterID, Pool: *pool, WorkDir: *work,
		Secrets: map[string]string{"userID": *user, "userKey": strings.TrimSpace(string(key))}}, os.Stdout)
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "demo: FAILED:", err)
	os.Exit(1)
}
