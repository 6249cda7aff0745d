package main

import (
	"io"
	"strings"
	"testing"
)

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantErr    string
		wantDriver string
	}{
		{name: "rbd controller", args: []string{"--type=rbd", "--controller"}, wantDriver: DefaultRBDDriverName},
		{name: "cephfs node", args: []string{"--type=cephfs", "--node", "--nodeid=n1"}, wantDriver: DefaultCephFSDriverName},
		{name: "both services", args: []string{"--type=rbd", "--controller", "--node", "--nodeid=n1"}, wantDriver: DefaultRBDDriverName},
		{name: "rook driver name", args: []string{"--type=rbd", "--controller", "--drivername=rook-ceph.rbd.csi.ceph.com"}, wantDriver: "rook-ceph.rbd.csi.ceph.com"},
		{name: "missing type", args: []string{"--controller"}, wantErr: "--type is required"},
		{name: "bad type", args: []string{"--type=nfs", "--controller"}, wantErr: `--type="nfs"`},
		{name: "no service", args: []string{"--type=rbd"}, wantErr: "at least one of --controller and --node"},
		{name: "node without id", args: []string{"--type=rbd", "--node"}, wantErr: "--nodeid is required"},
		{name: "bad driver name", args: []string{"--type=rbd", "--controller", "--drivername=-bad"}, wantErr: "--drivername"},
		{name: "long driver name", args: []string{"--type=rbd", "--controller", "--drivername=" + strings.Repeat("a", 64)}, wantErr: "--drivername"},
		{name: "relative kubelet dir", args: []string{"--type=rbd", "--controller", "--kubelet-dir=var/lib/kubelet"}, wantErr: "--kubelet-dir"},
		{name: "bad mounter", args: []string{"--type=rbd", "--controller", "--mounter=iscsi"}, wantErr: "--mounter"},
		{name: "ceph-csi nbd spelling", args: []string{"--type=rbd", "--controller", "--mounter=rbd-nbd"}, wantDriver: DefaultRBDDriverName},
		{name: "bad labels", args: []string{"--type=rbd", "--node", "--nodeid=n", "--node-labels=zone"}, wantErr: "--node-labels"},
		{name: "stray argument", args: []string{"--type=rbd", "--controller", "extra"}, wantErr: "unexpected arguments"},
		{name: "ceph-csi clone depth flags", args: []string{"--type=rbd", "--controller", "--rbdsoftmaxclonedepth=2", "--rbdhardmaxclonedepth=3"}, wantDriver: DefaultRBDDriverName},
		{name: "soft depth above hard", args: []string{"--type=rbd", "--controller", "--rbdsoftmaxclonedepth=9", "--rbdhardmaxclonedepth=3"}, wantErr: "clone depths"},
		{name: "ceph-csi instance ID", args: []string{"--type=rbd", "--controller", "--instanceid=rook"}, wantDriver: DefaultRBDDriverName},
		{name: "empty instance ID", args: []string{"--type=rbd", "--controller", "--instanceid="}, wantErr: "--instanceid"},
		{name: "registration", args: []string{"--type=rbd", "--node", "--nodeid=n", "--endpoint=unix:///var/lib/kubelet/plugins/d/csi.sock", "--registration-dir=/var/lib/kubelet/plugins_registry", "--healthz-address=127.0.0.1:9808"}, wantDriver: DefaultRBDDriverName},
		{name: "registration without node", args: []string{"--type=rbd", "--controller", "--registration-dir=/var/lib/kubelet/plugins_registry"}, wantErr: "--registration-dir needs --node"},
		{name: "relative registration dir", args: []string{"--type=rbd", "--node", "--nodeid=n", "--registration-dir=plugins_registry"}, wantErr: "must be an absolute path"},
		{name: "registration of a tcp endpoint", args: []string{"--type=rbd", "--node", "--nodeid=n", "--endpoint=tcp://127.0.0.1:10000", "--registration-dir=/r"}, wantErr: "unix socket"},
		{name: "metrics", args: []string{"--type=rbd", "--controller", "--metrics-address=127.0.0.1:9090", "--healthz-address=127.0.0.1:9808"}, wantDriver: DefaultRBDDriverName},
		{name: "metrics and healthz on one port", args: []string{"--type=rbd", "--controller", "--metrics-address=:9808", "--healthz-address=:9808"}, wantErr: "--metrics-address serves /healthz too"},
		{name: "unknown flag", args: []string{"--type=rbd", "--bogus"}, wantErr: "bogus"},
		{name: "node through a daemon host", args: []string{"--type=rbd", "--node", "--nodeid=n", "--daemon-socket=/var/lib/pelagic/daemons.sock"},
			wantDriver: DefaultRBDDriverName},
		{name: "relative daemon socket", args: []string{"--type=rbd", "--node", "--nodeid=n", "--daemon-socket=daemons.sock"}, wantErr: "--daemon-socket"},
		{name: "daemon host", args: []string{"--daemon-host", "--daemon-socket=/var/lib/pelagic/daemons.sock"}},
		{name: "daemon host without socket", args: []string{"--daemon-host"}, wantErr: "--daemon-socket"},
		{name: "daemon host serving CSI too", args: []string{"--daemon-host", "--daemon-socket=/s", "--type=rbd", "--node"}, wantErr: "excludes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, _, err := ParseOptions(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if o.DriverName != tc.wantDriver {
				t.Errorf("driver name = %q, want %q", o.DriverName, tc.wantDriver)
			}
		})
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels("topology.kubernetes.io/zone=a, rack=r1")
	if err != nil {
		t.Fatal(err)
	}
	if got["topology.kubernetes.io/zone"] != "a" || got["rack"] != "r1" || len(got) != 2 {
		t.Errorf("labels = %v", got)
	}
}
