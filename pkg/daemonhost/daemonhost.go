// Package daemonhost runs the node's Ceph client daemons (rbd-fuse,
// ceph-fuse, and the daemon rbd-nbd map leaves behind) in a process apart
// from the node plugin, so that they outlive it.
//
// A daemon started by the plugin itself dies with the plugin's container:
// restarting a container kills every process in it (its cgroup, or its PID
// namespace), whatever process group or session the daemon put itself in,
// and with the daemon go the volume's I/O and every pod using it. The
// daemon host is a small, rarely changing process (deploy/rbd runs it as a
// DaemonSet of its own, updated only on delete) that the plugin asks, over
// a unix socket, to run the command that starts a daemon. The daemon is
// then the host's descendant and lives in the host's container: the
// plugin restarts, crashes and upgrades without touching it, and a
// restarted plugin finds its mappings again in its state directory.
//
// The host runs only the daemons it was told to allow, with the arguments
// given and no shell; keys reach the daemons as keyfile paths, never as
// arguments.
package daemonhost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"k8s.io/klog/v2"

	"github.com/pelagic-csi/pelagic/pkg/util"
)

// DefaultDaemons are the commands a host runs unless told otherwise.
var DefaultDaemons = []string{"rbd-fuse", "rbd-nbd", "ceph-fuse"}

// ErrUnreachable is wrapped by Client.Run when no daemon host answers.
var ErrUnreachable = errors.New("daemon host unreachable")

// request asks the host to run one command that starts a daemon.
type request struct {
	Name      string   `json:"name"`
	Args      []string `json:"args"`
	TimeoutMS int64    `json:"timeoutMs"`
}

// response is the command's result, as util.ExecRunner would give it.
type response struct {
	Output   string `json:"output"`
	ExitCode int    `json:"exitCode"`
	Error    string `json:"error,omitempty"`
	NotFound bool   `json:"notFound,omitempty"` // the command is not installed
	TimedOut bool   `json:"timedOut,omitempty"` // the request's deadline passed
}

const runPath = "/run"

// maxRequest bounds a request body; commands are a few hundred bytes.
const maxRequest = 1 << 20

// Options configure a daemon host.
type Options struct {
	Socket string // unix socket path, created 0600
	// Daemons are the commands the host may run, exactly as the plugin
	// names them; default DefaultDaemons. "nsenter --net=NS -- DAEMON
	// ARGS" is allowed for each (a node whose Ceph network is a namespace).
	Daemons []string
	Runner  util.Runner // default util.ExecRunner
}

// Serve runs a daemon host until ctx ends. Daemons it started keep running.
func Serve(ctx context.Context, o Options) error {
	if len(o.Daemons) == 0 {
		o.Daemons = DefaultDaemons
	}
	if o.Runner == nil {
		o.Runner = util.ExecRunner{DefaultTimeout: 2 * time.Minute}
	}
	lis, err := listen(o.Socket)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+runPath, o.handleRun)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	klog.InfoS("daemon host serving", "socket", o.Socket, "daemons", o.Daemons)
	if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// listen binds the socket, replacing one a previous host left, readable
// and writable by root only: whoever can use it can start daemons. It is
// bound under a temporary name and renamed once private, so no client
// ever finds it open to others.
func listen(socket string) (net.Listener, error) {
	if socket == "" {
		return nil, errors.New("daemon host: no socket path")
	}
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, err
	}
	tmp := socket + ".new"
	for _, p := range []string{tmp, socket} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	lis, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("daemon host: %w", err)
	}
	if err := errors.Join(os.Chmod(tmp, 0o600), os.Rename(tmp, socket)); err != nil {
		lis.Close()
		return nil, fmt.Errorf("daemon host: %w", err)
	}
	return lis, nil
}

func (o Options) handleRun(w http.ResponseWriter, r *http.Request) {
	var req request
	if err := json.NewDecoder(io.LimitReader(r.Body, maxRequest)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := allowed(req.Name, req.Args, o.Daemons); err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	ctx := r.Context()
	if req.TimeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.TimeoutMS)*time.Millisecond)
		defer cancel()
	}
	klog.InfoS("starting a daemon", "command", req.Name, "args", req.Args)
	out, err := o.Runner.Run(ctx, req.Name, req.Args...)
	resp := response{Output: string(out)}
	if err != nil {
		resp.ExitCode, resp.Error = -1, err.Error()
		var ee *util.ExecError
		if errors.As(err, &ee) {
			resp.ExitCode, resp.Error = ee.ExitCode, ee.Err.Error() // the output travels apart
		}
		resp.NotFound = errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist)
		resp.TimedOut = errors.Is(err, context.DeadlineExceeded)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// allowed decides whether a host configured with daemons may run name
// with args.
func allowed(name string, args, daemons []string) error {
	if slices.Contains(daemons, name) {
		return nil
	}
	if name == "nsenter" && len(args) >= 3 && strings.HasPrefix(args[0], "--net=") && args[1] == "--" &&
		slices.Contains(daemons, args[2]) {
		return nil
	}
	return fmt.Errorf("%q is not a daemon this host starts (it starts %s)", name, strings.Join(daemons, ", "))
}

// Client asks a daemon host to start daemons. It is a util.Runner, for
// mapper.Config.Daemons.
type Client struct {
	socket string
	http   *http.Client
}

var _ util.Runner = (*Client)(nil)

// NewClient returns a client of the host listening on socket.
func NewClient(socket string) *Client {
	dialer := &net.Dialer{}
	return &Client{socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socket)
		},
	}}}
}

// Run has the host run name with args and returns the combined output. A
// failed command gives a *util.ExecError, as util.ExecRunner would.
func (c *Client) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	req := request{Name: name, Args: args}
	if deadline, ok := ctx.Deadline(); ok {
		req.TimeoutMS = max(time.Until(deadline).Milliseconds(), 1)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://daemonhost"+runPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hresp, err := c.http.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("daemon host at %s: %w", c.socket, ctx.Err())
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrUnreachable, c.socket, err)
	}
	defer hresp.Body.Close()
	if hresp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(hresp.Body, 4096))
		return nil, fmt.Errorf("daemon host at %s refused to run %s: %s", c.socket, name, strings.TrimSpace(string(msg)))
	}
	var resp response
	if err := json.NewDecoder(io.LimitReader(hresp.Body, maxRequest*16)).Decode(&resp); err != nil {
		return nil, fmt.Errorf("daemon host at %s: %w", c.socket, err)
	}
	if resp.Error == "" {
		return []byte(resp.Output), nil
	}
	cause := errors.New(resp.Error)
	switch {
	case resp.NotFound:
		cause = fmt.Errorf("%s: %w", resp.Error, exec.ErrNotFound)
	case resp.TimedOut:
		cause = fmt.Errorf("on the daemon host: %w", context.DeadlineExceeded)
	}
	return []byte(resp.Output), &util.ExecError{Cmd: name, ExitCode: resp.ExitCode, Output: resp.Output, Err: cause}
}
