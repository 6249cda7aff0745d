package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/pelagic-csi/pelagic/e2e/cephtest"
)

const (
	driverName  = "rook-ceph.rbd.csi.ceph.com"
	blockClass  = "rook-ceph-block"
	node1       = "e2e-node-1"
	node2       = "e2e-node-2"
	poll        = 250 * time.Millisecond
	kubectlWait = time.Minute // bound on one kubectl call
)

// env is what every scenario works with: kubectl on the e2e cluster, and an
// admin connection to the Ceph cluster behind it.
type env struct {
	dir, root string
	kubectl   string
	ceph      *cephtest.Cluster
	conn      *rados.Conn
	scenario  string // the one running, for logs
}

func newEnv(dir, root string) (*env, error) {
	e := &env{dir: dir, root: root, kubectl: filepath.Join(dir, "bin", "kubectl")}
	c, err := cephtest.Load(filepath.Join(dir, "ceph"))
	if err != nil {
		return nil, err
	}
	e.ceph = c
	conn, err := rados.NewConnWithUser(c.AdminID)
	if err != nil {
		return nil, err
	}
	if err := conn.ReadConfigFile(c.Conf); err != nil {
		return nil, err
	}
	if err := conn.SetConfigOption("rados_osd_op_timeout", "30"); err != nil {
		return nil, err
	}
	if err := conn.SetConfigOption("rados_mon_op_timeout", "30"); err != nil {
		return nil, err
	}
	if err := conn.Connect(); err != nil {
		return nil, fmt.Errorf("connecting to Ceph: %w", err)
	}
	e.conn = conn
	return e, nil
}

func (e *env) close() { e.conn.Shutdown() }

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05.0"), fmt.Sprintf(format, args...))
}

// step logs a finished step of the running scenario with its duration.
func (e *env) step(start time.Time, format string, args ...any) {
	e.logf("  %s: %s (%.1fs)", e.scenario, fmt.Sprintf(format, args...), time.Since(start).Seconds())
}

