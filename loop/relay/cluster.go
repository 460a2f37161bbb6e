package relay

// Relay topics across replicas (loop/span.go, package cluster). Alone,
// none of this sends anything: Hub.Ask answers at once, Tell does nothing.
//
//   - Topics span: a topic is a channel of a spanning kind whose policy
//     sends members' payloads to members, so a writer's message crosses the
//     bus once to every replica with clients of the topic, which hands it
//     to its readers (topic.Replay counts them).
//   - Codes carry the node number of the replica that issued them in their
//     first three hex digits. A replica asked to redeem another's code asks
//     that replica (redeemTopic), which uses it up as if it were redeemed
//     there: once, within its lifetime, wherever it is presented.
//   - Denies and allows are verdicts ordered by when they were decided
//     (verdict.newer). The replica whose API decided one applies it, writes
//     it, and asks every other replica to apply it (verdictTopic) before it
//     answers; they close the booking's connections and void its codes at
//     once and write it to their own store (storeWriter). When a replica
//     says hello (it started, or came back after NATS was away) every other
//     one sends it its verdicts and gets its verdicts back (verdictsTopic):
//     a replica that missed a decision learns it then.
//   - GET /status and the deny and allow lists answer for every replica
//     (Hub.GatherParts).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/placeos-gnet/dispatch/loop"
)

// Topics of the relay's questions and messages between replicas.
const (
	redeemTopic   = "relay.redeem"   // Ask the issuer: the code, answered with appendRedeemed
	verdictTopic  = "relay.verdict"  // Ask every replica: verdicts to apply, answered once applied
	verdictsTopic = "relay.verdicts" // Tell: a replica's verdicts, on hello (resynchronisation)
	statusTopic   = "relay.status"   // Gather: this replica's connections, JSON
	deniedTopic   = "relay.denied"   // Gather: this replica's deny list, JSON
	allowedTopic  = "relay.allowed"  // Gather: this replica's allow list, JSON
)

// maxVerdictsMessage bounds one message of verdicts; a longer list goes in
// several.
const maxVerdictsMessage = 48 << 10

// gatherWait bounds how long an access API request waits for the other
// replicas (the bus gives up on them well before).
const gatherWait = 5 * time.Second

// Outcomes of redeeming another replica's code, for relay_remote_codes_total.
const (
	remoteRedeemed = iota
	remoteRefused
	remoteUnreachable
	remoteCodeOutcomes
)

var remoteCodeOutcomeNames = [remoteCodeOutcomes]string{"redeemed", "refused", "unreachable"}

// Outcomes of verdicts heard from other replicas, for relay_replica_verdicts_total.
const (
	verdictApplied = iota
	verdictStale
	verdictMalformed
	replicaVerdictOutcomes
)

var replicaVerdictOutcomeNames = [replicaVerdictOutcomes]string{"applied", "stale", "malformed"}

// startCluster makes topics span and registers what the relay answers and
// hears from other replicas; alone it changes nothing.
func (k *Kind) startCluster(h *loop.Hub) {
	h.SpanKind(KindName, nil)
	h.OnAsk(redeemTopic, k.redeemFor)
	h.OnAsk(verdictTopic, k.verdictsAsked)
	h.OnTell(verdictsTopic, k.verdictsTold)
	h.OnReplica(func(node int) { k.sendVerdicts(node, verdictsAnswerBack) })
	h.Answer(statusTopic, k.statusJSON)
	h.Answer(deniedTopic, func() []byte { return jsonKeys(k.denied) })
	h.Answer(allowedTopic, func() []byte { return jsonKeys(k.allowed) })
	if h.Clustered() {
		k.codePrefix = fmt.Sprintf("%03x", h.Node())
	}
}

// newCode is a random UUID; in a cluster its first three hex digits are
// this replica's node number, so that any replica knows whom to ask.
func (k *Kind) newCode() string {
	code := uuid.NewString()
	if k.codePrefix != "" {
		code = k.codePrefix + code[len(k.codePrefix):]
	}
	return code
}

// codeNode is the node that issued code, in a cluster.
func (k *Kind) codeNode(code string) (int, bool) {
	if k.codePrefix == "" || len(code) != 36 {
		return 0, false
	}
	n, err := strconv.ParseUint(code[:3], 16, 16)
	if err != nil || n > loop.MaxNode {
		return 0, false
	}
	return int(n), true
}

