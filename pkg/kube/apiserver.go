package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// apiServer is how the driver reaches the Kubernetes API: its address, a
// client trusting its CA (with the client's certificate, if any) and the
// bearer token, read afresh for each request since in-cluster tokens
// rotate.
type apiServer struct {
	base   string
	client *http.Client
	token  func() (string, error)
}

// serviceAccountDir is where a pod finds its service account's token and CA.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// findAPIServer is the API server the kubeconfig file names, else the
// pod's own (in-cluster); nil, and no error, when there is neither.
func findAPIServer(kubeconfig string) (*apiServer, error) {
	if kubeconfig != "" {
		return fromKubeconfig(kubeconfig)
	}
	return inCluster(os.Getenv, serviceAccountDir)
}

// inCluster is the API server a pod reaches as its service account.
func inCluster(env func(string) string, dir string) (*apiServer, error) {
	host, port := env("KUBERNETES_SERVICE_HOST"), env("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, nil
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("in-cluster Kubernetes access: %w", err)
	}
	tlsConfig, err := tlsConfigOf(ca, nil, nil, false)
	if err != nil {
		return nil, fmt.Errorf("in-cluster Kubernetes access: %w", err)
	}
	return newAPIServer("https://"+net.JoinHostPort(host, port), tlsConfig, fileToken(filepath.Join(dir, "token"))), nil
}

// kubeconfig is the part of a kubeconfig file the driver reads.
type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Contexts       []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
	Clusters []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData []byte `json:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string   `json:"name"`
		User authInfo `json:"user"`
	} `json:"users"`
}

type authInfo struct {
	Token                 string `json:"token"`
	TokenFile             string `json:"tokenFile"`
	ClientCertificate     string `json:"client-certificate"`
	ClientCertificateData []byte `json:"client-certificate-data"`
	ClientKey             string `json:"client-key"`
	ClientKeyData         []byte `json:"client-key-data"`
	Exec                  any    `json:"exec"`
	AuthProvider          any    `json:"auth-provider"`
}

// fromKubeconfig is the API server of a kubeconfig file's current
// context. Tokens and client certificates are supported; credential
// plugins (exec, auth-provider) are not: a driver runs with a service
// account's token.
func fromKubeconfig(path string) (*apiServer, error) {
	fail := func(err error) (*apiServer, error) { return nil, fmt.Errorf("kubeconfig %s: %w", path, err) }
	b, err := os.ReadFile(path)
	if err != nil {
		return fail(err)
	}
	var kc kubeconfig
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return fail(err)
	}
	var clusterName, userName string
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			clusterName, userName = c.Context.Cluster, c.Context.User
		}
	}
	if clusterName == "" {
		return fail(fmt.Errorf("no context %q", kc.CurrentContext))
	}
	dir := filepath.Dir(path)
	for _, c := range kc.Clusters {
		if c.Name != clusterName {
			continue
		}
		var user authInfo
		for _, u := range kc.Users {
			if u.Name == userName {
				user = u.User
			}
		}
		s, err := kubeconfigServer(dir, c.Cluster.Server, c.Cluster.CertificateAuthority,
			c.Cluster.CertificateAuthorityData, c.Cluster.InsecureSkipTLSVerify, user)
		if err != nil {
			return fail(err)
		}
		return s, nil
	}
	return fail(fmt.Errorf("no cluster %q", clusterName))
}

func kubeconfigServer(dir, server, caFile string, ca []byte, insecure bool, user authInfo) (*apiServer, error) {
	if user.Exec != nil || user.AuthProvider != nil {
		return nil, errors.New("credential plugins (exec, auth-provider) are not supported: use a token or a client certificate")
	}
	if !strings.HasPrefix(server, "https://") {
		return nil, fmt.Errorf("server %q is not https", server)
	}
	var err error
	if ca, err = dataOrFile(dir, ca, caFile); err != nil {
		return nil, err
	}
	cert, err := dataOrFile(dir, user.ClientCertificateData, user.ClientCertificate)
	if err != nil {
		return nil, err
	}
	key, err := dataOrFile(dir, user.ClientKeyData, user.ClientKey)
	if err != nil {
		return nil, err
	}
	tlsConfig, err := tlsConfigOf(ca, cert, key, insecure)
	if err != nil {
		return nil, err
	}
	token := func() (string, error) { return user.Token, nil }
	if user.Token == "" && user.TokenFile != "" {
		token = fileToken(resolve(dir, user.TokenFile))
	}
	return newAPIServer(strings.TrimSuffix(server, "/"), tlsConfig, token), nil
}

// dataOrFile is data, else the file's content (relative to dir); nil for neither.
func dataOrFile(dir string, data []byte, file string) ([]byte, error) {
	if len(data) > 0 || file == "" {
		return data, nil
	}
	return os.ReadFile(resolve(dir, file))
}

func resolve(dir, file string) string {
	if filepath.IsAbs(file) {
		return file
	}
	return filepath.Join(dir, file)
}

func tlsConfigOf(ca, cert, key []byte, insecure bool) (*tls.Config, error) {
	// InsecureSkipVerify only when the kubeconfig says so.
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure}
	if len(ca) > 0 {
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(ca) {
			return nil, errors.New("no certificate in the CA data")
		}
	}
	if len(cert) > 0 || len(key) > 0 {
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// fileToken reads a token file at each request: the kubelet rotates it.
func fileToken(path string) func() (string, error) {
	return func() (string, error) {
		b, err := os.ReadFile(path)
		return strings.TrimSpace(string(b)), err
	}
}

func newAPIServer(base string, tlsConfig *tls.Config, token func() (string, error)) *apiServer {
	transport := &http.Transport{TLSClientConfig: tlsConfig, Proxy: http.ProxyFromEnvironment,
		TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: 30 * time.Second, IdleConnTimeout: 90 * time.Second}
	return &apiServer{base: base, client: &http.Client{Transport: transport}, token: token}
}

// statusError is an answer of the API server other than 200 OK.
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("the API server answered %d %s: %s", e.code, http.StatusText(e.code), e.body)
}

// get sends GET path?query; the caller closes the body of a 200 answer.
func (s *apiServer) get(ctx context.Context, path string, query url.Values) (io.ReadCloser, error) {
	u := s.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	token, err := s.token()
	if err != nil {
		return nil, fmt.Errorf("reading the service account token: %w", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, &statusError{code: resp.StatusCode, body: strings.TrimSpace(string(b))}
	}
	return resp.Body, nil
}
