package etcdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNotProcess is returned by Freeze and Thaw on a member that runs inside
// the test process: only an operating-system process can be stopped and
// continued by a signal.
var ErrNotProcess = errors.New("etcdtest: member runs in-process, not as a process (see WithBinary)")

// ErrStopped is returned by Freeze and Thaw on a member that is not
// running.
var ErrStopped = errors.New("etcdtest: member is stopped")

// processStopTimeout bounds a graceful stop of a process member: etcd's
// own shutdown hands leadership over and then waits for client streams for
// up to its request timeout (6 s with DefaultElection). A process still
// alive after that is killed.
const processStopTimeout = 15 * time.Second

// statusTimeout bounds one status request to a process member, which is
// how etcdtest learns a process member's view of the leader.
const statusTimeout = 2 * time.Second

// A process is one run of a process member's etcd binary, from start to
// exit.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process exited and its output is read
	err    error         // how it exited; set before exited closes
}

// processArgs builds the member's command line afresh for every start. Only
// flags that etcd 3.5, 3.6 and 3.7 all accept under the same name are used.
func (s *Server) processArgs() []string {
	o := s.g.opts
	client := s.clientURL()
	args := []string{
		"--name=" + s.name,
		"--data-dir=" + s.dir,
		"--listen-peer-urls=http://127.0.0.1:" + strconv.Itoa(s.listenPort),
		"--initial-advertise-peer-urls=" + s.PeerURL(),
		"--listen-client-urls=" + client.String(),
		"--advertise-client-urls=" + client.String(),
		"--initial-cluster=" + s.g.initialCluster,
		"--initial-cluster-token=etcdtest",
		"--initial-cluster-state=new",
		"--heartbeat-interval=" + strconv.FormatInt(o.tick.Milliseconds(), 10),
		"--election-timeout=" + strconv.FormatInt(o.election.Milliseconds(), 10),
		// As for in-process members: tests never survive a machine crash.
		"--unsafe-no-fsync",
		"--enable-grpc-gateway=false",
		"--logger=zap",
		"--log-outputs=stderr",
		"--log-level=info",
	}
	if o.quota != 0 {
		args = append(args, "--quota-backend-bytes="+strconv.FormatInt(o.quota, 10))
	}
	if tls := o.clientTLS; tls != nil {
		args = append(args, "--cert-file="+tls.CertFile, "--key-file="+tls.KeyFile)
		if tls.TrustedCAFile != "" {
			args = append(args, "--trusted-ca-file="+tls.TrustedCAFile)
		}
		if tls.ClientCertAuth {
			args = append(args, "--client-cert-auth")
		}
	}
	args = append(args, o.authFlags()...)
	return append(args, o.flags...)
}

// processEnv is the test's environment without etcd's own ETCD_*
// variables, which etcd reads as flags and which would make the member
// differ from what its options say.
func processEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	return env
}

// startProcess starts the member's binary and returns once the process
// listens on its client port, which etcd opens after its peer port and
// before it talks to any peer, or with an error, carrying the end of its
// log, if it exits first. The caller holds s.life or owns s exclusively.
func (s *Server) startProcess() error {
	cmd := exec.Command(s.g.opts.binary, s.processArgs()...)
	cmd.Env = processEnv()
	cmd.Dir = s.dir
	out := &lineWriter{b: s.logs}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = processAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		out.flush()
		close(p.exited)
	}()
	s.mu.Lock()
	s.proc = p
	s.frozen = false
	s.mu.Unlock()
	if tls := s.g.opts.clientTLS; tls != nil {
		s.g.mu.Lock()
		s.g.clientTLS = tls
		s.g.mu.Unlock()
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		c, err := net.DialTimeout("tcp", s.Endpoint(), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.exited:
			s.mu.Lock()
			s.proc = nil
			s.mu.Unlock()
			return s.exitError(p, "before it listened")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stopProcess(p, true)
			return fmt.Errorf("member %s did not listen on %s within %v", s.name, s.Endpoint(), readyTimeout)
		}
	}
}

