package etcdkit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
)

// snapshotFormat names the layout of a snapshot file; a file of another
// format is refused, so that a later layout never gets misread.
const snapshotFormat = "etcdkit.live/1"

// snapshotTrailer starts the last line of a snapshot file, followed by the
// SHA-256 of everything before that line, in hex, and a newline.
const snapshotTrailer = "\nsha256 "

// snapshotTrailerLen is the length of that last line.
const snapshotTrailerLen = len(snapshotTrailer) + sha256.Size*2 + 1

// maxSnapshotSize bounds what is read back, so that a wrong path (a device,
// a huge unrelated file) cannot exhaust memory.
const maxSnapshotSize = 1 << 30

// snapshot is what a snapshot file holds: the state of a key or a prefix at
// one revision, as stored bytes, with the identity of what it belongs to.
type snapshot struct {
	Format string `json:"format"`
	// Kind is "key" or "prefix"; Path the etcd key or prefix, namespace
	// included; Type the Go type of the values.
	Kind string `json:"kind"`
	Path string `json:"path"`
	Type string `json:"type"`
	// Revision is the revision of the state: every entry is as the cluster
	// held it then. For an absent key, the revision at which it was absent.
	Revision int64           `json:"revision"`
	Entries  []snapshotEntry `json:"entries"`
}

// snapshotEntry is one key: its name (relative to the prefix; "" for a
// Live's key), its mod revision and its stored bytes.
type snapshotEntry struct {
	Name     string `json:"name,omitempty"`
	Revision int64  `json:"revision"`
	Value    []byte `json:"value"`
}

// snapshotID is what a snapshot must match to be used.
type snapshotID struct {
	kind, path, typ string
}

func (id snapshotID) String() string {
	return fmt.Sprintf("%s %q of %s", id.kind, id.path, id.typ)
}

// typeName names T for a snapshot's identity: its package path and name
// when it has them, its literal form otherwise.
func typeName[T any]() string {
	t := reflect.TypeFor[T]()
	if t.Name() != "" && t.PkgPath() != "" {
		return t.PkgPath() + "." + t.Name()
	}
	return t.String()
}

// errSnapshotRefused marks a snapshot file that exists but cannot be used.
var errSnapshotRefused = errors.New("snapshot refused")

// readSnapshot reads the snapshot at path. A missing file returns nil and
// no error; a file that cannot be used returns an error saying why, which
// matches errSnapshotRefused.
func readSnapshot(path string, id snapshotID) (*snapshot, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, refused(path, "unreadable: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, refused(path, "unreadable: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, refused(path, "not a regular file")
	}
	if st.Size() > maxSnapshotSize {
		return nil, refused(path, "%d bytes, more than a snapshot can hold", st.Size())
	}
	data := make([]byte, st.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, refused(path, "unreadable: %w", err)
	}
	return parseSnapshot(path, data, id)
}

// parseSnapshot checks and decodes the bytes of a snapshot file.
func parseSnapshot(path string, data []byte, id snapshotID) (*snapshot, error) {
	if len(data) < snapshotTrailerLen {
		return nil, refused(path, "truncated: %d bytes", len(data))
	}
	body, trailer := data[:len(data)-snapshotTrailerLen], data[len(data)-snapshotTrailerLen:]
	if !bytes.HasPrefix(trailer, []byte(snapshotTrailer)) || trailer[len(trailer)-1] != '\n' {
		return nil, refused(path, "truncated or corrupt: no checksum line")
	}
	want, err := hex.DecodeString(string(trailer[len(snapshotTrailer) : len(trailer)-1]))
	if err != nil {
		return nil, refused(path, "corrupt checksum line")
	}
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], want) {
		return nil, refused(path, "checksum mismatch: the file is corrupt or truncated")
	}
	var s snapshot
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, refused(path, "undecodable: %w", err)
	}
	switch {
	case s.Format != snapshotFormat:
		return nil, refused(path, "format %q, want %q", s.Format, snapshotFormat)
	case s.Kind != id.kind || s.Path != id.path || s.Type != id.typ:
		return nil, refused(path, "written for %s, not for %v", snapshotID{s.Kind, s.Path, s.Type}, id)
	case s.Revision <= 0:
		return nil, refused(path, "revision %d", s.Revision)
	}
	for _, e := range s.Entries {
		if e.Revision <= 0 || e.Revision > s.Revision {
			return nil, refused(path, "entry %q has revision %d, snapshot %d", e.Name, e.Revision, s.Revision)
		}
	}
	return &s, nil
}

func refused(path, format string, args ...any) error {
	return fmt.Errorf("etcdkit: live: snapshot %s: %w: %w", path, errSnapshotRefused, fmt.Errorf(format, args...))
}

// encode returns the bytes of the snapshot file.
func (s *snapshot) encode() ([]byte, error) {
	body, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(body)
	out := make([]byte, 0, len(body)+snapshotTrailerLen)
	out = append(out, body...)
	out = append(out, snapshotTrailer...)
	out = hex.AppendEncode(out, sum[:])
	return append(out, '\n'), nil
}

// writeSnapshot replaces the file at path with s atomically: a reader (or a
// crash) sees the old file or the new one, never a mix. The new file is
// written and synced beside the old one, renamed over it, and the directory
// is synced so that the rename itself survives a power loss.
func writeSnapshot(path string, s *snapshot) (err error) {
	data, err := s.encode()
	if err != nil {
		return fmt.Errorf("etcdkit: live: snapshot %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("etcdkit: live: snapshot %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
			err = fmt.Errorf("etcdkit: live: snapshot %s: %w", path, err)
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return err
	}
	if err = tmp.Sync(); err != nil {
		return err
	}
	if err = tmp.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
