package etcdkit

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Defaults applied by New and Wrap to zero fields of Config.
const (
	DefaultDialTimeout      = 5 * time.Second
	DefaultRequestTimeout   = 5 * time.Second
	DefaultKeepAliveTime    = 10 * time.Second
	DefaultKeepAliveTimeout = 5 * time.Second
	DefaultStallTimeout     = 2 * time.Second
	DefaultMaxValueSize     = 1536 * 1024
)

// MinStallTimeout is the shortest Config.StallTimeout New and Wrap accept.
const MinStallTimeout = 100 * time.Millisecond

// Config configures a Client. The zero value of every field but Endpoints is
// valid and means the default stated in the field's comment.
type Config struct {
	// Endpoints are the etcd members' client addresses, "host:port" or
	// "scheme://host:port". Required by New; Wrap defaults them to the raw
	// client's endpoints.
	Endpoints []string

	// Namespace is the root under which every key of this Client lives,
	// the library's own keys ("_etcdkit/...") included. It takes the forms
	// of existing etcd layouts: with a leading "/", "/app/" and "/app" both
	// store key "db" at "/app/db"; without one, "app/" and "app" store it at
	// "app/db"; "/" stores it at "/db". Between the optional leading and
	// trailing "/", it follows the rules of names (see ErrInvalidName: no
	// empty, "." or ".." segment, no control character), so that no key
	// leaves it. Client.KeyPrefix returns the resulting prefix.
	// Default: "" (keys at the root of etcd, "db" at "db").
	Namespace string

	// DialTimeout bounds New's first contact with the cluster and every
	// re-dial of the connection the watch and lease engines use (together
	// with StallTimeout: a re-dial is an attempt on one member, and a
	// silent member's turn ends after the shorter of the two; a re-dial
	// that ran out of time makes the next one twice as long, up to
	// DialTimeout, so that members slower than StallTimeout are reached).
	// Default: 5s.
	DialTimeout time.Duration

	// StartWithoutCluster makes New return at once, whether or not any
	// member answers, so that a service starts on the day etcd is down:
	// its Live values serve their snapshots or defaults, and
	// Service.Run, Mutex.Run and Semaphore.Run wait for the cluster
	// themselves. Until a member answers, requests fail as they do
	// whenever no member answers (an error naming each member and why),
	// views wait, and holdings (NewSession, Register, Campaign, Lock...)
	// fail with their ctx. Wrong endpoints, certificates or credentials
	// then do not fail New: the client checks the cluster in the
	// background until a member answers, logs each distinct failure once
	// at Warn, and then once at Info that it reached the cluster.
	// Default false: New waits for a member, up to DialTimeout, and
	// fails if none answers (see New).
	StartWithoutCluster bool

	// RequestTimeout bounds each request whose context has no deadline,
	// all its attempts on the members together (see StallTimeout).
	// Default: 5s.
	RequestTimeout time.Duration

	// KeepAliveTime is the interval of gRPC keepalive pings on an idle
	// connection. gRPC does not allow less than 10s. Default: 10s.
	KeepAliveTime time.Duration

	// KeepAliveTimeout is how long a keepalive ping may go unanswered before
	// gRPC closes the connection. Default: 5s.
	KeepAliveTimeout time.Duration

	// StallTimeout is how long a watch or lease keepalive stream may stay
	// silent, after the engine has asked the server for a sign of life, before
	// the link is declared stalled and the engine moves to another member (or
	// re-dials the only one). It is what notices a silent link long before
	// gRPC keepalive would. It also bounds each attempt of a request on one
	// member: a read that gets no answer within it moves to the next
	// member, a write fails with ErrUnknownOutcome. A lease keepalive that
	// ran out of it is tried again with twice the time, and so on up to
	// the time left before the session would be Lost, so that members
	// that answer, only more slowly than StallTimeout, keep the lease;
	// the attempts of a lease grant grow the same way, and so do those of
	// the lease-bound writes (an Ephemeral's or a Registration's key, a
	// candidate's or a holder's) sent on the connection of the watch and
	// keepalive streams. Such an attempt that ran out of time while its
	// member answered anything else meanwhile (a watch response, a
	// keepalive, another request) leaves the connection in place: the
	// member is slow, not silent, and the watches and keepalives on it go
	// on.
	// It must be at least MinStallTimeout (100ms):
	// the engines' timers are fractions of it, and a link cannot answer
	// faster. Default: 2s.
	StallTimeout time.Duration

	// Username and Password authenticate the client when etcd auth is on.
	// The client logs in once, and every connection and stream it opens
	// (to any member, after any reconnect) sends that one token, so a
	// reconnect costs no login. It logs in again only when a member
	// refuses the token (etcd's simple tokens live in each member's memory
	// and are lost when it restarts or unused for its --auth-token-ttl; a
	// JWT expires, and is refused once the auth store changed): the
	// request is then sent once more, and the watch or keepalive stream
	// opened again, with the new token. A login is part of the attempt that
	// needs it, bounded like any by StallTimeout and the caller's deadline
	// (and by DialTimeout), after which the next member is tried; wrong
	// credentials fail New, and requests, with rpctypes.ErrAuthFailed. A user needs
	// read and write permission on the namespace only: the library's own
	// keys live under it, and leases and the member list need none.
	// Password never prints (see Config.String) and is left out of JSON.
	// Default: no authentication.
	Username string
	Password string `json:"-"`

	// TLS, when set, is used for every connection to the cluster. Its
	// certificates' private keys never print (see Config.String), and it
	// is left out of JSON.
	// Default: plain TCP.
	TLS *tls.Config `json:"-"`

	// Logger receives the library's diagnostics. Default: zap.NewNop().
	Logger *zap.Logger

	// MaxValueSize is the largest encoded value, in bytes, the Client sends;
	// larger ones fail with ErrTooLarge before anything is sent. The
	// client's gRPC send limit follows it (MaxValueSize plus room for the key
	// and the request's framing, never below gRPC's 2 MiB default), so a
	// value within it is never refused by the client. The server has a limit
	// of its own (etcd's --max-request-bytes, 1.5 MiB by default): raise both
	// together. A value the server refuses also fails with ErrTooLarge, which
	// is never retryable. Default: 1.5 MiB, etcd's default request limit.
	MaxValueSize int

	// Metrics receives counters and gauges about the library's own work
	// (watch reconnects, resyncs, stalls, subscriber lag, session state
	// changes, ephemeral restores, Live updates and rejections, leadership
	// changes, health status; see AllMetrics). The metrics/prom package
	// adapts them to Prometheus. Default: nil, no metrics are recorded.
	Metrics Metrics

	// DialOptions are passed to gRPC for every connection the Client opens
	// (requests, watch and lease streams, health probes), after the
	// library's own: a stats handler for OpenTelemetry
	// (grpc.WithStatsHandler), interceptors, a custom dialer. An option
	// that contradicts the library's (transport credentials, keepalive,
	// message size limits, connect backoff) overrides it, and the
	// guarantees that rest on it with it. Default: none.
	DialOptions []grpc.DialOption
}

