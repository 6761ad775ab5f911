package etcdkit_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/etcdkit/etcdkit"
	"github.com/etcdkit/etcdkit/etcdtest"
)

func TestPrefixList(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "list")
	ctx := testContext(t, time.Minute)
	svc := etcdkit.NewPrefix(c, "svc", etcdkit.JSON[int]())

	entries, rev, err := svc.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, entries)
	assert.Positive(t, rev)

	for i, name := range []string{"b", "a", "c/d", "c"} {
		_, err := svc.Key(name).Put(ctx, i)
		require.NoError(t, err)
	}
	// Neighbours that share the prefix's bytes but not its boundary.
	_, err = etcdkit.NewKey(c, "svc2/x", etcdkit.JSON[int]()).Put(ctx, 99)
	require.NoError(t, err)
	_, err = etcdkit.NewKey(c, "svc", etcdkit.JSON[int]()).Put(ctx, 98)
	require.NoError(t, err)
	lastRev, err := etcdkit.NewKey(c, "svcx", etcdkit.JSON[int]()).Put(ctx, 97)
	require.NoError(t, err)

	entries, rev, err = svc.List(ctx)
	require.NoError(t, err)
	assert.Equal(t, lastRev, rev, "List returns the read revision")
	var names []string
	var values []int
	for _, e := range entries {
		names = append(names, e.Name)
		values = append(values, e.Data)
	}
	assert.Equal(t, []string{"a", "b", "c", "c/d"}, names)
	assert.Equal(t, []int{1, 0, 3, 2}, values)

	// Key handles made from the prefix are ordinary keys.
	v, err := etcdkit.NewKey(c, "svc/c/d", etcdkit.JSON[int]()).Get(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, v.Data)
	assert.Equal(t, "svc/c/d", svc.Key("c/d").Name())
}

func TestPrefixListPaging(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "paging")
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)
	t.Cleanup(etcdkit.SetListPageSize(7))

	const n = 50
	p := etcdkit.NewPrefix(c, "many", etcdkit.String())
	for i := range n {
		_, err := p.Key(fmt.Sprintf("k%03d", i)).Put(ctx, fmt.Sprint(i))
		require.NoError(t, err)
	}
	entries, rev, err := p.List(ctx)
	require.NoError(t, err)
	require.Len(t, entries, n)
	for i, e := range entries {
		assert.Equal(t, fmt.Sprintf("k%03d", i), e.Name)
		assert.Equal(t, fmt.Sprint(i), e.Data)
	}

	// All pages are read at the first page's revision: a key added after
	// that revision is not in an old listing even if it sorts last.
	_, err = raw.Put(ctx, "paging/many/k999", "late")
	require.NoError(t, err)
	again, rev2, err := p.List(ctx)
	require.NoError(t, err)
	assert.Len(t, again, n+1)
	assert.Greater(t, rev2, rev)
}

func TestPrefixListDecodeErrors(t *testing.T) {
	srv := etcdtest.Start(t)
	c := testClient(t, []string{srv.Endpoint()}, "mixed")
	raw := srv.Client(t)
	ctx := testContext(t, time.Minute)
	p := etcdkit.NewPrefix(c, "cfg", etcdkit.JSON[limits]())

	_, err := p.Key("good1").Put(ctx, limits{MaxConns: 1})
	require.NoError(t, err)
	_, err = raw.Put(ctx, "mixed/cfg/bad1", "not json")
	require.NoError(t, err)
	_, err = p.Key("good2").Put(ctx, limits{MaxConns: 2})
	require.NoError(t, err)
	_, err = raw.Put(ctx, "mixed/cfg/bad2", "{")
	require.NoError(t, err)

	entries, rev, err := p.List(ctx)
	require.Error(t, err)
	assert.Positive(t, rev)
	require.Len(t, entries, 2, "the good entries still come back")
	assert.Equal(t, "good1", entries[0].Name)
	assert.Equal(t, "good2", entries[1].Name)

	var bad []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var de *etcdkit.DecodeError
		require.True(t, errors.As(e, &de))
		bad = append(bad, de.Key)
	}
	assert.Equal(t, []string{"cfg/bad1", "cfg/bad2"}, bad)
}
