package etcdkit_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

// testCA is a certificate authority made at run time for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a certificate for 127.0.0.1 usable by servers and clients and
// returns its PEM certificate and key.
func (ca *testCA) issue(t *testing.T, cn string, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, data, 0o600))
	return p
}

func TestTLSClientCertAuth(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, "etcdkit test CA")
	srvCert, srvKey := ca.issue(t, "server", 2)
	cliCert, cliKey := ca.issue(t, "client", 3)
	info := transport.TLSInfo{
		CertFile:       writeFile(t, dir, "server.pem", srvCert),
		KeyFile:        writeFile(t, dir, "server-key.pem", srvKey),
		TrustedCAFile:  writeFile(t, dir, "ca.pem", ca.pem),
		ClientCertAuth: true,
	}
	srv := etcdtest.Start(t, etcdtest.WithClientTLS(info))
	ctx := testContext(t, time.Minute)

	pool := x509.NewCertPool()
	require.True(t, pool.AppendCertsFromPEM(ca.pem))
	pair, err := tls.X509KeyPair(cliCert, cliKey)
	require.NoError(t, err)

	t.Run("right CA and client certificate", func(t *testing.T) {
		c := testClientConfig(t, etcdkit.Config{
			Endpoints: []string{srv.Endpoint()},
			Namespace: "tls",
			TLS:       &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		})
		k := etcdkit.NewKey(c, "k", etcdkit.String())
		_, err := k.Put(ctx, "secure")
		require.NoError(t, err)
		v, err := k.Get(ctx)
		require.NoError(t, err)
		assert.Equal(t, "secure", v.Data)
	})

	t.Run("wrong CA", func(t *testing.T) {
		other := newTestCA(t, "another CA")
		wrong := x509.NewCertPool()
		require.True(t, wrong.AppendCertsFromPEM(other.pem))
		start := time.Now()
		_, err := etcdkit.New(ctx, etcdkit.Config{
			Endpoints:   []string{srv.Endpoint()},
			DialTimeout: 2 * time.Second,
			TLS:         &tls.Config{RootCAs: wrong, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "certificate", "got %v", err)
		assert.Less(t, time.Since(start), 10*time.Second)
	})

	t.Run("no client certificate", func(t *testing.T) {
		_, err := etcdkit.New(ctx, etcdkit.Config{
			Endpoints:   []string{srv.Endpoint()},
			DialTimeout: 2 * time.Second,
			TLS:         &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		})
		require.Error(t, err)
	})
}

func TestAuth(t *testing.T) {
	srv := etcdtest.Start(t)
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)

	_, err := raw.UserAdd(ctx, "root", "s3cret")
	require.NoError(t, err)
	_, err = raw.UserGrantRole(ctx, "root", "root")
	require.NoError(t, err)
	_, err = raw.AuthEnable(ctx)
	require.NoError(t, err)
	t.Cleanup(func() {
		admin := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Username: "root", Password: "s3cret"})
		_, _ = admin.Raw().AuthDisable(context.Background())
	})

	t.Run("right password", func(t *testing.T) {
		c := testClientConfig(t, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Namespace: "auth", Username: "root", Password: "s3cret"})
		_, err := etcdkit.NewKey(c, "k", etcdkit.String()).Put(ctx, "v")
		require.NoError(t, err)
	})

	t.Run("wrong password", func(t *testing.T) {
		_, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{srv.Endpoint()}, Username: "root", Password: "nope"})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "authentication failed", "got %v", err)
	})

	t.Run("no credentials", func(t *testing.T) {
		_, err := etcdkit.New(ctx, etcdkit.Config{Endpoints: []string{srv.Endpoint()}})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "user name is empty", "got %v", err)
	})
}

