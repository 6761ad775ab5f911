package etcdkit_test

import (
	"errors"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/etcdkit/etcdkit"
)

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "a/b", "", ".", "..", "a/../b", "/a", "a/", "a//b", "x\x00", "\xff", "ns/svc/instance-1", "..a", "é/ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := etcdkit.ValidateName(name)
		if err != nil {
			if !errors.Is(err, etcdkit.ErrInvalidName) {
				t.Fatalf("got %v, want an ErrInvalidName", err)
			}
			return
		}
		// An accepted name can never leave or alias its namespace.
		if !utf8.ValidString(name) {
			t.Fatalf("accepted invalid UTF-8 %q", name)
		}
		for _, r := range name {
			if unicode.IsControl(r) {
				t.Fatalf("accepted control character in %q", name)
			}
		}
		for _, seg := range strings.Split(name, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("accepted segment %q in %q", seg, name)
			}
		}
	})
}

func FuzzCodecDecode(f *testing.F) {
	for _, s := range []string{`{"max_conns":3}`, `{`, `null`, `"str"`, "\xff\xfe", "", "\x0a\x03abc", `[1,2]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if v, err := etcdkit.JSON[limits]().Decode(data); err == nil {
			b, err := etcdkit.JSON[limits]().Encode(v)
			if err != nil {
				t.Fatalf("re-encode: %v", err)
			}
			if v2, err := etcdkit.JSON[limits]().Decode(b); err != nil || v2 != v {
				t.Fatalf("round trip: got %v, %v; want %v", v2, err, v)
			}
		}
		if s, err := etcdkit.String().Decode(data); err == nil && s != string(data) {
			t.Fatalf("string: got %q, want %q", s, data)
		}
		if b, err := etcdkit.Bytes().Decode(data); err != nil || string(b) != string(data) {
			t.Fatalf("bytes: got %q, %v; want %q", b, err, data)
		}
		if m, err := etcdkit.Proto[*structpb.Struct]().Decode(data); err == nil {
			b, err := etcdkit.Proto[*structpb.Struct]().Encode(m)
			if err != nil {
				t.Fatalf("proto re-encode: %v", err)
			}
			m2, err := etcdkit.Proto[*structpb.Struct]().Decode(b)
			if err != nil || !proto.Equal(m, m2) {
				t.Fatalf("proto round trip: %v", err)
			}
		}
	})
}
