// ClientSession: one client connection. It frames requests, routes each one, and keeps the
// replies in request order with a queue of slots: a slot per request, filled by whichever
// backend answers, the completed prefix flushed to the client. It also owns the session
// state (auth, name, pinned dedicated connection) and the per-client limits.
#pragma once

#include <uv.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/buffer.h"
#include "common/resp_parser.h"
#include "common/ring.h"
#include "config/config.h"
#include "proxy/connection_class.h"
#include "proxy/read_your_writes.h"
#include "proxy/router.h"
#include "proxy/tls.h"

namespace kp {

class Worker;
class Backend;
class BackendConn;
class BackendGroup;
struct Endpoint;

// Whether a new client may send commands without AUTH: no requirepass, and in passthrough
// mode only when the proxy's own backend connections carry no credentials (otherwise an
// unauthenticated client would act with the proxy's rights).
inline bool NeedsNoAuth(const Config& c) {
  return c.requirepass.empty() && !(c.auth_passthrough && !c.backend_password.empty());
}

// A request split over shards (MGET, DEL... across slots; DBSIZE, KEYS, SCAN over every
// shard): each part goes as a request of its own, and the parts' replies are merged into the
// one the client gets, in its order.
struct FanOut {
  enum class Merge : uint8_t {
    kValues,      // MGET: each part's array elements back at their keys' positions
    kAllOk,       // MSET, FLUSHALL, SCRIPT LOAD...: the first part's reply if none failed
    kSum,         // DEL, EXISTS, DBSIZE...: the integers added up
    kConcat,      // KEYS: the arrays joined
    kFirstValue,  // RANDOMKEY: the first part's reply that is not null
    kScan,        // SCAN: one shard's page, its cursor rewritten to name the shard
    kAnyOk,       // SCRIPT KILL / FUNCTION KILL: +OK if a shard had a script to stop
  };
  Merge merge = Merge::kAllOk;
  uint32_t pending = 0;
  std::vector<std::vector<uint32_t>> positions;  // kValues: per part, its keys' positions
  std::vector<std::string> values;               // kValues: the elements by position
  int64_t sum = 0;
  size_t count = 0;
  std::string concat;                // kConcat: elements' bytes
  std::vector<std::string> replies;  // kAllOk / kFirstValue / kScan: by part
  std::string error;                 // the first error a part got (its bytes)
  bool any_ok = false;               // kAnyOk: a part succeeded
  uint16_t scan_group = 0;           // kScan: the shard this page came from
};

class ClientSession {
 public:
  ClientSession(Worker* worker, uint64_t id);
  ClientSession(const ClientSession&) = delete;
  ClientSession& operator=(const ClientSession&) = delete;
  ~ClientSession();

  // Adopts an accepted socket (a TLS session on it when `tls` is set, for tls_listen); false
  // when libuv refuses it (the fd is then closed).
  bool Open(int fd, std::shared_ptr<const TlsContext> tls = nullptr);