// TestConfigPrintsNoSecrets prints a Config, and a Client made with it,
// every way a program might log them: the password must read [redacted],
// and the TLS config, whose certificates carry private keys, only whether
// it is set, while the endpoints and the namespace still show.
func TestConfigPrintsNoSecrets(t *testing.T) {
	const password = "pa55-w0rd-do-not-print"
	ca := newTestCA(t, "print-ca")
	certPEM, keyPEM := ca.issue(t, "print-client", 2)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	require.NoError(t, err)
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	require.True(t, ok, "got private key %T, want *ecdsa.PrivateKey", cert.PrivateKey)
	scalar, err := key.Bytes()
	require.NoError(t, err)
	d := new(big.Int).SetBytes(scalar)
	block, _ := pem.Decode(keyPEM)
	require.NotNil(t, block)
	// The forms key material takes when printed: the scalar in decimal
	// (%v of a big.Int) or hex, and the PEM or DER bytes.
	secrets := []string{password, d.String(), d.Text(16), string(keyPEM),
		fmt.Sprint(block.Bytes), fmt.Sprintf("%x", block.Bytes)}

	cfg := etcdkit.Config{
		Endpoints: []string{"127.0.0.1:23790", "127.0.0.1:23791"},
		Namespace: "/printed-ns/",
		Username:  "printer",
		Password:  password,
		TLS:       &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	noTLS := cfg
	noTLS.TLS = nil

	var zapOut bytes.Buffer
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&zapOut), zap.DebugLevel))
	log.Info("config", zap.Any("cfg", cfg), zap.Any("ptr", &cfg), zap.Reflect("reflected", cfg))
	cfgJSON, err := json.Marshal(cfg)
	require.NoError(t, err)

	printed := map[string]string{
		"%v":                fmt.Sprintf("%v", cfg),
		"%+v":               fmt.Sprintf("%+v", cfg),
		"%#v":               fmt.Sprintf("%#v", cfg),
		"%s":                fmt.Sprintf("%s", cfg),
		"%d":                fmt.Sprintf("%d", cfg),
		"%+v pointer":       fmt.Sprintf("%+v", &cfg),
		"%#v pointer":       fmt.Sprintf("%#v", &cfg),
		"Sprint":            fmt.Sprint(cfg),
		"Sprint in a slice": fmt.Sprint([]etcdkit.Config{cfg}),
		"String":            cfg.String(),
		"GoString":          cfg.GoString(),
		"zap.Any":           zapOut.String(),
		"json.Marshal":      string(cfgJSON),
	}
	for name, out := range printed {
		t.Run(name, func(t *testing.T) {
			for _, s := range secrets {
				assert.NotContains(t, out, s, "got %s, want no secret in it", out)
			}
			for _, s := range []string{"127.0.0.1:23790", "127.0.0.1:23791", "/printed-ns/"} {
				assert.Contains(t, out, s, "got %s, want %q in it", out, s)
			}
		})
	}
	// An unset password reads empty, not [redacted]: whoever reads the log
	// learns whether one was configured.
	assert.Contains(t, fmt.Sprint(cfg), "Password:[redacted]")
	assert.Contains(t, fmt.Sprint(etcdkit.Config{}), "Password: ")
	assert.NotContains(t, fmt.Sprint(etcdkit.Config{}), "[redacted]")
	assert.Contains(t, fmt.Sprint(cfg), "TLS:set")
	assert.Contains(t, fmt.Sprint(noTLS), "TLS:<nil>")

	t.Run("Client", func(t *testing.T) {
		srv := etcdtest.Start(t)
		c, err := etcdkit.Wrap(srv.Client(t), noTLS)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%d"} {
			out := fmt.Sprintf(verb, c)
			assert.NotContains(t, out, password, "got %s with %s, want no password in it", out, verb)
			assert.Contains(t, out, "/printed-ns/", "got %s with %s, want the namespace in it", out, verb)
		}
	})
}

// TestConfigPrintsEveryField: Config's String lists its fields by hand, so
// a field added to Config must be added there too (or it would print
// nothing, and a secret added later must be redacted on purpose).
func TestConfigPrintsEveryField(t *testing.T) {
	cfg := etcdkit.Config{Endpoints: []string{"127.0.0.1:2379"}}
	s, gs := cfg.String(), cfg.GoString()
	for f := range reflect.TypeFor[etcdkit.Config]().Fields() {
		assert.Contains(t, s, f.Name+":", "String")
		assert.Contains(t, gs, f.Name+":", "GoString")
	}
}