// String describes cfg field by field, in the form of %+v, without its
// secrets: a set Password reads [redacted] (an unset one reads empty), TLS
// reads set or <nil> (a tls.Config holds private keys), and Logger,
// Metrics and DialOptions read whether they are set (Metrics its type,
// DialOptions their number), not what they hold.
func (cfg Config) String() string { return cfg.describe(false) }

// GoString describes cfg as String does, in the form of %#v.
func (cfg Config) GoString() string { return cfg.describe(true) }

// Format prints cfg with String for every verb but %#v, which prints
// GoString, so that no verb (%d, %x included) prints its secrets.
func (cfg Config) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = io.WriteString(f, cfg.GoString())
	case verb == 'q':
		_, _ = fmt.Fprintf(f, "%q", cfg.String())
	default:
		_, _ = io.WriteString(f, cfg.String())
	}
}

// describe writes cfg's fields in the form of %+v, or of %#v with
// goSyntax; see String for what it leaves out.
func (cfg Config) describe(goSyntax bool) string {
	var b strings.Builder
	verb, sep := "%v", " "
	if goSyntax {
		verb, sep = "%#v", ", "
		b.WriteString("etcdkit.Config")
	}
	b.WriteByte('{')
	first := true
	field := func(name string, v any) {
		if !first {
			b.WriteString(sep)
		}
		first = false
		fmt.Fprintf(&b, "%s:"+verb, name, v)
	}
	set := func(isSet bool) any {
		if !isSet {
			return opaque("<nil>")
		}
		return opaque("set")
	}
	password := cfg.Password
	if password != "" {
		password = "[redacted]"
	}
	metrics := opaque("<nil>")
	if cfg.Metrics != nil {
		metrics = opaque(fmt.Sprintf("%T", cfg.Metrics))
	}
	dialOptions := opaque("[]")
	if len(cfg.DialOptions) > 0 {
		dialOptions = opaque(fmt.Sprintf("[%d options]", len(cfg.DialOptions)))
	}
	field("Endpoints", cfg.Endpoints)
	field("Namespace", cfg.Namespace)
	field("DialTimeout", cfg.DialTimeout)
	field("StartWithoutCluster", cfg.StartWithoutCluster)
	field("RequestTimeout", cfg.RequestTimeout)
	field("KeepAliveTime", cfg.KeepAliveTime)
	field("KeepAliveTimeout", cfg.KeepAliveTimeout)
	field("StallTimeout", cfg.StallTimeout)
	field("Username", cfg.Username)
	field("Password", password)
	field("TLS", set(cfg.TLS != nil))
	field("Logger", set(cfg.Logger != nil))
	field("MaxValueSize", cfg.MaxValueSize)
	field("Metrics", metrics)
	field("DialOptions", dialOptions)
	b.WriteByte('}')
	return b.String()
}