  // Backend callbacks (see BackendConn's contract). OnReplyPart: the leading bytes of a
  // large reply still arriving (the final OnReply carries the rest).
  void OnReplyPart(uint64_t seq, const char* data, size_t len);
  void OnReply(uint64_t seq, Backend* from, const char* data, size_t len, bool is_error);
  // `timeout_pass`: for a timeout, the worker's number for the check that found it late.
  // `unsent`: the connection never reached the server, so the request was not applied.
  // `stalled`: a timeout on a server that sent nothing at all for the whole timeout (stopped,
  // or busy with one command), not one still sending what was queued ahead of the request.
  void OnBackendFailure(uint64_t seq, Backend* from, const std::string& reason, bool timeout,
                        uint64_t timeout_pass = 0, bool unsent = false, bool stalled = false);
  // Requests `first_seq` on, `count` of them, wait on connection `from` behind another
  // client's reply, paused for that client to read: if they are all this client has asked
  // since and each is a read whose copy is kept, they go again, in order, on one other
  // connection to the same server, and the replies of the first sends are dropped (the
  // caller clears their entries). False: they stay. All or none: a later request that ran
  // already (elsewhere, or here without being sent again) would have seen an older state
  // than the one sent again. `held_ms`: what they waited behind slow readers there, which
  // counts on the new connection too.
  bool SendAgain(uint64_t first_seq, size_t count, BackendConn* from, uint64_t held_ms);
  // Whether SendAgain would send them again.
  bool MaySendAgain(uint64_t first_seq, size_t count);
  // Whether `seq`, held behind another client's slow reader and not sent again, may wait its
  // turn: a read of a client whose replies are large, or not known yet while large replies
  // are about (sent again, the server would build it twice). Otherwise the connection reads
  // on for it.
  bool WaitsBehindSlowReader(uint64_t seq);
  // Whether `seq`, a cheap read (CheapToRetry: GET, HGET...) waiting on a silent node, may
  // go to the primary: one sent there as the primary before a failover demoted it; or, on a
  // `stalled` replica (health check unanswered), one of a client whose replies are known to
  // be small. Nothing of its reply passed on yet.
  bool CheapReadWaiting(uint64_t seq, bool stalled);
  // A RESP3 push the server sent on a shared connection while request `seq` ran: shown to the
  // client ahead of that request's reply, as Redis would.
  void OnPush(uint64_t seq, const char* data, size_t len);
  // A write (or a session that may write) must not overtake this client's reads still out on
  // replicas that may see it: sent to the primary at once, it is replicated, and a replica
  // can apply it before it runs a GET the client sent earlier (pipelined GET k, SET k v read
  // v). The highest such read's seq before `before`, or kNoParent. `req` null: any key.
  uint64_t ReplicaReadsAhead(const Request* req, const RouteDecision& d, uint64_t before);
  // Holds the request being handled until the reads ahead of it are answered.
  bool WaitsForReplicaReads(const Request& req, const RouteDecision& d);
  // Dedicated connection callbacks.
  void OnStreamFrame(const char* data, size_t len);
  void OnStreamFailure(const std::string& reason);

  // Reply bytes ready for the client and not yet written to it (what it must read before a
  // streamed reply may go on; replies held behind an open slot cannot drain meanwhile).
  size_t StreamBacklog() const { return out_.size() + wbuf_.size(); }
  // Reply bytes the client has not received yet: what the proxy holds (its buffer, libuv's
  // write queue) and what the kernel holds unacknowledged. It shrinks whenever the client
  // reads, also in the middle of one long write (see BackendConn::CheckTimeout).
  size_t UnreceivedBytes() const;
  // A connection streaming this client a large reply waits until the client has read more
  // (ResumeStream when StreamBacklog is low again); Forget: it went away meanwhile.
  void WaitForDrain(BackendConn* c);
  // This client's request `seq` is on a primary connection that has left the pool: what the
  // client sends next would go on the connection replacing it, and could run before `seq`
  // (Redis orders only one connection's requests). So nothing more is taken from the client
  // until every request up to `seq` is answered.
  void HoldUntilAnswered(uint64_t seq);
  void ForgetDrainWait(BackendConn* c) {
    drain_waiters_.erase(std::remove(drain_waiters_.begin(), drain_waiters_.end(), c),
                         drain_waiters_.end());
  }

  // Writes what is ready (called once per loop turn by the worker).
  void Flush();
  // Everything handed to the socket has been written.
  void OnWritten();
  // Writes a large reply at the head straight to the socket when nothing is queued ahead
  // of it; returns the bytes written (the rest goes through out_).
  size_t WriteThrough(const char* data, size_t len);
  static constexpr size_t kWriteThroughAt = 64 * 1024;
  // Nothing sent for a while and nothing in flight: frees the buffers kept for speed.
  // Returns whether it had any to give.
  bool TrimIfIdle(uint64_t now_ms);
  // Frees this thread's spare rings beyond kRingPoolKeep (the worker's idle sweep).
  static void TrimRingPool();
  static constexpr size_t kFirstReadChunk = 1024;
  // Sends the requests waiting for a backend that can go now, fails those past their
  // deadline (worker timer). Returns whether some still wait.
  bool RetryParked();
  bool in_park_list = false;  // the worker's
  // Graceful shutdown: read nothing more, finish what is in flight, then close.
  void StartDrain();
  // Immediate close (drain deadline passed, limits, protocol error after its reply).
  void Close();

