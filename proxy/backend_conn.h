// BackendConn: one TCP connection from a worker to a backend.
//
// Shared mode: many clients' requests are multiplexed on it; replies are matched to requests
// first-in first-out, and the entry is popped before its callback runs. Dedicated mode: it
// belongs to one pinned client session (transaction, blocking, pub/sub) and every frame the
// server sends is relayed to that session in order.
//
// Contract: every request handed to Send() is answered exactly once, by
// ClientSession::OnReply() or ClientSession::OnBackendFailure(). A large reply may first
// arrive in parts (ClientSession::OnReplyPart), the final OnReply carrying the rest.
#pragma once

#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/buffer.h"
#include "common/resp_parser.h"
#include "common/ring.h"
#include "proxy/backend.h"
#include "proxy/connection_class.h"
#include "proxy/tls.h"

namespace kp {

class Worker;
class ClientSession;

class BackendConn {
 public:
  enum class Mode { kShared, kDedicated };

  BackendConn(Worker* worker, Backend* backend, Mode mode, ClientSession* owner = nullptr,
              ConnClass cls = {});
  BackendConn(const BackendConn&) = delete;
  BackendConn& operator=(const BackendConn&) = delete;

  // Shared mode: queues one request; deadline_ms is in the worker loop's clock. `donor`: a
  // buffer whose readable bytes are exactly this request, which the connection may take
  // instead of copying from it (a large value); true when it did, and then `donor` holds
  // empty storage. The request's bytes stay where they were until the next loop turn.
  bool Send(ClientSession* client, uint64_t seq, const char* data, size_t len, uint64_t deadline_ms,
            Buffer* donor = nullptr);
  // The request just queued by Send (client's `seq`) was sent again from a connection where it
  // had waited `ms` behind slow readers (see SendOthersAgain): that counts here too.
  void CarryHeld(const ClientSession* client, uint64_t seq, uint64_t ms) {
    if (!pending_.empty() && pending_.back().client == client && pending_.back().seq == seq) {
      pending_.back().held_before = ms;
    }
  }
  // Dedicated mode: queues raw request bytes; replies arrive as OnStreamFrame().
  void SendRaw(const char* data, size_t len);
  // Starts writing queued bytes if none are being written (called once per loop turn).
  void Flush();
  // Dedicated mode: the server must send its next frame by this time (0: no deadline); the
  // pinned session sets it from its oldest non-blocking request, whose last byte is the
  // `end`-th queued here (see queued_bytes(); default: everything queued so far). While that
  // request is still crossing to the server, or its reply to the proxy, it is not late.
  void SetDeadline(uint64_t deadline_ms, uint64_t end = UINT64_MAX) {
    deadline_ms_ = deadline_ms;
    deadline_end_ = end == UINT64_MAX ? queued_total_ : end;
  }
  // Request bytes queued on this socket so far (the `end` of the last one queued).
  uint64_t queued_bytes() const { return queued_total_; }
  // Answers late requests (shared: each one on its own; dedicated: ends the session).
  void CheckTimeout(uint64_t now_ms);
  // A shared primary connection whose oldest request has waited `ms` with the server silent
  // and nothing more of ours taken: stuck behind one command (a long script), not just busy.
  bool StalledFor(uint64_t now_ms, uint64_t ms) const;
  // Closes for good; pending requests fail with `reason`. The object deletes itself (via the
  // worker) once libuv is done with it when `destroy` is set.
  void Shutdown(const std::string& reason, bool destroy);
  // Fails the connection as a dead server would: pending requests (shared) or the owning
  // session (dedicated) are answered with `reason`. The backend is not marked down.
  void Abort(const std::string& reason) { Fail(reason, false); }

  // A detached connection's client has read enough of the streamed reply: read on.
  // `drained`: because the client read its backlog down (else: it closed, or others waited
  // long enough).
  void ResumeStream(bool drained);
  // Out of the pool (see Worker::RetireSharedConn): answers what it carries, then closes.
  void Retire() { retiring_ = true; }
  // Leaving the pool: the clients whose requests from the `skip`-th pending one on still wait
  // here send nothing more until those are answered (see ClientSession::HoldUntilAnswered).
  void FenceQueued(size_t skip);