// redeemElsewhere asks the replica that issued code to redeem it, and
// admits the connection (or refuses it) with its answer. The request waits
// on the loop meanwhile (Request.Later).
func (k *Kind) redeemElsewhere(r *loop.Request, tp Topic, code string, node int) {
	r.Later()
	k.hub.Ask(node, redeemTopic, []byte(code), func(replies []loop.Reply) {
		if len(replies) != 1 || !replies[0].Answered {
			k.c.remoteCodes[remoteUnreachable]++
			k.refuseRequest(r, http.StatusServiceUnavailable,
				"the replica that issued the code did not answer: ask for a new code", "issuer_unreachable")
			return
		}
		outcome, g, err := parseRedeemed(replies[0].Data)
		if err != nil {
			outcome = redeemUnknown // it does not serve the relay, or speaks another language
		}
		if outcome == redeemOK {
			k.c.remoteCodes[remoteRedeemed]++
		} else {
			k.c.remoteCodes[remoteRefused]++
		}
		k.admit(r, tp, outcome, g)
	})
}

// redeemFor answers another replica that was given a code issued here: it
// is used up now, as if presented here.
func (k *Kind) redeemFor(_ int, question []byte) []byte {
	outcome, g := k.takeCode(string(question))
	return appendRedeemed(nil, outcome, g)
}

// decide makes the verdict of an admin request, on the loop: decided now,
// and in any case after the booking's latest verdict known here, so that a
// later request wins even against a replica whose clock runs ahead.
func (k *Kind) decide(deny bool, bid string, exp time.Time) verdict {
	v := verdict{bid: bid, deny: deny, exp: exp, at: time.Now().UnixNano()}
	if cur, ok := k.verdicts[bid]; ok && v.at <= cur.at {
		v.at = cur.at + 1
	}
	return v
}

// apply makes v the booking's verdict unless a newer one is known: a deny
// voids its codes and closes its connections here. It reports whether v
// was applied.
func (k *Kind) apply(v *verdict) bool {
	if cur, ok := k.verdicts[v.bid]; ok && !v.newer(&cur) {
		return false
	}
	k.verdicts[v.bid] = *v
	if v.deny {
		k.deny(v.bid, v.exp)
	} else {
		k.allow(v.bid, v.exp)
	}
	return true
}

// hear applies a verdict from another replica and queues it for the store.
func (k *Kind) hear(v *verdict) {
	if !v.exp.After(k.hub.Now()) {
		return
	}
	if !k.apply(v) {
		k.c.replicaVerdicts[verdictStale]++
		return
	}
	k.c.replicaVerdicts[verdictApplied]++
	if k.writer != nil && !k.writer.push(*v) {
		k.storeFailed(errors.New("write queue full"))
	}
}

// verdictsAsked applies verdicts another replica's admin API decided and
// answers once they are applied here.
func (k *Kind) verdictsAsked(_ int, question []byte) []byte {
	if _, ok := k.hearVerdicts(question); !ok {
		return nil
	}
	return []byte{1}
}

// verdictsTold applies a replica's verdicts sent on hello, and sends ours
// back when it asks.
func (k *Kind) verdictsTold(from int, data []byte) {
	if flags, ok := k.hearVerdicts(data); ok && flags&verdictsAnswerBack != 0 {
		k.sendVerdicts(from, 0)
	}
}

// hearVerdicts applies a list of verdicts from another replica.
func (k *Kind) hearVerdicts(data []byte) (uint8, bool) {
	var heard []verdict
	flags, err := parseVerdicts(data, func(v verdict) { heard = append(heard, v) })
	if err != nil {
		k.c.replicaVerdicts[verdictMalformed]++
		k.logger.Warn("relay: malformed deny-list message from another replica, ignored")
		return 0, false
	}
	for i := range heard {
		k.hear(&heard[i])
	}
	return flags, true
}

// sendVerdicts tells replica node every live verdict known here, in as
// many messages as it takes; flags go with the first.
func (k *Kind) sendVerdicts(node int, flags uint8) {
	now := k.hub.Now()
	msg := appendVerdicts(nil, flags)
	for _, v := range k.verdicts {
		if !v.exp.After(now) {
			continue
		}
		if len(msg) > maxVerdictsMessage {
			k.hub.Tell(node, verdictsTopic, msg)
			msg = appendVerdicts(msg[:0], 0)
		}
		msg = appendVerdict(msg, &v)
	}
	k.hub.Tell(node, verdictsTopic, msg)
}

// spread asks every other replica to apply v and waits, off the loop,
// until they have (or the bus gave up on them); those that did not answer
// learn it when they next say hello.
func (k *Kind) spread(v *verdict) {
	question := appendVerdict(appendVerdicts(nil, 0), v)
	done := make(chan []loop.Reply, 1)
	if k.srv.Do(func(h *loop.Hub) {
		h.Ask(loop.AllReplicas, verdictTopic, question, func(r []loop.Reply) { done <- r })
	}) != nil {
		return
	}
	select {
	case replies := <-done:
		var missing []int
		for _, r := range replies {
			if !r.Answered || len(r.Data) == 0 {
				missing = append(missing, r.Node)
			}
		}
		if len(missing) > 0 {
			k.log().Warn("relay deny list: not every replica confirmed the change; they learn it when they next resynchronise",
				"booking", v.bid, "deny", v.deny, "replicas", fmt.Sprint(missing))
		}
	case <-time.After(gatherWait):
	}
}

