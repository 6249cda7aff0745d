package ceph

import (
	"cmp"
	"encoding/base64"
	"errors"
	"fmt"
)

// Secret keys ceph-csi and Rook use in CSI secrets.
const (
	SecretUserID   = "userID"
	SecretUserKey  = "userKey"
	SecretAdminID  = "adminID"
	SecretAdminKey = "adminKey"

	// The in-tree kubernetes.io/rbd form: a secret holding only the key
	// of a user the StorageClass names (adminId, userId). ceph-csi's
	// migration secrets may name the user themselves, as adminId.
	SecretKey           = "key"
	SecretLegacyAdminID = "adminId"
	// DefaultLegacyUser owns a bare key nothing else names, as in-tree.
	DefaultLegacyUser = "admin"
)

// In-tree names of the cephx users whose keys in-tree secrets hold, as
// StorageClass parameters (kubernetes.io/rbd's): adminId provisions,
// userId maps. CreateVolume records them in the volume context.
const (
	ParamAdminID = "adminId"
	ParamUserID  = "userId"
)

// Credentials is a cephx identity. The key never appears in String or in
// any error built from a Credentials value.
type Credentials struct {
	ID  string // without the "client." prefix
	Key string
}

// String names the user and hides the key.
func (c Credentials) String() string { return "client." + c.ID }

// GoString hides the key from %#v too.
func (c Credentials) GoString() string { return c.String() }

// ErrMissingCredentials is returned when the secrets lack an ID or key.
var ErrMissingCredentials = errors.New("missing credentials")

// UserCredentials reads userID/userKey from CSI secrets.
func UserCredentials(secrets map[string]string) (Credentials, error) {
	return credentials(secrets, SecretUserID, SecretUserKey)
}

// AdminCredentials reads adminID/adminKey from CSI secrets.
func AdminCredentials(secrets map[string]string) (Credentials, error) {
	return credentials(secrets, SecretAdminID, SecretAdminKey)
}

// UserOrAdminCredentials prefers userID/userKey and falls back to
// adminID/adminKey, which is what CephFS provisioner secrets carry.
func UserOrAdminCredentials(secrets map[string]string) (Credentials, error) {
	c, userErr := UserCredentials(secrets)
	if userErr == nil {
		return c, nil
	}
	if secrets[SecretAdminID] != "" {
		return AdminCredentials(secrets)
	}
	if secrets[SecretUserID] != "" {
		return Credentials{}, userErr // say what is wrong with the user given
	}
	return Credentials{}, fmt.Errorf("%w: secrets need %s/%s or %s/%s",
		ErrMissingCredentials, SecretUserID, SecretUserKey, SecretAdminID, SecretAdminKey)
}

// IsLegacySecret reports whether secrets are in the in-tree form: a key
// and neither userID nor adminID.
func IsLegacySecret(secrets map[string]string) bool {
	return secrets[SecretKey] != "" && secrets[SecretUserID] == "" && secrets[SecretAdminID] == ""
}

// FromSecrets reads the cephx user from CSI secrets in every form they
// come in: userID/userKey, adminID/adminKey (see UserOrAdminCredentials),
// or the in-tree form, whose bare key belongs to the user the secret's own
// adminId names, else to legacyUser (what the caller's parameters name),
// else to client.admin.
func FromSecrets(secrets map[string]string, legacyUser string) (Credentials, error) {
	if !IsLegacySecret(secrets) {
		return UserOrAdminCredentials(secrets)
	}
	c := Credentials{ID: secrets[SecretLegacyAdminID], Key: secrets[SecretKey]}
	if c.ID == "" {
		c.ID = legacyUser
	}
	if c.ID == "" {
		c.ID = DefaultLegacyUser
	}
	return c, c.Validate()
}

// CredentialsFrom reads the cephx user of a CSI call from its secrets (see
// FromSecrets). vctx is a node call's volume context, or nil: an in-tree
// secret's bare key belongs to the user the secret names, else to the
// class's userId or adminId that CreateVolume recorded there, else to
// client.admin.
func CredentialsFrom(secrets, vctx map[string]string) (Credentials, error) {
	return FromSecrets(secrets, cmp.Or(vctx[ParamUserID], vctx[ParamAdminID]))
}

func credentials(secrets map[string]string, idKey, keyKey string) (Credentials, error) {
	c := Credentials{ID: secrets[idKey], Key: secrets[keyKey]}
	if c.ID == "" || c.Key == "" {
		return Credentials{}, fmt.Errorf("%w: secrets need %s and %s", ErrMissingCredentials, idKey, keyKey)
	}
	if err := c.Validate(); err != nil {
		return Credentials{}, err
	}
	return c, nil
}

// Validate checks the shape of the ID and key without echoing the key.
func (c Credentials) Validate() error {
	for _, r := range c.ID {
		if r <= ' ' || r == ',' || r == '=' || r > '~' {
			return fmt.Errorf("%w: user ID %q contains an invalid character", ErrMissingCredentials, c.ID)
		}
	}
	// A cephx key is base64; librados would otherwise fail with an opaque
	// error after a network round trip.
	if _, err := base64.StdEncoding.DecodeString(c.Key); err != nil {
		return fmt.Errorf("%w: the key for %s is not valid base64", ErrMissingCredentials, c)
	}
	return nil
}
