package ceph

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

const (
	goodKey = "QVFELVRPUC1TRUNSRVQtS0VZLWZvci10ZXN0cw=="
	badKey  = "AQD-TOP-SECRET-KEY!!" // not base64
)

func TestCredentials(t *testing.T) {
	user := map[string]string{SecretUserID: "csi-rbd-node", SecretUserKey: goodKey}
	admin := map[string]string{SecretAdminID: "admin", SecretAdminKey: goodKey}
	both := map[string]string{SecretUserID: "csi-rbd-node", SecretUserKey: goodKey, SecretAdminID: "admin", SecretAdminKey: goodKey}
	tests := []struct {
		name    string
		read    func(map[string]string) (Credentials, error)
		secrets map[string]string
		wantID  string // "" means an error is expected
	}{
		{"user", UserCredentials, user, "csi-rbd-node"},
		{"user from admin secrets", UserCredentials, admin, ""},
		{"user without key", UserCredentials, map[string]string{SecretUserID: "u"}, ""},
		{"user without ID", UserCredentials, map[string]string{SecretUserKey: goodKey}, ""},
		{"user with bad key", UserCredentials, map[string]string{SecretUserID: "u", SecretUserKey: badKey}, ""},
		{"user ID with space", UserCredentials, map[string]string{SecretUserID: "a b", SecretUserKey: goodKey}, ""},
		{"user ID with comma", UserCredentials, map[string]string{SecretUserID: "a,b", SecretUserKey: goodKey}, ""},
		{"admin", AdminCredentials, admin, "admin"},
		{"admin from user secrets", AdminCredentials, user, ""},
		{"user or admin prefers user", UserOrAdminCredentials, both, "csi-rbd-node"},
		{"user or admin falls back", UserOrAdminCredentials, admin, "admin"},
		{"user or admin skips a bad user key", UserOrAdminCredentials,
			map[string]string{SecretUserID: "u", SecretUserKey: badKey, SecretAdminID: "admin", SecretAdminKey: goodKey}, "admin"},
		{"user or admin with nothing", UserOrAdminCredentials, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.read(tc.secrets)
			if tc.wantID == "" {
				if !errors.Is(err, ErrMissingCredentials) {
					t.Fatalf("got %v, %v; want ErrMissingCredentials", c, err)
				}
				for _, k := range []string{goodKey, badKey} {
					if strings.Contains(err.Error(), k) {
						t.Errorf("error leaks the key: %v", err)
					}
				}
				return
			}
			if err != nil || c.ID != tc.wantID || c.Key != goodKey {
				t.Errorf("got %+v, %v; want %s", c, err, tc.wantID)
			}
		})
	}
}

func TestFromSecrets(t *testing.T) {
	user := map[string]string{SecretUserID: "csi-rbd-node", SecretUserKey: goodKey}
	tests := []struct {
		name       string
		secrets    map[string]string
		legacyUser string
		wantID     string // "" means an error is expected
		legacy     bool
	}{
		{"userID/userKey", user, "kube", "csi-rbd-node", false},
		{"adminID/adminKey", map[string]string{SecretAdminID: "admin", SecretAdminKey: goodKey}, "", "admin", false},
		{"bare key, user from the caller", map[string]string{SecretKey: goodKey}, "kube", "kube", true},
		{"bare key, nobody names the user", map[string]string{SecretKey: goodKey}, "", "admin", true},
		{"key naming its own user wins", map[string]string{SecretKey: goodKey, SecretLegacyAdminID: "mig"}, "kube", "mig", true},
		{"key beside userID is not the in-tree form", map[string]string{SecretKey: goodKey, SecretUserID: "u"}, "", "", false},
		{"bare key not base64", map[string]string{SecretKey: badKey}, "", "", true},
		{"nothing", nil, "kube", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if IsLegacySecret(tc.secrets) != tc.legacy {
				t.Errorf("IsLegacySecret = %v, want %v", !tc.legacy, tc.legacy)
			}
			c, err := FromSecrets(tc.secrets, tc.legacyUser)
			if tc.wantID == "" {
				if !errors.Is(err, ErrMissingCredentials) || strings.Contains(err.Error(), badKey) {
					t.Fatalf("got %v, %v; want ErrMissingCredentials without the key", c, err)
				}
				return
			}
			if err != nil || c.ID != tc.wantID || c.Key != goodKey {
				t.Errorf("got %v, %v; want %s", c, err, tc.wantID)
			}
		})
	}
}

func TestCredentialsStringHidesKey(t *testing.T) {
	c := Credentials{ID: "csi-rbd-provisioner", Key: goodKey}
	for _, s := range []string{c.String(), fmt.Sprint(c), fmt.Sprintf("%v %s %+v", c, c, c), fmt.Errorf("as %s", c).Error()} {
		if strings.Contains(s, goodKey) || !strings.Contains(s, "client.csi-rbd-provisioner") {
			t.Errorf("%q: want the user without the key", s)
		}
	}
}

func TestCredentialsFrom(t *testing.T) {
	bare := map[string]string{SecretKey: goodKey}
	tests := []struct {
		name    string
		secrets map[string]string
		vctx    map[string]string
		wantID  string
	}{
		{"userID/userKey, whatever the context says", map[string]string{SecretUserID: "u", SecretUserKey: goodKey},
			map[string]string{ParamUserID: "kube"}, "u"},
		{"bare key, the class's userId", bare, map[string]string{ParamUserID: "kube", ParamAdminID: "prov"}, "kube"},
		{"bare key, the class's adminId", bare, map[string]string{ParamAdminID: "prov"}, "prov"},
		{"bare key, no context", bare, nil, DefaultLegacyUser},
		{"bare key naming its user", map[string]string{SecretKey: goodKey, SecretLegacyAdminID: "mig"},
			map[string]string{ParamUserID: "kube"}, "mig"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := CredentialsFrom(tc.secrets, tc.vctx)
			if err != nil || c.ID != tc.wantID || c.Key != goodKey {
				t.Errorf("got %v, %v; want %s", c, err, tc.wantID)
			}
		})
	}
}