  Backend* backend() const { return backend_; }
  const ConnClass& conn_class() const { return cls_; }
  // Dedicated mode: hands the connection to another session (nullptr: idle in the worker).
  void set_owner(ClientSession* owner) { owner_ = owner; }
  // Dedicated mode: the name CLIENT SETNAME gave this connection on the server, when known
  // (a new one has none). A session that takes the connection over sets its own name first
  // if the two differ, so connections of named clients are reused like any other.
  bool client_name_is(std::string_view name) const {
    return client_name_known_ && client_name_ == name;
  }
  void set_client_name(std::string_view name) {
    client_name_.assign(name);
    client_name_known_ = true;
  }
  // Sent a command that may or may not have renamed it (CLIENT SETNAME that can fail, HELLO
  // SETNAME, a SETNAME queued in a transaction).
  void forget_client_name() { client_name_known_ = false; }
  // A side connection (Worker::SideConn) carries one command for a primary while a script
  // may be running there: its handshake leaves out READONLY, which a busy server refuses.
  // Set before the first Send().
  void set_side() { side_ = true; }
  bool side() const { return side_; }
  // Made to replace a connection stuck behind one command (Worker::RetireStalled): not judged
  // stuck itself until the server is heard from again (ServerHeard).
  void set_stall_replacement() { stall_replacement_ = true; }
  // The stuck connection itself, out of the pool: its next read means the server is free.
  void set_stall_retired() { stall_retired_ = true; }
  // The server answered on some connection after a stall: this one may be judged again, and a
  // refusal it holds (see HandshakeRefused) is out of date.
  void ServerHeard() {
    stall_replacement_ = false;
    refused_until_ms_ = 0;
  }
  bool idle() const {
    return pending_.empty() && out_.empty() && queued_.empty() && hs_out_.empty() &&
           !awaiting_handshake_;
  }
  bool dirty = false;  // queued in the worker's flush list
  bool dead() const { return dead_; }

 private:
  enum class State { kIdle, kResolving, kConnecting, kReady, kClosing };
  struct PendingReply {
    ClientSession* client = nullptr;  // nullptr: the connection's own AUTH, checked and dropped
    uint64_t seq = 0;
    uint64_t deadline_ms = 0;
    bool handshake = false;    // the connection's own AUTH/HELLO/SELECT (seq: its kind)
    uint64_t end = 0;          // queued_total_ once its last byte was queued (see WriteProgress)
    uint64_t slow_snap = 0;    // slow_held_ms_ when it was sent on (see OthersBehind)
    uint64_t held_before = 0;  // waited behind slow readers on another connection before
  };
  // What `pr` has waited behind slow readers (see OthersBehind), here and before.
  uint64_t HeldBehindSlow(const PendingReply& pr) const;
  struct Resolve;