  uint64_t id() const { return id_; }
  // Reply bytes this session last reported to the worker's ClientBudget.
  size_t accounted() const { return accounted_; }
  // Closed because all clients together hold too much (this one the most).
  void DropForTotalBudget();
  // Read nothing of a streamed reply for a whole timeout while other clients' replies wait
  // behind it on the same connection: closed (counted as kUnreadReply).
  void DropForUnreadReply();
  bool closed() const { return closed_; }
  // The worker may delete the session only when libuv and every backend are done with it.
  bool deletable() const { return handle_closed_ && inflight_ == 0 && !dirty && !in_park_list; }
  bool dirty = false;

 private:
  struct Slot {
    bool done = false;
    bool is_read = false;
    bool tried_primary = false;
    bool tried_replica = false;  // a read the primary failed, re-sent to a replica
    bool rerun = false;          // a read run again once after its connection was lost
    bool resent = false;         // a read sent again once from behind a slow reader
    bool timed_out = false;      // it timed out once already (see OnBackendFailure)
    uint64_t park_deadline = 0;  // waiting for a backend until then (worker clock)
    size_t streamed = 0;         // bytes of a large reply passed on before it was complete
    size_t sent_bytes = 0;       // its request's bytes, counted in inflight_bytes_
    uint32_t auth_user = 0;      // a passthrough AUTH: the Credentials id it is for
    bool stream = false;         // the pinned session's slot: never completes
    uint8_t kind = 0;            // for latency stats: 0 local/other, 1 read, 2 write
    bool may_write = false;      // a write that may change data (read-your-writes follows it)
    bool side_conn = false;      // goes on a connection of its own (RouteDecision::side_conn)
    // A read cheap whatever the data (CheapToRetry): never itself the slow read a stalled
    // replica's timeout may be (see RetryAllowed). A split request's parts are if it is.
    bool cheap = false;
    // A read out on a replica now (see WaitsForReplicaReads), and its key's tag (kAnyKey:
    // several, none or not known), worked out from `request` when first needed.
    bool on_replica = false;
    bool key_tag_known = false;
    uint64_t key_tag = 0;
    uint64_t start_ns = 0;
    Buffer reply;    // reply bytes that arrived before the slots ahead of it
    Buffer request;  // kept for reads so a failed replica's read can go to the primary
    // Redis Cluster: the group it goes to, and the hash slot that chose it (kNoSlot: a
    // keyless request sent to a group of the proxy's choosing).
    uint16_t group = 0;
    uint16_t hslot = kNoSlot;
    uint8_t redirects = 0;               // MOVED/ASK followed for it
    bool discard = false;                // the proxy's own request (ASKING): its reply is dropped
    uint64_t parent = kNoParent;         // one part of a request split over shards (see FanOut)
    uint32_t part = 0;                   // which part
    std::unique_ptr<struct FanOut> fan;  // a split request: its parts' replies merged here
  };
  // A replica read's key tag (Slot::key_tag), worked out on first use.
  uint64_t ReadKeyTagOf(Slot& s);
  static constexpr uint16_t kNoSlot = 0xFFFF;
  static constexpr uint64_t kNoParent = ~0ull;

