package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// RootUser and RootPassword are the credentials of the user WithAuth
// creates, holding etcd's root role. Server.Client and Cluster.Client
// authenticate with them.
const (
	RootUser     = "root"
	RootPassword = "etcdtest-root"
)

// WithAuth turns etcd authentication on once the members are ready: it adds
// RootUser with RootPassword and etcd's root role, then enables auth, so
// that from then on every client must authenticate. The clients etcdtest
// makes (Server.Client, Cluster.Client, its own for Compact, MoveLeader and
// process members' status) do so as RootUser; as etcd's clientv3 fetches the
// token when it is made, they then need a running member to be made. Add
// users limited to a part of the keyspace with Server.AddUser or
// Cluster.AddUser. Passwords are hashed with bcrypt's minimum cost, so that
// authenticating costs little on a busy machine. The auth state is stored
// in the members' data and survives Restart. Simple tokens, etcd's default,
// live in a member's memory: a restarted member refuses the tokens it handed
// out before, and clients authenticate again.
func WithAuth() Option {
	return optionFunc(func(o *options) { o.auth = true })
}

// minBcryptCost is bcrypt's minimum cost, which WithAuth gives members
// instead of etcd's default of 10: a test does not need the hash to resist
// cracking, and every authentication costs a hash.
const minBcryptCost = 4

// authFlags returns the process flags WithAuth needs, which etcd 3.5, 3.6
// and 3.7 accept alike.
func (o *options) authFlags() []string {
	if !o.auth {
		return nil
	}
	return []string{"--bcrypt-cost=" + strconv.Itoa(minBcryptCost)}
}

// enableAuth adds RootUser and turns auth on, through a client without
// credentials, then drops the control clients made without them.
func (g *group) enableAuth() error {
	cli, err := g.newClient(g.directEndpoints())
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if _, err := cli.RoleAdd(ctx, "root"); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("add role root: %w", err)
	}
	if _, err := cli.UserAdd(ctx, RootUser, RootPassword); err != nil {
		return fmt.Errorf("add user %s: %w", RootUser, err)
	}
	if _, err := cli.UserGrantRole(ctx, RootUser, "root"); err != nil {
		return fmt.Errorf("grant role root to %s: %w", RootUser, err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enable auth: %w", err)
	}
	g.mu.Lock()
	g.authOn = true
	g.mu.Unlock()
	for _, m := range g.members {
		m.closeControl()
	}
	return nil
}

// credentials returns the user and password etcdtest's own clients use:
// none until WithAuth has turned auth on.
func (g *group) credentials() (user, password string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.authOn {
		return "", ""
	}
	return RootUser, RootPassword
}

func (g *group) directEndpoints() []string {
	eps := make([]string, len(g.members))
	for i, m := range g.members {
		eps[i] = m.Endpoint()
	}
	return eps
}

// AddUser adds user name with password and a role of the same name that may
// read and write the keys starting with prefix, and nothing else ("" is
// refused: it would be every key). The user can still do what etcd allows
// every authenticated user: grant and keep alive leases, list members,
// watch and read within its prefix. It fails the test unless the cluster was
// started WithAuth and the user is new. It is the same as Cluster.AddUser.
func (s *Server) AddUser(t testing.TB, name, password, prefix string) {
	t.Helper()
	s.g.addUser(t, name, password, prefix)
}

// AddUser adds user name with password and a role of the same name that may
// read and write the keys starting with prefix, and nothing else; see
// Server.AddUser.
func (c *Cluster) AddUser(t testing.TB, name, password, prefix string) {
	t.Helper()
	c.g.addUser(t, name, password, prefix)
}

func (g *group) addUser(t testing.TB, name, password, prefix string) {
	t.Helper()
	if !g.opts.auth {
		t.Fatalf("etcdtest: add user %s: the cluster was not started WithAuth", name)
	}
	if prefix == "" {
		t.Fatalf("etcdtest: add user %s: empty prefix, which would be every key", name)
	}
	cli := g.client(t, g.directEndpoints())
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	steps := []struct {
		what string
		do   func() error
	}{
		{"add role", func() error { _, err := cli.RoleAdd(ctx, name); return err }},
		{"grant the prefix", func() error {
			_, err := cli.RoleGrantPermission(ctx, name, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"add user", func() error { _, err := cli.UserAdd(ctx, name, password); return err }},
		{"grant the role", func() error { _, err := cli.UserGrantRole(ctx, name, name); return err }},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("etcdtest: add user %s: %s: %v", name, st.what, err)
		}
	}
}