// run runs kubectl with stdin and returns its stdout; the error carries stderr.
func (e *env) run(ctx context.Context, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, kubectlWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.kubectl, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(e.dir, "admin.kubeconfig"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

func (e *env) k(ctx context.Context, args ...string) (string, error) { return e.run(ctx, "", args...) }

// applyFile applies a manifest into namespace ns.
func (e *env) applyFile(ctx context.Context, ns, path string) error {
	_, err := e.k(ctx, "-n", ns, "apply", "-f", path)
	return err
}

// apply applies manifest text into namespace ns.
func (e *env) apply(ctx context.Context, ns, manifest string) error {
	_, err := e.run(ctx, manifest, "-n", ns, "apply", "-f", "-")
	return err
}

// get returns the jsonpath of one object ("" when it does not exist).
func (e *env) get(ctx context.Context, ns, object, jsonpath string) (string, error) {
	args := []string{"get", object, "--ignore-not-found", "-o", "jsonpath=" + jsonpath}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	return e.k(ctx, args...)
}

// exists reports whether the object is there.
func (e *env) exists(ctx context.Context, ns, object string) (bool, error) {
	out, err := e.get(ctx, ns, object, "{.metadata.name}")
	return out != "", err
}

// exec runs a command in a pod's first container and returns its stdout.
func (e *env) exec(ctx context.Context, ns, pod string, command ...string) (string, error) {
	return e.k(ctx, append([]string{"-n", ns, "exec", pod, "--"}, command...)...)
}

// waitFor polls cond until it says done, for at most timeout. cond reports the
// state it saw, so that a timeout says where things stood.
func (e *env) waitFor(ctx context.Context, timeout time.Duration, what string,
	cond func(ctx context.Context) (done bool, state string, err error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	state := ""
	for {
		done, s, err := cond(ctx)
		if err == nil && done {
			return nil
		}
		if s != "" {
			state = s
		}
		if err != nil {
			state = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %s waiting for %s; last seen: %s", timeout, what, state)
		case <-time.After(poll):
		}
	}
}

// waitJSONPath waits until an object's jsonpath equals want.
func (e *env) waitJSONPath(ctx context.Context, timeout time.Duration, ns, object, jsonpath, want string) error {
	return e.waitFor(ctx, timeout, fmt.Sprintf("%s %s = %q", object, jsonpath, want),
		func(ctx context.Context) (bool, string, error) {
			got, err := e.get(ctx, ns, object, jsonpath)
			return got == want, fmt.Sprintf("%q", got), err
		})
}

// waitGone waits until the object no longer exists.
func (e *env) waitGone(ctx context.Context, timeout time.Duration, ns, object string) error {
	return e.waitFor(ctx, timeout, object+" to be gone", func(ctx context.Context) (bool, string, error) {
		there, err := e.exists(ctx, ns, object)
		return !there, "still there", err
	})
}

// waitPodRunning waits until the pod runs with all containers ready and returns
// its UID.
func (e *env) waitPodRunning(ctx context.Context, timeout time.Duration, ns, pod string) (string, error) {
	var uid string
	err := e.waitFor(ctx, timeout, "pod "+ns+"/"+pod+" to run", func(ctx context.Context) (bool, string, error) {
		out, err := e.get(ctx, ns, "pod/"+pod,
			`{.metadata.uid} {.status.phase} {.metadata.deletionTimestamp} {.status.containerStatuses[*].ready}`)
		f := strings.Fields(out)
		if len(f) == 0 {
			return false, "no pod", err
		}
		uid = f[0]
		return len(f) == 3 && f[1] == "Running" && !strings.Contains(out, "false"), out, err
	})
	if err != nil {
		return "", fmt.Errorf("%w (pod events: %s)", err, e.events(ctx, ns, "Pod", pod))
	}
	return uid, nil
}

// namespace creates a fresh namespace for a scenario.
func (e *env) namespace(ctx context.Context, ns string) error {
	if _, err := e.k(ctx, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=2m"); err != nil {
		return err
	}
	_, err := e.k(ctx, "create", "namespace", ns)
	return err
}

// deleteNamespace removes a scenario's namespace and waits until the volumes
// it held are deleted (PVs gone), proving unstage, detach and delete worked.
func (e *env) deleteNamespace(ctx context.Context, ns string) error {
	pvs, err := e.k(ctx, "get", "pv", "-o",
		`jsonpath={range .items[?(@.spec.claimRef.namespace=="`+ns+`")]}{.metadata.name}{" "}{.spec.persistentVolumeReclaimPolicy}{"\n"}{end}`)
	if err != nil {
		return err
	}
	if _, err := e.k(ctx, "delete", "namespace", ns, "--wait=false"); err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimSpace(pvs), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == "Delete" {
			if err := e.waitGone(ctx, 3*time.Minute, "", "pv/"+f[0]); err != nil {
				return fmt.Errorf("cleaning up %s: %w", ns, err)
			}
		}
	}
	return e.waitGone(ctx, 3*time.Minute, "", "namespace/"+ns)
}

// event is the part of a Kubernetes Event the scenarios read.
type event struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
	Type    string `json:"type"`
}

// eventsOf lists the events about one object.
func (e *env) eventsOf(ctx context.Context, ns, kind, name string) ([]event, error) {
	out, err := e.k(ctx, "-n", ns, "get", "events", "-o", "json",
		"--field-selector", "involvedObject.kind="+kind+",involvedObject.name="+name)
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []event `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, err
	}
	return list.Items, nil
}

// events renders an object's events for an error message.
func (e *env) events(ctx context.Context, ns, kind, name string) string {
	evs, err := e.eventsOf(context.WithoutCancel(ctx), ns, kind, name)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "[%s %s: %s] ", ev.Type, ev.Reason, ev.Message)
	}
	return strings.TrimSpace(b.String())
}

// pvOf returns the PV bound to a PVC.
func (e *env) pvOf(ctx context.Context, ns, pvc string) (string, error) {
	pv, err := e.get(ctx, ns, "pvc/"+pvc, "{.spec.volumeName}")
	if err == nil && pv == "" {
		err = fmt.Errorf("PVC %s/%s is not bound", ns, pvc)
	}
	return pv, err
}

// imageOf returns the pool and image a PV is, from its volume attributes.
func (e *env) imageOf(ctx context.Context, pv string) (pool, image string, err error) {
	out, err := e.get(ctx, "", "pv/"+pv, `{.spec.csi.volumeAttributes.pool} {.spec.csi.volumeAttributes.imageName}`)
	f := strings.Fields(out)
	if err == nil && len(f) != 2 {
		err = fmt.Errorf("PV %s names no pool and image: %q", pv, out)
	}
	if err != nil {
		return "", "", err
	}
	return f[0], f[1], nil
}

// imageExists asks Ceph, not the driver.
func (e *env) imageExists(pool, image string) (bool, error) {
	ioctx, err := e.conn.OpenIOContext(pool)
	if err != nil {
		return false, err
	}
	defer ioctx.Destroy()
	names, err := librbd.GetImageNames(ioctx)
	if err != nil {
		return false, err
	}
	for _, n := range names {
		if n == image {
			return true, nil
		}
	}
	return false, nil
}

// imageSize is the image's size as Ceph has it.
func (e *env) imageSize(pool, image string) (uint64, error) {
	ioctx, err := e.conn.OpenIOContext(pool)
	if err != nil {
		return 0, err
	}
	defer ioctx.Destroy()
	img, err := librbd.OpenImageReadOnly(ioctx, image, librbd.NoSnapshot)
	if err != nil {
		return 0, err
	}
	defer img.Close()
	return img.GetSize()
}

// readImage reads n bytes at off straight from the image in Ceph.
func (e *env) readImage(pool, image string, off int64, n int) ([]byte, error) {
	ioctx, err := e.conn.OpenIOContext(pool)
	if err != nil {
		return nil, err
	}
	defer ioctx.Destroy()
	img, err := librbd.OpenImageReadOnly(ioctx, image, librbd.NoSnapshot)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	buf := make([]byte, n)
	got, err := img.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:got], nil
}

// diagnose saves what explains a failure to the logs directory and returns
// the file's path.
func (e *env) diagnose(id string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	path := filepath.Join(e.dir, "logs", "scenario-"+id+".txt")
	var b strings.Builder
	for _, args := range [][]string{
		{"get", "nodes,pods,pvc,volumesnapshots", "-A", "-o", "wide"},
		{"get", "pv,volumeattachments,volumesnapshotcontents", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
	} {
		out, err := e.k(ctx, args...)
		fmt.Fprintf(&b, "$ kubectl %s\n%s%v\n", strings.Join(args, " "), out, errOrEmpty(err))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return err.Error()
	}
	return path
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error() + "\n"
}
