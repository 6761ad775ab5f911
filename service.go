package etcdkit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"unicode"
)

// serviceRoot is the reserved name, under the client's namespace, below
// which every service keeps its instances.
const serviceRoot = "_etcdkit/service"

// Instance is one member of a Service: a process reachable at Addr.
type Instance[M any] struct {
	// ID names the instance within its service, uniquely among the live
	// ones: a name of one segment (no "/"; see ErrInvalidName for the other
	// rules), such as a host name or "api-7f9c".
	ID string
	// Addr is where the instance serves, "host:port" with a non-empty host
	// and a port in 1..65535, for example "10.0.0.7:8080" or
	// "api-1.internal:443".
	Addr string
	// Meta is whatever else the instance publishes about itself (version,
	// zone, weight...), stored through the service's codec.
	Meta M
}

// Service is a typed handle on a set of instances that register themselves
// under one name and are discovered by clients: the typed, lease-backed
// replacement for hand-rolled "heartbeat key with a TTL, refreshed every few
// seconds, and a prefix watch" schemes. Instances call Register; clients
// call Track, List, or dial the service through the gRPC resolver
// ([Client.ResolverBuilder], target "etcdkit:///<name>").
//
// Each instance is one key, attached to a lease of its own:
// <namespace>/_etcdkit/service/<name>/<ID>, where <name> is the service's
// name path-escaped into one segment, so that service "a" never sees the
// instances of service "a/b". Its value is a JSON object:
//
//	{"addr":"10.0.0.7:8080","meta":{"zone":"eu-1","weight":3}}
//
// "meta" holds the bytes the service's codec produced, verbatim, when they
// are a JSON value (JSON[M] always). Other bytes (Proto[M], a String that is
// not JSON, no bytes at all) are stored base64-encoded under "metaBytes"
// instead. An object with neither (written by another tool) is an instance
// whose Meta is M's zero value. Readers ignore fields they do not know, so
// later versions can add some.
//
// A Service holds no state besides its configuration: it is cheap to make
// and safe for concurrent use. An invalid name or a nil codec does not
// panic: every method returns the error, as Validate does.
type Service[M any] struct {
	c     *Client
	name  string
	codec Codec[M]
	p     *Prefix[record[M]]
	err   error
}

// NewService returns the service called name among the clients of c's
// namespace, whose instances' Meta is encoded with codec. The name follows
// the rules of names (see ErrInvalidName) and may contain "/".
func NewService[M any](c *Client, name string, codec Codec[M]) *Service[M] {
	s := &Service[M]{c: c, name: name, codec: codec}
	switch {
	case c == nil:
		s.err = errors.New("etcdkit: NewService: nil client")
	case codec == nil:
		s.err = fmt.Errorf("etcdkit: NewService %q: nil codec", name)
	default:
		if err := validateName(name); err != nil {
			s.err = errorf("NewService: %w", err)
			break
		}
		s.p = NewPrefix[record[M]](c, serviceRoot+"/"+url.PathEscape(name), recordCodec[M]{meta: codec})
		s.err = s.p.err
	}
	return s
}

// Name returns the service's name.
func (s *Service[M]) Name() string { return s.name }

// Validate returns the error that makes the handle unusable (a nil client
// or codec, an invalid name), or nil. Every method returns it too.
func (s *Service[M]) Validate() error { return s.err }

// List reads the service's instances at one revision and returns them
// sorted by ID, with that revision. An instance that does not decode does
// not hide the others: List returns every instance that did, and an error
// joining one *DecodeError per bad key. Any other error returns no
// instances.
func (s *Service[M]) List(ctx context.Context) ([]Instance[M], int64, error) {
	if s.err != nil {
		return nil, 0, s.err
	}
	entries, rev, err := s.p.List(ctx)
	if len(entries) == 0 && err != nil && !isDecodeErrors(err) {
		return nil, 0, err
	}
	errs := []error{err}
	list := make([]Instance[M], 0, len(entries))
	for _, e := range entries {
		if bad := validateID(e.Name); bad != nil {
			errs = append(errs, &DecodeError{Key: joinName(s.p.name, e.Name), Revision: e.Revision, Err: bad})
			continue
		}
		list = append(list, e.Data.instance(e.Name))
	}
	return list, rev, errors.Join(errs...)
}

