package etcdkit

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxNameLen bounds a name so that a key, with its namespace, stays far below
// etcd's request size limit.
const maxNameLen = 4096

// validateName checks a key, prefix or namespace name. Names are made of
// segments separated by "/"; every segment must be non-empty, must not be "."
// or "..", and must not hold control characters, so that no name can escape
// its namespace or alias another name.
// checkHandle validates what the constructor ctor of a named handle was
// given: a client, a codec (codecNil says it is missing) and a valid name.
func checkHandle(c *Client, ctor, name string, codecNil bool) error {
	switch {
	case c == nil:
		return fmt.Errorf("etcdkit: %s: nil client", ctor)
	case codecNil:
		return fmt.Errorf("etcdkit: %s %q: nil codec", ctor, name)
	}
	return validateName(name)
}

func validateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidName)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: name longer than %d bytes", ErrInvalidName, maxNameLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w %q: not valid UTF-8", ErrInvalidName, name)
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return fmt.Errorf("%w %q: control character %U", ErrInvalidName, name, r)
		}
	}
	for seg := range strings.SplitSeq(name, "/") {
		switch seg {
		case "":
			return fmt.Errorf("%w %q: empty segment (leading, trailing or double \"/\")", ErrInvalidName, name)
		case ".", "..":
			return fmt.Errorf("%w %q: %q segment", ErrInvalidName, name, seg)
		}
	}
	return nil
}

// joinName joins a parent name and a child name with "/".
func joinName(parent, child string) string {
	if parent == "" {
		return child
	}
	return parent + "/" + child
}