// exitError describes how p exited, with the end of the member's log, where
// etcd says why; "address already in use" there makes starting retry.
func (s *Server) exitError(p *process, when string) error {
	all, _ := s.logs.tail()
	// etcd explains itself in its last error lines, but a bad flag makes
	// it print its usage after the explanation.
	var lines []string
	for _, l := range all {
		low := strings.ToLower(l)
		if strings.Contains(low, "error") || strings.Contains(low, "fatal") || strings.Contains(low, "panic") || strings.Contains(low, "flag provided") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		lines = all
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return fmt.Errorf("member %s exited %s (%v); its last error lines:\n%s", s.name, when, p.err, strings.Join(lines, "\n"))
}

// stopProcess ends p and waits until it has exited: at once with SIGKILL
// if hard, else with SIGTERM, as etcd expects from a service manager, and
// with SIGKILL if it is still alive after processStopTimeout.
func (s *Server) stopProcess(p *process, hard bool) {
	if hard {
		_ = p.cmd.Process.Kill()
	} else {
		_ = p.cmd.Process.Signal(termSignal)
		// A frozen process acts on the signal only once it runs again.
		if thawSignal != nil {
			_ = p.cmd.Process.Signal(thawSignal)
		}
	}
	select {
	case <-p.exited:
	case <-time.After(processStopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// waitProcessReady waits until the member serves a linearizable read,
// which needs a leader and the member's own entry in the cluster applied,
// the same point at which an in-process member reports itself ready, and
// learns the member's ID.
func (s *Server) waitProcessReady(p *process, deadline time.Time) error {
	for {
		// With WithAuth, making the control client authenticates, which
		// fails until the member serves: it is retried like the reads.
		cli, err := s.control()
		var resp *pb.StatusResponse
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = cli.Get(ctx, "etcdtest/ready")
			if err == nil {
				resp, err = pb.NewMaintenanceClient(cli.ActiveConnection()).Status(ctx, &pb.StatusRequest{})
			}
			cancel()
		}
		if err == nil {
			s.mu.Lock()
			s.id = resp.Header.MemberId
			s.mu.Unlock()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("member %s not ready after %v (no leader elected?): %v", s.name, readyTimeout, err)
		}
		select {
		case <-p.exited:
			return s.exitError(p, "before it was ready")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// control returns the client etcdtest itself uses to query the member,
// connected to it alone and kept for the group's life.
func (s *Server) control() (*clientv3.Client, error) {
	s.mu.Lock()
	if s.ctl != nil {
		defer s.mu.Unlock()
		return s.ctl, nil
	}
	s.mu.Unlock()
	// Made unlocked: WithAuth makes it authenticate, which waits for the
	// member.
	cli, err := s.g.newClient([]string{s.Endpoint()})
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", s.name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctl != nil {
		// Made by another caller meanwhile: keep one.
		cli.Close()
		return s.ctl, nil
	}
	s.ctl = cli
	return cli, nil
}

func (s *Server) closeControl() {
	s.mu.Lock()
	cli := s.ctl
	s.ctl = nil
	s.mu.Unlock()
	if cli != nil {
		cli.Close()
	}
}

// processLeader asks a running, unfrozen process member which member it
// believes leads (0 for none). ok is false if the member is stopped or
// frozen and so has no view to ask for.
func (s *Server) processLeader() (lead uint64, ok bool, err error) {
	s.mu.Lock()
	p, frozen := s.proc, s.frozen
	s.mu.Unlock()
	if p == nil || frozen {
		return 0, false, nil
	}
	cli, err := s.control()
	if err != nil {
		return 0, true, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	resp, err := pb.NewMaintenanceClient(cli.ActiveConnection()).Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return 0, true, err
	}
	return resp.Leader, true, nil
}

// Freeze stops the member's process with SIGSTOP, as a long garbage
// collection pause or a stalled virtual machine would: it keeps its
// sockets, so peers and clients see a member that accepts connections and
// says nothing, and if it led, the others elect a new leader after an
// election timeout. Thaw continues it. Freeze returns ErrNotProcess for an
// in-process member, ErrStopped for a stopped one, and does nothing on a
// frozen one. While frozen, the member counts as running; Cluster.Leader
// and Cluster.WaitLeader leave it out, IsLeader reports false, Stop thaws
// it to let it stop gracefully, and Kill and Restart work as usual.
func (s *Server) Freeze() error {
	return s.signalFreeze(true)
}

// Thaw continues a member that Freeze stopped, with SIGCONT. A former
// leader finds a newer term and steps down. Thaw returns ErrNotProcess for
// an in-process member, ErrStopped for a stopped one, and does nothing on a
// member that is not frozen.
func (s *Server) Thaw() error {
	return s.signalFreeze(false)
}

func (s *Server) signalFreeze(freeze bool) error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.g.opts.binary == "" {
		return ErrNotProcess
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return fmt.Errorf("%w: %s", ErrStopped, s.name)
	}
	if s.frozen == freeze {
		return nil
	}
	sig := thawSignal
	if freeze {
		sig = freezeSignal
	}
	if sig == nil {
		return fmt.Errorf("etcdtest: freezing a process is not supported on this system")
	}
	if err := s.proc.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("etcdtest: signal member %s: %w", s.name, err)
	}
	s.frozen = freeze
	return nil
}

// Frozen reports whether the member's process is stopped by Freeze.
func (s *Server) Frozen() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.frozen
}

// Binary returns the etcd executable the member runs as, or "" for a
// member that runs in-process.
func (s *Server) Binary() string { return s.g.opts.binary }

// PID returns the operating-system process ID of a running process member,
// and 0 for a stopped or in-process one.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// lineWriter hands a process's output to a log buffer one line at a time,
// as the buffer expects.
type lineWriter struct {
	b   *logBuffer
	mu  sync.Mutex
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		_, _ = w.b.Write(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// flush writes a last line that did not end in a newline.
func (w *lineWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		_, _ = w.b.Write(w.buf)
		w.buf = nil
	}
}
