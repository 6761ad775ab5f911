package robustness

import (
	"fmt"
	"time"

	"github.com/etcdkit/etcdkit/etcdtest"
)

// raftPoll is how often the raft log polls the members.
const raftPoll = 25 * time.Millisecond

// RaftChange is a change of a member's raft term or leader, as the raft log
// saw it: the cluster's own account of its elections, which a loaded
// machine can make churn although no fault asked for one.
type RaftChange struct {
	At time.Duration
	// Member is the member's index; Term its raft term; Leader the index
	// of the member it follows, -1 for none.
	Member, Term, Leader int
}

// String formats the change, e.g. "m1 term 7, leader m2".
func (c RaftChange) String() string {
	lead := "no leader"
	if c.Leader >= 0 {
		lead = fmt.Sprintf("leader m%d", c.Leader)
	}
	return fmt.Sprintf("m%d term %d, %s", c.Member, c.Term, lead)
}

// raftLog records the terms and leaders of a cluster's in-process members
// while a schedule runs (process members, which it cannot read without a
// request, are left out).
type raftLog struct {
	rec     *Recorder
	members []*etcdtest.Server
	stop    chan struct{}
	done    chan struct{}
	changes []RaftChange
}

func startRaftLog(rec *Recorder, members []*etcdtest.Server) *raftLog {
	l := &raftLog{rec: rec, members: members, stop: make(chan struct{}), done: make(chan struct{})}
	go l.run()
	return l
}

func (l *raftLog) run() {
	defer close(l.done)
	ids := map[uint64]int{}
	for i, m := range l.members {
		ids[m.ID()] = i
	}
	last := make([]RaftChange, len(l.members))
	t := time.NewTicker(raftPoll)
	defer t.Stop()
	for {
		for i, m := range l.members {
			e := m.Etcd()
			if e == nil {
				continue
			}
			c := RaftChange{Member: i, Term: int(e.Server.Term()), Leader: -1}
			if j, ok := ids[e.Server.Lead()]; ok {
				c.Leader = j
			}
			if c.Term != last[i].Term || c.Leader != last[i].Leader {
				c.At = l.rec.Now()
				l.changes = append(l.changes, c)
				last[i] = c
			}
		}
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
	}
}

// Stop stops the log and returns the changes it saw. It is idempotent.
func (l *raftLog) Stop() []RaftChange {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
	return l.changes
}