// gather collects every replica's answer to topic, off the loop.
func (k *Kind) gather(topic string) ([][]byte, error) {
	done := make(chan [][]byte, 1)
	if err := k.srv.Do(func(h *loop.Hub) {
		h.GatherParts(topic, func(parts [][]byte) { done <- parts })
	}); err != nil {
		return nil, err
	}
	select {
	case parts := <-done:
		return parts, nil
	case <-time.After(gatherWait):
		return nil, errors.New("the replicas did not answer in time")
	}
}

// statusJSON is this replica's connections, for GET /status.
func (k *Kind) statusJSON() []byte {
	reports := make([]Report, 0, len(k.conns))
	for c := range k.conns {
		role := "client"
		if c.ws.Class() == k.watchers {
			role = "watcher"
		}
		reports = append(reports, Report{Topic: c.topic, CanRead: c.read, CanWrite: c.write, Scopes: c.scopes,
			BookingID: c.bid, Connected: c.since.UTC().Format(time.RFC3339Nano), ExpiresAt: c.exp.UTC().Format(time.RFC3339),
			RemoteAddr: c.ws.Peer, ForwardedFor: c.forwarded, UserAgent: c.agent, Role: role})
	}
	b, _ := json.Marshal(reports)
	return b
}

// jsonKeys is a list's keys as a JSON array.
func jsonKeys(m map[string]time.Time) []byte {
	b, _ := json.Marshal(sortedKeys(m))
	return b
}

// mergeLists is the union of the replicas' lists, sorted.
func mergeLists(parts [][]byte) []string {
	all := []string{}
	for _, p := range parts {
		var list []string
		if json.Unmarshal(p, &list) == nil {
			all = append(all, list...)
		}
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// mergeReports is every replica's connections.
func mergeReports(parts [][]byte) []Report {
	all := []Report{}
	for _, p := range parts {
		var list []Report
		if json.Unmarshal(p, &list) == nil {
			all = append(all, list...)
		}
	}
	return all
}

// storeFailed logs a failed write of the deny list once per episode.
func (k *Kind) storeFailed(err error) {
	if k.writer != nil {
		k.writer.failures.Add(1)
	}
	if n := k.storeLog.due(time.Now()); n > 0 {
		k.logger.Error("relay deny list: cannot write a verdict heard from another replica to the store", "err", err, "count", n)
	}
}

// storeWriter writes the verdicts heard from other replicas to the store,
// off the loop, in the order heard; its queue is bounded (a full one
// loses the write, counted: the verdict still holds in memory, and the
// next resynchronisation brings it again).
type storeWriter struct {
	mu       sync.Mutex
	queue    []verdict
	started  bool
	closed   bool
	wake     chan struct{}
	done     chan struct{}
	failures atomic.Uint64
}

// maxQueuedVerdicts bounds the writer's queue.
const maxQueuedVerdicts = 4096

func newStoreWriter() *storeWriter {
	return &storeWriter{wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// push queues v; false when the queue is full or closed.
func (w *storeWriter) push(v verdict) bool {
	w.mu.Lock()
	ok := !w.closed && len(w.queue) < maxQueuedVerdicts
	if ok {
		w.queue = append(w.queue, v)
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return ok
}

// start runs the writer on a goroutine of its own.
func (w *storeWriter) start(st *store, failed func(error)) {
	w.mu.Lock()
	w.started = true
	w.mu.Unlock()
	go w.run(st, failed)
}

// run writes until finish.
func (w *storeWriter) run(st *store, failed func(error)) {
	defer close(w.done)
	var batch []verdict
	for {
		w.mu.Lock()
		batch = append(batch[:0], w.queue...)
		clear(w.queue)
		w.queue = w.queue[:0]
		closed := w.closed
		w.mu.Unlock()
		for i := range batch {
			if _, err := st.put(&batch[i], time.Now()); err != nil {
				failed(err)
			}
		}
		if len(batch) == 0 {
			if closed {
				return
			}
			<-w.wake
		}
	}
}

// finish lets the writer write what is queued and stop, waiting at most d;
// it reports whether it stopped.
func (w *storeWriter) finish(d time.Duration) bool {
	w.mu.Lock()
	w.closed = true
	started := w.started
	w.mu.Unlock()
	if !started {
		return true
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
	select {
	case <-w.done:
		return true
	case <-time.After(d):
		return false
	}
}

var _ loop.Replayer = (*topic)(nil)
