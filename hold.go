package etcdkit

import "fmt"

// holdKind is what sets an Election, a Mutex and a Semaphore apart: the
// three are one machinery (see Election), and everything that differs
// between them, in behaviour or in messages, is a field here. The package
// has one value per kind, never compared by name.
type holdKind struct {
	// name names the contest in errors and log fields: "election",
	// "mutex" or "semaphore". HeldError.Kind carries it.
	name string
	// noun names what a holder holds, in messages: "leadership",
	// "mutex" or "permit".
	noun string
	// verb names the call that acquires a holding, in errors:
	// "campaign", "lock" or "acquire".
	verb string
	// keyWord names the holder's key, in messages: "leader", "lock" or
	// "permit".
	keyWord string
	// root is the reserved name, under the client's namespace, below which
	// the candidate keys live.
	root string
	// lost is the sentinel a holding that ends, or may have, wraps.
	lost error
	// resigned is the cause of a holding ended by Resign (Unlock, Release)
	// or Close.
	resigned error
	// shared says that the holders of one contest keep their keys under
	// one lease (see leaseShare); otherwise each candidate has a session
	// of its own.
	shared bool
	// leadershipChange says that a won holding counts as a change of
	// leader (MetricLeadershipChanges): locks and permits are not
	// leaderships, and the metric is about elections.
	leadershipChange bool
	// busy is the sentinel a try that found the holding taken matches
	// (see HeldError), and busyText what its message says.
	busy     error
	busyText string
}

var (
	electionKind = &holdKind{name: "election", noun: "leadership", verb: "campaign", keyWord: "leader",
		root: electionRoot, lost: ErrNotLeader, resigned: errResigned, leadershipChange: true}
	mutexKind = &holdKind{name: "mutex", noun: "mutex", verb: "lock", keyWord: "lock",
		root: mutexRoot, lost: ErrNotHeld, resigned: fmt.Errorf("%w: lock released", ErrClosed), shared: true,
		busy: ErrLocked, busyText: "locked"}
	semaphoreKind = &holdKind{name: "semaphore", noun: "permit", verb: "acquire", keyWord: "permit",
		root: semaphoreRoot, lost: ErrNotHeld, resigned: fmt.Errorf("%w: permit released", ErrClosed), shared: true,
		busy: ErrNoPermit, busyText: "no permit available"}
)

// heldKind returns the kind a HeldError's Kind names: a Semaphore's, or
// else a Mutex's.
func heldKind(name string) *holdKind {
	if name == semaphoreKind.name {
		return semaphoreKind
	}
	return mutexKind
}
