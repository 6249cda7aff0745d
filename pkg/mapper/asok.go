package mapper

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"regexp"
	"time"

	"github.com/pelagic-csi/pelagic/pkg/ceph"
)

// asokTimeout bounds one admin socket command when ctx has no deadline.
const asokTimeout = 10 * time.Second

// maxAsokReply caps what we read from an admin socket.
const maxAsokReply = 16 << 20

// asokCommand sends one command to a Ceph admin socket and returns the
// reply. The protocol: the command as JSON ending in a NUL byte; the reply
// is a 32-bit big-endian length followed by that many bytes.
func asokCommand(ctx context.Context, socket string, cmd map[string]any) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, asokTimeout)
		defer cancel()
	}
	req, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", socket, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, err
	}
	if _, err := conn.Write(append(req, 0)); err != nil {
		return nil, fmt.Errorf("admin socket %s: sending %s: %w", socket, cmd["prefix"], err)
	}
	var size uint32
	if err := binary.Read(conn, binary.BigEndian, &size); err != nil {
		return nil, fmt.Errorf("admin socket %s: reading reply to %s: %w", socket, cmd["prefix"], err)
	}
	if size > maxAsokReply {
		return nil, fmt.Errorf("admin socket %s: reply of %d bytes is too large", socket, size)
	}
	reply := make([]byte, size)
	if _, err := io.ReadFull(conn, reply); err != nil {
		return nil, fmt.Errorf("admin socket %s: reading reply to %s: %w", socket, cmd["prefix"], err)
	}
	return reply, nil
}

// learnedAddrRE matches the messenger's one log line that names the client
// instance address: "learned_addr learned my addr 10.0.0.5:0/3264511387".
var learnedAddrRE = regexp.MustCompile(`learned my addr (\S+)`)

// learnedAddrs returns every client address a Ceph log names, normalised.
// One process may have several: short-lived clients fetch the monmap and
// config before the one that opens the image.
func learnedAddrs(log string) map[string]bool {
	addrs := map[string]bool{}
	for _, m := range learnedAddrRE.FindAllStringSubmatch(log, -1) {
		for _, a := range ceph.PlainAddrs(m[1]) {
			addrs[a] = true
		}
	}
	return addrs
}