  void ProcessInput();
  // Its replies are large (reply_estimate_ of kResendBelow or more), or not known yet while
  // large replies are about (this worker saw one within kLargeRepliesMemoryMs).
  bool RepliesMayBeLarge() const;
  // A read that avoids replicas not answering their health checks (Backend::answering): a
  // cheap one of a client whose replies may not be large (RepliesMayBeLarge).
  bool Steered(bool cheap) const;
  // Requests of this client are on a connection taken out of the pool (see HoldUntilAnswered)
  // and not all answered yet: nothing more of the client's is sent meanwhile.
  bool BarrierHolds();
  // False when the request cannot be taken yet (it stays in the input, see EnterPinned).
  bool HandleRequest(const RequestParser& parser, const char* raw, size_t len);
  void HandleLocal(LocalCommand cmd, const Request& req);
  // HELLO's reply map (the client's protocol becomes `proto`).
  void AppendHello(Buffer& b, int proto);
  // auth_mode passthrough: Redis checks the password (see client_local.cpp); the answer
  // arrives as the reply of a slot marked with the user's Credentials id.
  // `password_only`: the client's AUTH named no user; Redis is asked in the same form (with
  // a default user that has no password, AUTH <password> is an error, AUTH default <any> is
  // not).
  void StartPassthroughAuth(std::string_view user, std::string_view password,
                            bool password_only = false);
  // `error`: empty when Redis accepted it, else its error text (without '-').
  void FinishPassthroughAuth(uint64_t seq, std::string_view error);
  // This client's line for CLIENT INFO / CLIENT LIST.
  std::string DescribeSelf(std::string_view cmd) const;
  void Dispatch(const Request& req, const RouteDecision& d, const char* raw, size_t len,
                uint16_t group = 0, uint16_t hslot = kNoSlot);
  // After a MULTI the proxy could not start: queue-time errors, then EXECABORT.
  void InRefusedTransaction(const Request& req, const RouteDecision& d);
  // One request on the dedicated connection, as far as reply pairing and deadlines go.
  struct PinnedReq {
    bool blocking = false;  // may wait past the timeout (BLPOP, WAIT, ...)
    bool swallow = false;   // added by the proxy; its reply is not the client's
    bool push = false;      // switches the connection to unpaired replies (SUBSCRIBE, ...)
    uint64_t end = 0;       // BackendConn::queued_bytes() once it was sent (see SetDeadline)
    // Renames the client once answered (see ApplyNaming): CLIENT SETNAME or HELLO SETNAME,
    // an EXEC of a transaction with a CLIENT SETNAME in it, RESET.
    enum Naming : uint8_t { kNameNone, kNameSet, kNameExec, kNameReset };
    Naming naming = kNameNone;
    std::string new_name{};
  };
  // `multi_first`: a MULTI held back (Redis Cluster) goes on the connection first.
  bool EnterPinned(const Request& req, const RouteDecision& d, const char* raw, size_t len,
                   bool multi_first = false);
  // Redis Cluster: a command that needs a dedicated connection, routed to its keys' shard;
  // MULTI waits for the transaction's first command to name the shard.
  bool EnterPinnedCluster(const Request& req, const RouteDecision& d, const char* raw, size_t len);
  void ForwardPinned(const Request& req, const RouteDecision& d, const char* raw, size_t len);
  // A write (or EXEC) on a dedicated connection to a primary that is up but takes no writes
  // for a moment (a failover's fence): true when it waits (parked, like a MULTI waiting to
  // pin), since the old primary would acknowledge it and then lose it to the new one.
  // kGo: send it; kHeld: not consumed, the session is parked; kEnded: the session was closed
  // with an error instead (held a whole timeout and still no primary to send it to).
  enum class PinnedHold { kGo, kHeld, kEnded };
  PinnedHold HoldPinnedWrite(const Request& req, const RouteDecision& d);
  // The group's primary is up but takes no writes for a moment (a failover's fence, a
  // connection closed under it): it may hold the client's last write, which replicas may
  // lack, so reads that need it wait rather than go to a replica.
  bool PrimaryHeld(const Backend* primary) const;
  // Updates the pinned session's state for one forwarded request.
  PinnedReq TrackPinnedState(const Request& req, const RouteDecision& d);
  void SendPinned(const char* raw, size_t len, PinnedReq kind);
  void NoteSentPinned(PinnedReq kind);
  void ApplyNaming(const PinnedReq& kind, const char* data, size_t len);
  void ArmPinnedDeadline();
  void MaybeUnpin();
  // Pub/sub: follows the subscription counts in (un)subscribe confirmations; at zero the
  // session leaves the dedicated connection (after a marker PING).
  void NoteSubscriptionReply(const char* data, size_t len);
  // A subscriber's connection was lost: subscribes again on the primary once there is one.
  void TryResubscribe();
  // A QUIT received while pinned: ends the session once what came before it is answered.
  void MaybeQuit();
  // Ends the pinned session: closes the dedicated connection, completes the stream slot.
  void AbandonPinned();
  // `failover`: counted as a read failover (not for the cluster's absent re-check).
  void RetryOnPrimary(uint64_t seq, bool failover = true);
  // Whether a read that timed out on a replica may be re-run on the primary (retry budget).
  bool RetryAllowed(uint64_t timeout_pass, bool free);
  static bool CheapToRetry(const RouteDecision& d, const Request& req);
  // CheapToRetry: a fast command with a variable argument count, up to this many arguments.
  static constexpr size_t kCheapRetryMaxArgs = 9;
  // False when no replica can take it (the caller answers the error).
  bool RetryOnReplica(uint64_t seq);
  // Where a read goes: a replica, or nullptr for the primary (and whether that is because of
  // read-your-writes rather than no replica serving reads).
  struct ReadTarget {
    Backend* replica = nullptr;
    bool for_read_your_writes = false;
    bool wait = false;  // behind the client's own write, with no primary to run after it on
  };
  // `req` is null for a request sent again after waiting (no cursor to stick to).
  ReadTarget PickReadTarget(const Request* req, const RouteDecision& d, const BackendGroup& g,
                            bool cheap);
  // Sends one routed request to a backend; false when none can take it now.
  bool Send(uint64_t seq, const Request* req, const RouteDecision& d, const char* raw, size_t len);
  // Whether a request with no backend may wait for one (the topology is changing).
  bool MayWait(const BackendGroup& g) const;
  // Holds a request no backend can take now, answering it with an error if it may not wait.
  void Park(uint64_t seq, const char* raw, size_t len);
  void FailParked(uint64_t seq);
  // A write of this client has been answered (or failed and may have been applied).
  void NoteWriteDone(bool may_have_written, const BackendGroup& g);
  // The group a slot's request goes to / the pinned session's group.
  BackendGroup& GroupOf(uint64_t seq);
  BackendGroup& PinGroup();
  // Read-your-writes state for a group (one per Redis Cluster shard).
  ReadYourWrites& Ryw(size_t group) {
    if (ryw_.size() <= group) ryw_.resize(group + 1);
    return ryw_[group];
  }