  void StartConnect();
  void ConnectTo(const sockaddr* addr);
  void OnConnected(int status);
  void FailConnect(int err);
  void FailSoon(std::string reason, bool mark_down);
  void OnRead(ssize_t nread);
  void ProcessReplies();
  // Whether requests of other open clients wait behind the head reply (of `head`); *late:
  // one of them has waited behind slow readers (pauses of kSlowPauseMs or more, here and on
  // connections it was sent from again) for kMaxSlowHeldMs or a whole timeout, whichever is
  // shorter.
  bool OthersBehind(const ClientSession* head, bool* late) const;
  // A replica not answering (Backend::answering: its INFO waited UnansweredAfterMs) while
  // this connection heard nothing for as long: the cheap reads of clients with small replies
  // waiting here that long go to the primary now, without a retry token, rather than at the
  // timeout (ClientSession::CheapReadWaiting). Others wait on (a slow read may be running).
  // Also, on a node silent as long that a failover has demoted, the cheap reads sent to it
  // as the primary.
  void ReleaseCheapReads(uint64_t now_ms);
  // Whether the client of the head reply reads: kYes once it read its backlog down (the
  // connection resumed for it) or took kReadProgressBytes during a pause, kNo once a pause
  // judged it did not; for the head request it was judged for.
  enum class Reads : uint8_t { kUnknown, kYes, kNo };
  Reads HeadReads() const;
  void SetHeadReads(Reads r);
  // The other open clients with requests queued behind the head reply (of `head`), each
  // with its first request here, how many it has here, the most any of them waited behind
  // slow readers, and whether each may wait its turn (ClientSession::WaitsBehindSlowReader).
  struct Queued {
    ClientSession* client = nullptr;
    uint64_t first_seq = 0;
    size_t count = 0;
    uint64_t held_ms = 0;
    bool may_wait = true;
  };
  std::vector<Queued> QueuedBehind(const ClientSession* head) const;
  // Whether the requests of other clients behind the head reply may all be held there
  // longer: each client's can all go again elsewhere (*send: some can, see
  // ClientSession::MaySendAgain) or are large reads that wait their turn. False: the
  // connection reads on.
  bool MayHoldOthers(const ClientSession* head, bool* send) const;
  // The reads of other clients queued behind the head reply (of `head`) go again on another
  // connection to the same server, a client's all together or none (ClientSession::SendAgain),
  // and their entries here are cleared; the rest stay.
  void SendOthersAgain(const ClientSession* head);
  // Shared mode: hands the settled part of an incomplete large reply to its client.
  void StreamPart();
  // Closes the socket and answers every pending request with a failure.
  void Fail(const std::string& reason, bool mark_down);
  void OnClosed();
  // Hands the object to the worker for deletion, once.
  void Destroy();
  // AUTH / HELLO 3 / SELECT for the connection's class, first on every new connection.
  // The server has sent bytes this connection has not read yet (FIONREAD).
  bool HasUnreadBytes() const;
  // Queued bytes the server's side has not acknowledged: out_, queued_, the TLS stream's,
  // libuv's write queue and the socket's send queue.
  uint64_t Unwritten() const;
  // Once per tick: whether the socket took more bytes since the last look while some were
  // waiting to be written; `*seen` is what had been written at that last look.
  bool WriteProgress(uint64_t* seen);
  // A request still being sent is not late (see CheckTimeout).
  void ExtendWhileSending(uint64_t now_ms);
  // The buffer queued bytes are appended to: out_, or the last of queued_ once that is used.
  Buffer& Tail();
  // Moves the next queued buffer into out_ when out_ is empty; false when nothing is queued.
  bool NextQueued();
  // Whether a small batch waits for the server's next bytes instead of being written now.
  bool Corked() const;
  void QueueHandshake();
  void HandshakeRefused(uint64_t kind, const char* reply, size_t len);
  void HandshakeDone();
  // Whether an error answer to the PING handshake refuses the connection (see there).
  static bool RefusesService(const char* reply, size_t len);
  // Connects, or answers what waits with a refusal of a moment ago.
  void ConnectUnlessRefusing();
  static constexpr uint8_t kHandshakeAuth = 0, kHandshakeHello = 1, kHandshakeSelect = 2,
                           kHandshakeReadonly = 3, kHandshakePing = 4;

