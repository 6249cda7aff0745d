package rbd

import (
	"context"
	"time"

	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/pelagic-csi/pelagic/pkg/journal"
	"github.com/pelagic-csi/pelagic/pkg/util"
)

// statLayout adds to info what only serving volumes Pelagic did not create
// needs (their creation time, data pool and striping are in no journal):
// values librbd keeps in the open image, read without a round trip.
func statLayout(img *librbd.Image, info *ImageInfo) error {
	ts, err := img.GetCreateTimestamp()
	if err != nil {
		return err
	}
	info.Created = time.Unix(ts.Sec, ts.Nsec)
	if info.DataPoolID, err = img.GetDataPoolID(); err != nil {
		return err
	}
	st, err := img.Stat()
	if err != nil {
		return err
	}
	info.ObjectSize = st.Obj_size
	if info.StripeUnit, err = img.GetStripeUnit(); err != nil {
		return err
	}
	info.StripeCount, err = img.GetStripeCount()
	return err
}

func (p *cephPool) ListImages(ctx context.Context) ([]string, error) {
	return util.Do(ctx, "listing images of "+p.Name(), func() ([]string, error) { return librbd.GetImageNames(p.ioctx) })
}

func (p *cephPool) CephCSI(instanceID string) journal.Journal {
	return journal.NewCephCSI(p.ioctx, p.ID(), instanceID)
}