  // ---- Redis Cluster (client_cluster.cpp) ----
  // Routes a read or write by its keys' hash slot: one group, parts over several (MGET...),
  // all groups (DBSIZE, KEYS, SCAN...), or Redis's CROSSSLOT error. Takes the request.
  void DispatchCluster(const Request& req, const RouteDecision& d, const char* raw, size_t len);
  // The hash slot of a request's keys: kNoSlot when keyless; false (with the error answered)
  // when they span slots.
  bool ClusterSlotOf(const Request& req, const RouteDecision& d, const char* raw, size_t len,
                     uint16_t* slot);
  // The group serving a slot (a keyless request: the first shard's).
  uint16_t ClusterGroupFor(uint16_t slot) const;
  // One part of a split request (its own slot, not flushed to the client).
  // `cheap`: a part of a cheap read (MGET of a few keys), cheap itself (Slot::cheap).
  void SendPart(uint64_t parent, uint32_t part, uint16_t group, uint16_t hslot, bool is_read,
                bool may_write, const Buffer& raw, const RouteDecision& d, const Request* req,
                bool cheap = false);
  // A part's reply (or error) merged into its parent; the parent completes with the last.
  void OnPartReply(uint64_t parent, uint32_t part, const char* data, size_t len);
  void FinishFanOut(uint64_t parent);
  // -MOVED / -ASK / -TRYAGAIN / -CLUSTERDOWN from a shard: followed, never shown. True when
  // the reply was such a redirection and has been dealt with.
  bool FollowRedirect(uint64_t seq, Backend* from, const char* data, size_t len);
  // A reply that may mean "no such key" (nil, empty, 0, none, an array with a nil).
  static bool LooksAbsent(const char* data, size_t len);
  // MULTI under Redis Cluster waits for the transaction's first command, which names the
  // shard (see EnterPinned).
  bool cluster_multi_ = false;
  uint16_t pin_group_ = 0;           // the pinned session's group
  uint16_t last_write_group_ = 0;    // where this client's last write went (WAIT goes there)
  uint64_t replica_reads_upto_ = 0;  // 1 + the highest seq of a read sent to a replica
  uint64_t writes_sent_upto_ = 0;    // 1 + the highest seq of a write sent to a primary
  bool fenced_ = false;              // the request being handled waited (WaitsForReplicaReads)
  // The error for a request that needs the primary when none can take it, saying why.
  std::string PrimaryUnavailable(const Backend* primary) const;