  static void AllocCb(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void ReadCb(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void WriteCb(uv_write_t* req, int status);
  static void ConnectCb(uv_connect_t* req, int status);
  static void CloseCb(uv_handle_t* h);

  Worker* worker_;
  Backend* backend_;
  Mode mode_;
  ClientSession* owner_;
  State state_ = State::kIdle;
  bool writing_ = false;
  bool destroy_on_close_ = false;
  bool dead_ = false;
  // Streaming a large reply to a client that reads slower than the server sends: the
  // connection is taken out of the shared pool (a fresh one replaces it, so nobody else
  // queues behind) and, once only that client's requests wait on it, stops reading while the
  // client is more than kStreamWindow behind.
  bool detached_ = false;
  // Carrying a request as large as a client's in-flight bound: out of the pool, so nobody's
  // later requests queue behind it; a shared connection otherwise, until its last reply.
  bool retiring_ = false;
  bool side_ = false;               // see set_side()
  bool readonly_ = false;           // READONLY sent (Redis Cluster, to a replica)
  bool stall_replacement_ = false;  // see set_stall_replacement()
  bool stall_retired_ = false;      // see set_stall_retired()
  // The server refused this class's SELECT / READONLY (see HandshakeRefused): its reply,
  // given instead of connecting again until refused_until_ms_.
  std::string refused_;
  std::string refused_reason_;
  uint64_t refused_until_ms_ = 0;
  bool answer_refused_ = false;  // the next Fail() answers with refused_ (primary) / unsent
  static constexpr uint64_t kRefusedHoldMs = 100;
  bool fail_soon_ = false;  // see FailSoon
  // The next Fail() gives up on a server silent for a whole timeout and more (CheckTimeout):
  // its plain reads then fail over outside the retry budget (ClientSession::RetryAllowed).
  bool fail_stalled_ = false;
  bool fail_soon_mark_down_ = false;
  std::string fail_soon_reason_;
  bool read_paused_ = false;
  ClientSession* drain_waiter_ = nullptr;
  size_t reader_unsent_ = 0;  // the paused-for client's UnreceivedBytes at the last look
  // While paused: when reader_unsent_ is taken again, once the peer's kernel has settled
  // (0: done). The queue shrinks by up to ~100 KB after the pause as the peer's receive
  // buffer takes what was in flight, and that is not the client reading.
  uint64_t settle_at_ms_ = 0;
  // Once settled: when the paused-for client is judged (see HeadReads), and its
  // UnreceivedBytes then (0 / not yet: settle_at_ms_ first).
  uint64_t judge_at_ms_ = 0;
  size_t judge_unsent_ = 0;
  uint64_t paused_at_ms_ = 0;  // when reading last stopped for a streamed reply's client
  // Time spent paused for slow readers over the connection's life (each pause that lasted
  // kSlowPauseMs or more): what a request behind them was charged is the growth since it
  // was sent (PendingReply::slow_snap).
  uint64_t slow_held_ms_ = 0;
  // See HeadReads: the verdict, and the head request (client, seq) it is about.
  uint64_t verdict_client_ = 0;  // ClientSession::id() (a pointer may be reused)
  uint64_t verdict_seq_ = 0;
  Reads verdict_ = Reads::kUnknown;
  // A head reply's client here was judged not to read, or the connection read on for the
  // requests behind one: later head replies' clients are not paused for to be judged.
  bool judged_no_ = false;
  ConnClass cls_;
  std::string client_name_;  // see client_name_is()
  bool client_name_known_ = true;
  int auth_replies_expected_ = 0;  // dedicated mode: handshake frames to check and swallow
  uint8_t handshake_kinds_[3] = {0, 0, 0};
  uint8_t handshake_next_ = 0;
  uint64_t deadline_ms_ = 0;   // dedicated mode: see SetDeadline; 0 = none
  uint64_t deadline_end_ = 0;  // dedicated mode: the oldest request's end (see SetDeadline)
  uint64_t last_read_ms_ = 0;  // when the server last sent anything (worker loop clock)
  size_t cancelled_ = 0;       // shared mode: leading pending entries already answered by timeout
  // Request bytes ever queued on this socket, and how many of them the kernel had taken at
  // the last tick (both count from 0 on each new socket); backed_up_: some were still
  // waiting then.
  uint64_t queued_total_ = 0;
  uint64_t flushed_total_ = 0;    // queued_total_ when the last write took everything queued
  bool read_since_write_ = true;  // the server sent something since that write (see Corked)
  uint64_t written_seen_ = 0;
  uint64_t write_moved_ms_ = 0;  // the last tick that saw the socket take more
  bool backed_up_ = false;
  uv_tcp_t tcp_;
  uv_connect_t connect_req_;
  uv_write_t write_req_;
  Resolve* resolve_ = nullptr;
  // The handshake (QueueHandshake) goes out alone, and nothing queued behind it is written
  // until every part of it has been answered: a refused SELECT or AUTH must not leave the
  // requests behind it to run in database 0, or as the default user.
  Buffer hs_out_;
  bool awaiting_handshake_ = false;
  Buffer out_;   // queued, not yet handed to the kernel
  Buffer wbuf_;  // being written; owned until WriteCb
  // Queued behind out_, in order: clients' buffers taken whole (large values, see Send), and
  // buffers for what is queued after one of them. Empty but for large values.
  std::vector<Buffer> queued_;
  bool tail_appendable_ = false;  // queued_.back() takes appends (it is not a taken buffer)
  Buffer in_;
  std::unique_ptr<TlsStream> tls_;  // with backend_tls: this connection's session
  Buffer tls_in_;                   // ciphertext read, before decryption
  ReplyFramer framer_;
  Ring<PendingReply> pending_;
};

}  // namespace kp
