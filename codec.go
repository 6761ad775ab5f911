package etcdkit

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
)

// Codec turns values of type T into the bytes stored in etcd and back.
// [JSON], [String], [Bytes] and [Proto] are provided.
// Implementations must be safe for concurrent use and must not retain or
// modify the slice passed to Decode after it returns.
type Codec[T any] interface {
	Encode(T) ([]byte, error)
	Decode([]byte) (T, error)
}

// JSON returns a Codec that stores T as JSON (encoding/json). Decode rejects
// trailing data after the JSON value.
func JSON[T any]() Codec[T] { return jsonCodec[T]{} }

type jsonCodec[T any] struct{}

func (jsonCodec[T]) Encode(v T) ([]byte, error) { return json.Marshal(v) }

func (jsonCodec[T]) Decode(b []byte) (T, error) {
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("json: %w", err)
	}
	return v, nil
}

// String returns a Codec that stores a string as its bytes. Decode rejects
// bytes that are not valid UTF-8.
func String() Codec[string] { return stringCodec{} }

type stringCodec struct{}

func (stringCodec) Encode(v string) ([]byte, error) { return []byte(v), nil }

func (stringCodec) Decode(b []byte) (string, error) {
	if !utf8.Valid(b) {
		return "", errors.New("string: invalid UTF-8")
	}
	return string(b), nil
}

// Bytes returns a Codec that stores a byte slice as it is. Decode returns a
// copy, so callers may keep and modify it.
func Bytes() Codec[[]byte] { return bytesCodec{} }

type bytesCodec struct{}

func (bytesCodec) Encode(v []byte) ([]byte, error) { return v, nil }

func (bytesCodec) Decode(b []byte) ([]byte, error) { return append([]byte{}, b...), nil }

// Proto returns a Codec that stores a protocol buffer message in its binary
// wire format. T is the message's pointer type, for example *pb.Config.
func Proto[T proto.Message]() Codec[T] { return protoCodec[T]{} }

type protoCodec[T proto.Message] struct{}

func (protoCodec[T]) Encode(v T) ([]byte, error) {
	b, err := proto.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("proto: %w", err)
	}
	return b, nil
}

func (protoCodec[T]) Decode(b []byte) (T, error) {
	var zero T
	// A typed nil pointer still knows its message type, which lets us make a
	// fresh message without reflection on T.
	v, ok := zero.ProtoReflect().Type().New().Interface().(T)
	if !ok {
		return zero, fmt.Errorf("proto: cannot make a %T", zero)
	}
	if err := proto.Unmarshal(b, v); err != nil {
		return zero, fmt.Errorf("proto: %w", err)
	}
	return v, nil
}