  uint64_t NewSlot();
  // An idle client gives its ring of slots back to the worker thread's spares.
  void MaybeReturnSlots();
  static constexpr size_t kFirstSlots = 4;  // grows (doubling) with the pipeline
  // Spare rings kept per worker thread: as many as a burst of clients returns in one loop
  // turn (libuv hands out up to 1024 events a turn), trimmed back to kRingPoolKeep by the
  // worker's idle sweep so a past burst does not hold them for good.
  static constexpr size_t kRingPoolMax = 1024;
  static constexpr size_t kRingPoolKeep = 64;
  static std::vector<std::vector<Slot>>& RingPool();
  Slot& SlotAt(uint64_t seq) { return slots_[seq & (slots_.size() - 1)]; }
  // Completes a slot with reply bytes; flushes the completed prefix into out_. from_server:
  // the server's reply (the proxy's own errors do not count towards reply_estimate_).
  void Complete(uint64_t seq, const char* data, size_t len, bool from_server = true);
  void CompleteError(uint64_t seq, std::string_view msg);
  void ReplyNow(const Buffer& b);
  void ReplyErrorNow(std::string_view msg);
  // Pinned: answers a refused command or one the proxy answers itself in its place in the
  // stream. False when it cannot be ordered there (the caller then does as before).
  bool AnswerInStream(const Request& req, const RouteDecision& d);
  // Sends the marker whose reply is replaced by `reply`: PING token, or (inside MULTI, for
  // a refusal) the token as a command, which Redis refuses at queue time so EXEC aborts.
  void SendLocalMarker(std::string reply, bool as_command);
  // The answer that replaces this frame when it is a marker's reply; null otherwise.
  const std::string* TakeLocalReply(const char* data, size_t len);
  void AdvanceHead();
  void PauseReading();
  void ResumeReading();
  void OnPeerEof();
  // Reading resumes once in-flight requests and unread replies are well below their bounds.
  void MaybeResume();
  // Whether the requests in flight on shared connections reach `depth` requests or `bytes`
  // (request bytes plus the replies expected for them).
  bool InflightReaches(uint64_t depth, size_t bytes) const;
  // Whether replies waiting for this client to read them reach `bytes`: they hold its next
  // requests back as those in flight do (a shared connection's client only).
  bool UnreadReaches(size_t bytes) const {
    return dedicated_ == nullptr && StreamBacklog() >= bytes;
  }
  // Learns the size of this client's replies (what its requests in flight will bring back).
  void NoteReplySize(size_t len);
  static constexpr uint64_t kFirstBurst = 4;  // in flight before any reply size is known
  // ... unless large replies are about (FirstBurst).
  static constexpr uint64_t kLargeRepliesMemoryMs = 60000;
  uint64_t FirstBurst() const;
  // A reply of `len` bytes from a server: tells the worker when it is large (FirstBurst).
  void NoteLargeReply(size_t len);
  // The connections waiting for this client to read (see WaitForDrain) read on.
  // `drained`: the client read its backlog down (else it is closing).
  void ResumeStreams(bool drained);
  // Reply bytes held for the client that count against max_client_buffer_bytes.
  size_t CountedReplyBytes() const;
  // Past the in-flight bound, whether the client's requests are still read (not sent on).
  bool TakesRequestsWhileWaited() const;
  // A reply waits for this client to read it: a connection waits for it (WaitForDrain), or
  // half max_inflight_bytes of replies are unsent to it.
  bool RepliesAwaitReader() const;
  void MaybeFinish();
  void ProtocolError(const std::string& msg);
  // `parser_error`: the parser's message for a wire limit.
  void LimitError(RespLimit which, const std::string& parser_error = {});
  // Replies `msg` as an error, then closes once everything before it is written.
  void EndWithError(const std::string& msg);
  bool CheckOutputLimit();
  // Reports the reply bytes held to the ClientBudget; enforces the total bound when it grew.
  void Account();