// isDecodeErrors reports whether err is a *DecodeError or a join of them.
func isDecodeErrors(err error) bool {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if !isDecodeErrors(e) {
				return false
			}
		}
		return true
	}
	var de *DecodeError
	return errors.As(err, &de)
}

// validateID checks an instance ID: a valid name of one segment.
func validateID(id string) error {
	if err := validateName(id); err != nil {
		return errorf("%w: ID: %w", ErrInvalidInstance, err)
	}
	if strings.Contains(id, "/") {
		return errorf("%w: ID %q: %w: an ID is one segment, without \"/\"", ErrInvalidInstance, id, ErrInvalidName)
	}
	return nil
}

// validateAddr checks an instance address: "host:port", a non-empty host
// and a port number, nothing gRPC or an HTTP client would choke on.
func validateAddr(addr string) error {
	if strings.ContainsFunc(addr, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return fmt.Errorf("%w: address %q contains white space or control characters", ErrInvalidInstance, addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: address %q is not host:port: %v", ErrInvalidInstance, addr, err)
	}
	if host == "" {
		return fmt.Errorf("%w: address %q has no host", ErrInvalidInstance, addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%w: address %q: port %q is not a number in 1..65535", ErrInvalidInstance, addr, port)
	}
	return nil
}

// record is an instance as stored: the key holds the ID, the value the rest.
type record[M any] struct {
	addr string
	meta M
	raw  []byte // the stored bytes (set by Decode): tells a change from a rewrite
}

func (r record[M]) instance(id string) Instance[M] {
	return Instance[M]{ID: id, Addr: r.addr, Meta: r.meta}
}

// recordCodec stores a record as the JSON object described for Service.
type recordCodec[M any] struct{ meta Codec[M] }

// envelope is the stored JSON object, for decoding.
type envelope struct {
	Addr      string          `json:"addr"`
	Meta      json.RawMessage `json:"meta"`
	MetaBytes []byte          `json:"metaBytes"`
}

func (rc recordCodec[M]) Encode(r record[M]) ([]byte, error) {
	mb, err := rc.meta.Encode(r.meta)
	if err != nil {
		return nil, fmt.Errorf("meta: %w", err)
	}
	addr, err := json.Marshal(r.addr)
	if err != nil {
		return nil, err
	}
	// Built by hand so that the meta bytes are stored verbatim: encoding/json
	// would compact and HTML-escape a RawMessage, and the codec's bytes must
	// come back as they were.
	b := append([]byte(`{"addr":`), addr...)
	switch {
	case len(mb) == 0:
		b = append(b, `,"metaBytes":""`...)
	case isBareJSON(mb):
		b = append(append(b, `,"meta":`...), mb...)
	default:
		enc, err := json.Marshal(mb) // base64
		if err != nil {
			return nil, err
		}
		b = append(append(b, `,"metaBytes":`...), enc...)
	}
	return append(b, '}'), nil
}

// isBareJSON reports whether b is one JSON value without surrounding white
// space, which a RawMessage gives back byte for byte.
func isBareJSON(b []byte) bool {
	return len(b) > 0 && json.Valid(b) && len(bytes.TrimSpace(b)) == len(b)
}

func (rc recordCodec[M]) Decode(b []byte) (record[M], error) {
	var r record[M]
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return r, fmt.Errorf("instance: %w", err)
	}
	if len(env.Meta) > 0 && len(env.MetaBytes) > 0 {
		return r, errors.New("instance: both meta and metaBytes are set")
	}
	if err := validateAddr(env.Addr); err != nil {
		return r, err
	}
	r = record[M]{addr: env.Addr, raw: bytes.Clone(b)}
	mb := []byte(env.Meta)
	if len(mb) == 0 {
		mb = env.MetaBytes
	}
	if mb == nil {
		return r, nil // no meta: the zero value
	}
	meta, err := rc.meta.Decode(mb)
	if err != nil {
		return record[M]{}, fmt.Errorf("meta: %w", err)
	}
	r.meta = meta
	return r, nil
}
