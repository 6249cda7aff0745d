package rbd

// An image's size and parent, read from its header object with the rbd
// object class's own methods (the ones librbd itself calls when it opens
// an image): one RADOS read where an open takes several round trips, and
// under load far longer.

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// noSnap is CEPH_NOSNAP: the image head, not one of its snapshots.
const noSnap = ^uint64(0) - 1

// headerObject names the header of the image with id.
func headerObject(id string) string { return "rbd_header." + id }

// sizeArg is the input of the rbd class's get_size: the snapshot ID.
func sizeArg() []byte { return binary.LittleEndian.AppendUint64(nil, noSnap) }

// trashObject is the pool's (or namespace's) trash directory.
const trashObject = "rbd_trash"

// stringArg encodes s as a cls method's string argument: a little-endian
// length, then the bytes.
func stringArg(s string) []byte {
	return append(binary.LittleEndian.AppendUint32(nil, uint32(len(s))), s...)
}

// decodeSize decodes get_size's reply: the object order, then the size.
func decodeSize(b []byte) (int64, error) {
	if len(b) != 9 {
		return 0, fmt.Errorf("get_size reply of %d bytes, want 9", len(b))
	}
	return int64(binary.LittleEndian.Uint64(b[1:])), nil
}

// decodeParent decodes parent_get's reply, a versioned ParentImageSpec
// (pool ID, namespace, image ID, snapshot ID); pool -1 means no parent.
func decodeParent(b []byte) (*HeadParent, error) {
	d := decoder{b: b}
	if v := d.u8(); v < 1 {
		return nil, fmt.Errorf("parent_get reply version %d", v)
	}
	d.u8() // compat version
	if n := d.u32(); d.err == nil && int(n) != len(d.b) {
		return nil, fmt.Errorf("parent_get reply says %d bytes, holds %d", n, len(d.b))
	}
	p := &HeadParent{PoolID: int64(d.u64()), Namespace: d.str(), ImageID: d.str(), SnapID: d.u64()}
	if d.err != nil {
		return nil, fmt.Errorf("parent_get reply: %w", d.err)
	}
	if p.PoolID < 0 {
		return nil, nil
	}
	return p, nil
}

var errShort = errors.New("truncated")

// decoder reads Ceph's little-endian encoding; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil || len(d.b) < n {
		d.err = errShort
		return make([]byte, n)
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *decoder) u8() uint8   { return d.take(1)[0] }
func (d *decoder) u32() uint32 { return binary.LittleEndian.Uint32(d.take(4)) }
func (d *decoder) u64() uint64 { return binary.LittleEndian.Uint64(d.take(8)) }

func (d *decoder) str() string {
	n := d.u32()
	if d.err != nil || int(n) > len(d.b) {
		d.err = errShort
		return ""
	}
	return string(d.take(int(n)))
}