  static void AllocCb(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void ReadCb(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void WriteCb(uv_write_t* req, int status);
  static void CloseCb(uv_handle_t* h);

  Worker* worker_;
  uint64_t id_;
  uv_tcp_t tcp_;
  uv_write_t write_req_;
  bool writing_ = false;
  bool reading_ = false;
  bool read_shared_ = false;   // the read under way lands in the worker's buffer
  bool peer_eof_ = false;      // the client shut down its sending side (see OnPeerEof)
  Buffer* capture_ = nullptr;  // set: ReplyNow/ReplyErrorNow write here (AnswerInStream)
  bool may_donate_ = false;    // the request being handled is all of in_ and large (see Send)
  bool donated_ = false;       // ... and in_'s storage went to a backend connection's queue
  bool paused_ = false;        // backpressure: too many requests in flight
  bool closing_after_flush_ = false;  // QUIT, protocol error, drain
  bool closed_ = false;
  bool handle_closed_ = false;
  bool authenticated_ = false;
  size_t inflight_ = 0;        // requests a BackendConn will still call back about
  size_t inflight_bytes_ = 0;  // request bytes of the slots not answered yet (Slot::sent_bytes)
  size_t reply_estimate_ = 0;  // typical reply size (see NoteReplySize); 0: none seen yet
  uint64_t aux_slots_ = 0;     // slots in the ring that are parts of another (FanOut, ASKING)

  std::unique_ptr<TlsStream> tls_;  // clients of tls_listen
  Buffer in_;
  // What a read into in_ (the rest of a partial request) is offered; grows to 64 KB.
  size_t read_chunk_ = kFirstReadChunk;
  size_t read_offered_ = 0;
  Buffer out_;
  Buffer wbuf_;
  Buffer scratch_;                             // inline commands re-encoded as RESP, local replies
  std::unique_ptr<RequestParser> own_parser_;  // a request arriving in pieces (see ProcessInput)
  std::unique_ptr<RequestParser> preauth_parser_;  // until the client has authenticated

  std::vector<Slot> slots_;    // ring, size a power of two; index = seq & (size - 1)
  uint64_t head_ = 0;          // oldest slot not yet flushed into out_
  uint64_t next_ = 0;          // next slot to hand out
  size_t held_bytes_ = 0;      // reply bytes waiting in slots behind an unanswered one
  size_t oversize_bytes_ = 0;  // the largest buffered reply larger than the bound (not counted)
  size_t accounted_ = 0;       // see accounted()
  std::vector<BackendConn*> drain_waiters_;  // see WaitForDrain

  ConnClass cls_;                   // database and RESP version: which connections serve it
  std::string name_;                // CLIENT SETNAME
  std::string lib_name_, lib_ver_;  // CLIENT SETINFO
  uint64_t created_ms_ = 0;
  uint64_t last_request_ms_ = 0;
  // Cursor commands: the server that issued this client's last cursor.
  Backend* scan_backend_ = nullptr;
  bool scan_on_primary_ = false;
  std::vector<ReadYourWrites> ryw_;     // by group
  std::vector<std::string_view> args_;  // Redis Cluster: every argument of the request
  std::vector<uint32_t> keys_;          // and where its keys are
  // Retry budget for reads that timed out on a replica (see OnBackendFailure).
  double retry_tokens_ = 0.0;
  uint64_t last_retry_pass_ = 0;
  bool last_retry_allowed_ = false;
  size_t writes_inflight_ = 0;        // writes sent on shared connections, not answered yet
  Ring<uint64_t> parked_;             // requests waiting for a backend (failover), in order
  uint64_t barrier_seq_ = kNoParent;  // see BarrierHolds
  uint64_t barrier_scan_ = 0;         // slots before it are answered (BarrierHolds)
  // Pinned session: a dedicated primary connection and the bytes waiting for the slots
  // ahead of the stream slot to complete (so earlier requests run first).
  BackendConn* dedicated_ = nullptr;
  uint64_t stream_seq_ = 0;
  // A request that needs a dedicated connection while no primary can take one (failover).
  bool waiting_to_pin_ = false;
  bool multi_refused_ = false;  // see InRefusedTransaction
  // ... refused at one of its commands (Redis Cluster: CROSSSLOT, a slot nobody serves; a
  // denied command), not at MULTI: later commands are QUEUED, as Redis answers them.
  bool multi_refused_queued_ = false;
  bool auth_pending_ = false;  // a passthrough AUTH is with Redis: input waits for it
  struct PendingHello {
    int proto = 2;
    bool has_setname = false;
    std::string setname;
  };
  // The containers of a pinned session, pub/sub and held transactions: allocated when a
  // client first needs them, so the many clients that never do stay small.
  struct PinState {
    Buffer backlog;                 // requests waiting for the slots ahead of the stream slot
    Ring<PinnedReq> backlog_kinds;  // one per request waiting in backlog
    Ring<PinnedReq> inflight;       // sent, reply not seen yet (not tracked in push mode)
    Buffer inject;                  // commands the proxy adds to a pinned stream
    std::string quit_marker;        // the QUIT marker PING's token
    std::string unpin_marker;       // the reply to the PING that leaves pub/sub, exact bytes
    std::set<std::string> channels, patterns, shard_channels;  // subscribed, per the server
    std::string resubscribe_reason;             // why the subscriptions are being renewed
    std::optional<PendingHello> hello_pending;  // HELLO ... AUTH: answered after the AUTH
    std::vector<std::string> multi_held;   // Redis Cluster: keyless commands queued after MULTI
    std::optional<std::string> held_name;  // ... the name a CLIENT SETNAME among them gives
    // The name a CLIENT SETNAME queued in the open transaction gives the client if EXEC
    // runs it (the EXEC's PinnedReq carries it from there).
    std::optional<std::string> multi_name;
    // Answers the proxy gives itself inside the stream (a refused command, CLIENT ID/INFO/
    // LIST): each waits for the reply to its marker (see SendLocalMarker), in order.
    std::deque<std::pair<uint64_t, std::string>> local_replies;
    uint64_t local_token = 0;
    std::string local_out;  // the answer being delivered in place of a marker's reply
    void ClearHeld() {
      multi_held.clear();
      held_name.reset();
    }
    bool Empty() const {
      return backlog.empty() && backlog_kinds.empty() && inflight.empty() && channels.empty() &&
             patterns.empty() && shard_channels.empty() && !hello_pending && multi_held.empty() &&
             !held_name && !multi_name && local_replies.empty();
    }
  };
  std::unique_ptr<PinState> pin_;
  PinState& pin() {
    if (!pin_) pin_ = std::make_unique<PinState>();
    return *pin_;
  }
  uint64_t pin_wait_deadline_ = 0;  // worker clock; 0: not waiting
  bool quit_pending_ = false;       // QUIT received while pinned: +OK once earlier replies are in
  bool quit_silent_ = false;        // ... or the client's EOF: the same end without the +OK
  bool quit_marker_sent_ = false;   // push mode: the PING that marks the end of what is due
  bool quit_marker_seen_ = false;
  // Why the session is pinned. A transaction (MULTI/WATCH) gives the connection back once
  // EXEC/DISCARD/UNWATCH has been answered; anything else (blocking, pub/sub, SELECT n, ...)
  // keeps it for the life of the client.
  bool pin_permanent_ = false;
  bool subscribed_ = false;  // pinned by (P|S)SUBSCRIBE until no subscription is left
  int64_t subscriptions_ = 0, shard_subscriptions_ = 0;
  uint64_t pending_sub_confirms_ = 0;  // channels of (P|S)SUBSCRIBEs sent, not confirmed yet
  bool unpin_marker_sent_ = false;     // the PING sent to leave pub/sub; input waits for it
  uint64_t unpin_marker_token_ = 0;
  bool resubscribing_ = false;      // waiting for a primary to renew them on
  uint64_t resubscribe_since_ = 0;  // worker clock; 0: not renewing
  size_t resub_swallow_ = 0;        // confirmations of the renewal still to drop
  bool resub_renaming_ = false;     // ... and the +OK of the CLIENT SETNAME ahead of them
  bool in_multi_ = false;
  bool watching_ = false;
  // Cluster mode: the pinned session ends once what it sent is answered (EXEC sent, a
  // blocking command...); the client's next requests wait for that, then go by their slot.
  // On the session's connection, one for a key of another shard would get MOVED.
  bool await_unpin_ = false;
  bool processing_input_ = false;  // ProcessInput is running (it does not nest)
  bool AwaitsUnpin() const { return await_unpin_ && dedicated_ != nullptr; }
  bool reply_off_ = false;   // CLIENT REPLY OFF forwarded (pinned): nothing is answered
  bool reply_skip_ = false;  // CLIENT REPLY SKIP forwarded: the next command is not answered
  uint64_t stream_outstanding_ = 0;  // requests forwarded, not yet answered (exact for
                                     // transactions; pub/sub replies are not one-to-one)
  bool reset_forwarded_ = false;
  uint64_t after_reset_ = 0;        // requests forwarded after the RESET still unanswered
  bool dedicated_reusable_ = true;  // false once RESET logged it out of the backend
  bool push_mode_ = false;          // replies no longer pair with requests (pub/sub, MONITOR)
  bool draining_ = false;
};

}  // namespace kp