// opaque is a field that Config.String shows only as a description: it
// prints as it is with every verb, %#v included.
type opaque string

func (o opaque) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, string(o)) }

// withDefaults returns cfg with zero fields set to their defaults, or an error
// naming the first invalid field.
func (cfg Config) withDefaults() (Config, error) {
	for i, ep := range cfg.Endpoints {
		if ep == "" {
			return cfg, fmt.Errorf("etcdkit: config: endpoint %d is empty", i)
		}
		if _, _, err := endpointAddr(ep); err != nil {
			return cfg, errorf("config: endpoint %q: %w", ep, err)
		}
	}
	if _, err := keyPrefix(cfg.Namespace); err != nil {
		return cfg, errorf("config: Namespace %q: %w", cfg.Namespace, err)
	}
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"DialTimeout", &cfg.DialTimeout, DefaultDialTimeout},
		{"RequestTimeout", &cfg.RequestTimeout, DefaultRequestTimeout},
		{"KeepAliveTime", &cfg.KeepAliveTime, DefaultKeepAliveTime},
		{"KeepAliveTimeout", &cfg.KeepAliveTimeout, DefaultKeepAliveTimeout},
		{"StallTimeout", &cfg.StallTimeout, DefaultStallTimeout},
	}
	for _, d := range durations {
		if *d.v < 0 {
			return cfg, fmt.Errorf("etcdkit: config: %s is negative (%v)", d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if cfg.StallTimeout < MinStallTimeout {
		return cfg, fmt.Errorf("etcdkit: config: StallTimeout %v is below the minimum of %v", cfg.StallTimeout, MinStallTimeout)
	}
	if cfg.MaxValueSize < 0 {
		return cfg, fmt.Errorf("etcdkit: config: MaxValueSize is negative (%d)", cfg.MaxValueSize)
	}
	if cfg.MaxValueSize == 0 {
		cfg.MaxValueSize = DefaultMaxValueSize
	}
	if (cfg.Username == "") != (cfg.Password == "") {
		return cfg, errors.New("etcdkit: config: Username and Password must be set together")
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	return cfg, nil
}

// keyPrefix returns the prefix of the etcd keys under namespace ns (see
// Config.Namespace), or why ns is not acceptable.
func keyPrefix(ns string) (string, error) {
	switch ns {
	case "":
		return "", nil
	case "/":
		return "/", nil
	}
	// One "/" on each side belongs to the layout; more would make an empty
	// segment, which validateName refuses.
	inner, lead := strings.CutPrefix(ns, "/")
	inner = strings.TrimSuffix(inner, "/")
	if err := validateName(inner); err != nil {
		return "", err
	}
	if lead {
		return "/" + inner + "/", nil
	}
	return inner + "/", nil
}

// endpointAddr returns the network and address an endpoint is dialled at:
// "tcp" and "host:port" for "host:port", "http://host:port" and
// "https://host:port", "unix" and a path for "unix://path", "unix:path" and
// their "unixs" forms. The error says what makes ep unusable.
func endpointAddr(ep string) (network, addr string, err error) {
	for _, scheme := range []string{"unixs://", "unix://", "unixs:", "unix:"} {
		if path, ok := strings.CutPrefix(ep, scheme); ok {
			if path == "" {
				return "", "", errors.New("no socket path")
			}
			return "unix", path, nil
		}
	}
	addr = ep
	if scheme, rest, ok := strings.Cut(ep, "://"); ok {
		if scheme != "http" && scheme != "https" {
			return "", "", fmt.Errorf("scheme %q, want http, https, unix or unixs", scheme)
		}
		addr, _, _ = strings.Cut(rest, "/")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("want host:port: %w", err)
	}
	if host == "" {
		return "", "", errors.New("want host:port: no host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("want host:port: port %q is not a number in 1..65535", port)
	}
	return "tcp", addr, nil
}
