// ClientSession: request framing, routing, the ordered reply queue, failover of reads,
// limits and backpressure for one client. Pinned sessions are in client_pinned.cpp, local
// commands in client_local.cpp.
#include "proxy/client_session.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>

#include "common/errors.h"
#include "common/key_tag.h"
#include "common/logging.h"
#include "common/resp_writer.h"
#include "proxy/backend.h"
#include "proxy/backend_conn.h"
#include "proxy/cluster_keys.h"
#include "proxy/loopback_tcp.h"
#include "proxy/proxy_info.h"
#include "proxy/tls.h"
#include "proxy/worker.h"

namespace kp {

namespace {
// The most room made at once for an argument still arriving, in all and as a multiple of
// what the client has sent of its request so far (see AllocCb).
constexpr size_t kRoomAtOnce = 32 * 1024 * 1024;
constexpr size_t kRoomPerHeld = 8;
// The least request size that takes its shared connection out of the pool (see Send), even
// with limits.max_inflight_bytes set lower: a connection per request costs a connect.
constexpr size_t kRetireAt = 1024 * 1024;
// An emptied buffer up to this size is freed at once: the allocator's per-thread cache hands
// it to the next client that needs one, so a client between requests holds none. Larger ones
// (a pipelining client's) are kept until it goes idle (TrimIfIdle), up to kKeepBuffer.
constexpr size_t kFreeAtOnce = 4096;
// Room reserved for a streamed reply's parts while the client's socket is full: the backend
// connection's stream window (1 MB, BackendConn::StreamPart), and a part arriving meanwhile.
constexpr size_t kStreamRoom = 2 * 1024 * 1024;

void Recycle(Buffer& b) {
  b.ShrinkIfEmpty(b.capacity() <= kFreeAtOnce ? 0 : kKeepBuffer);
}
// Writes up to this size are kept until answered, to be re-sent after a READONLY.
constexpr size_t kKeepWriteBytes = 64 * 1024;

// Replies from a replica that mean "not executed here, the primary can answer": the replica
// is loading its data set, lost its primary (replica-serve-stale-data no), or lacks a script.
enum class ReplicaRefusal { kNone, kUnhealthy, kRetryOnly };

ReplicaRefusal ClassifyReplicaError(const char* p, size_t n) {
  std::string_view s(p, n);
  if (s.size() < 2) return ReplicaRefusal::kNone;
  s.remove_prefix(1);  // '-' or '!'
  auto starts = [&](std::string_view w) {
    return s.size() >= w.size() && s.compare(0, w.size(), w) == 0 &&
           (s.size() == w.size() || s[w.size()] == ' ' || s[w.size()] == '\r');
  };
  if (starts("LOADING") || starts("MASTERDOWN")) return ReplicaRefusal::kUnhealthy;
  // NOSCRIPT: scripts loaded with SCRIPT LOAD are not replicated. READONLY: a *_RO script
  // or function that may write; the primary gives the real answer (an error naming it).
  if (starts("NOSCRIPT") || starts("READONLY")) return ReplicaRefusal::kRetryOnly;
  return ReplicaRefusal::kNone;
}
}  // namespace

namespace {
// Redis's bounds for a client that has not authenticated: 10 arguments of 16 KB at most.
RespLimits PreAuthLimits(RespLimits l) {
  l.max_array_len = 10;
  l.max_bulk_len = 16 * 1024;
  l.max_request_bytes = 11 * 16 * 1024;
  return l;
}
}  // namespace

ClientSession::ClientSession(Worker* worker, uint64_t id) : worker_(worker), id_(id) {
  created_ms_ = last_request_ms_ = worker->now();
  authenticated_ = NeedsNoAuth(worker->config());
}

ClientSession::~ClientSession() = default;

bool ClientSession::Open(int fd, std::shared_ptr<const TlsContext> tls) {
  if (tls) tls_ = std::make_unique<TlsStream>(std::move(tls), std::string());
  uv_tcp_init(worker_->loop(), &tcp_);
  tcp_.data = this;
  if (uv_tcp_open(&tcp_, fd) != 0) {
    ::close(fd);
    closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), CloseCb);
    return false;
  }
  uv_tcp_nodelay(&tcp_, 1);
  TuneLoopbackCongestion(fd, worker_->config().loopback_tcp_congestion);
  ResumeReading();
  return true;
}

// ---- reading and framing ----

void ClientSession::AllocCb(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* self = static_cast<ClientSession*>(h->data);
  if (self->tls_ || self->in_.empty()) {
    // Nothing of this client waits to be parsed (ciphertext is always decrypted whole): the
    // read lands in the worker's buffer, and only what it leaves unparsed is kept.
    Buffer& shared = self->worker_->read_buffer();
    shared.Clear();
    char* p = shared.PrepareWrite(kReadChunk);
    self->read_offered_ = shared.writable();
    self->read_shared_ = true;
    *buf = uv_buf_init(p, static_cast<unsigned>(self->read_offered_));
    return;
  }
  // The rest of a partial request: small reads for a client that sends little, growing to
  // kReadChunk for one whose reads fill what they are given (a pipeline). A large argument
  // being read gets room for all of it at once (up to kRoomAtOnce): one allocation instead
  // of a doubling series of copies, and reads as large as what has arrived. Room is address
  // space, its pages touched only as the bytes arrive; still, it is at most kRoomPerHeld
  // times what the client has sent, so a large value takes three or four steps to get its
  // room (a 16 MB one: 512 KB, 4 MB, 16 MB) and a client that announces a large value and
  // then sends little of it gets little room. Two hundred of those used to reserve 6 GB
  // (past any strict overcommit limit), and under ASan, where each 30 MB block's shadow is
  // written as it is allocated and freed, one loop turn took 2 s: others' requests timed out.
  size_t want = self->read_chunk_;
  if (const RequestParser* parser =
          self->authenticated_ ? self->own_parser_.get() : self->preauth_parser_.get()) {
    // Never more room than the client may hold (max_client_buffer_bytes): past that the
    // request is refused anyway, and the room would be address space reserved for nothing.
    const size_t limit = self->worker_->config().client.max_client_buffer_bytes;
    const size_t held = self->in_.size();
    const size_t may = limit > held ? limit - held + 1 : 0;
    const size_t announced = parser->PayloadBeyond(held);
    size_t beyond = std::min({announced, kRoomAtOnce, may, held * kRoomPerHeld});
    // Exactly the room when the whole value fits in it; a larger one grows by doubling,
    // so it is not copied again at every further step.
    if (beyond > want && self->in_.TryPrepareWrite(beyond, /*exact=*/beyond == announced)) {
      want = beyond;
    }
  }
  char* p = self->in_.PrepareWrite(want);
  self->read_offered_ = self->in_.writable();
  self->read_shared_ = false;
  *buf = uv_buf_init(p, static_cast<unsigned>(self->read_offered_));
}

void ClientSession::ReadCb(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* self = static_cast<ClientSession*>(s->data);
  self->worker_->TouchClock();
  if (nread <= 0) {
    // The client went away (or reset): nothing to answer. 0: nothing to read after all.
    if (nread == UV_EOF) {
      self->OnPeerEof();
    } else if (nread < 0) {
      self->Close();
    }
    return;
  }
  const size_t n = static_cast<size_t>(nread);
  Buffer& shared = self->worker_->read_buffer();
  const bool into_shared = self->read_shared_;
  if (n == self->read_offered_ && self->read_chunk_ < kReadChunk) {
    // A read that filled its buffer: more is coming, read it in big pieces.
    self->read_chunk_ = into_shared ? kReadChunk : self->read_chunk_ * 2;
  }
  if (self->tls_) {
    shared.Commit(n);
    TlsStream::Status st = self->tls_->Feed(shared.data(), shared.size(), &self->in_);
    shared.Clear();
    if (st == TlsStream::Status::kError) {
      // A plaintext client on the TLS port, a certificate not signed by tls_ca_file...: the
      // connection ends, with a line saying why (debug: any client can cause it).
      Log().debug("client {}: {}", self->id_, self->tls_->error());
      self->worker_->stats().tls_failures++;
      self->Close();
      return;
    }
    if (self->tls_->has_output()) self->worker_->MarkDirty(self);
    if (st == TlsStream::Status::kClosed) {
      self->Close();
      return;
    }
    if (!self->in_.empty()) self->ProcessInput();
    return;
  }
  if (!into_shared) {
    self->in_.Commit(n);
    self->ProcessInput();
    return;
  }
  // Parsed in place in the worker's buffer (lent as in_ meanwhile); what is left (a partial
  // request, requests held back) moves into the client's own buffer.
  shared.Commit(n);
  self->in_.swap(shared);
  self->ProcessInput();
  if (!self->in_.empty()) shared.Append(self->in_.data(), self->in_.size());
  self->in_.Clear();
  self->in_.swap(shared);
}

void ClientSession::OnPeerEof() {
  // The client shut down its side (shutdown(SHUT_WR), `nc -N`, a script piping commands):
  // like Redis, what it sent in full is answered, then the connection closes. libuv has
  // stopped reading; a request cut short by the end can never complete and is dropped.
  peer_eof_ = true;
  reading_ = false;
  if (closed_) return;
  ProcessInput();
  if (closed_) return;
  bool blocked = false;
  if (pin_) {
    // Sent, or waiting to be sent behind the client's earlier requests.
    for (size_t i = 0; i < pin_->inflight.size(); ++i) blocked |= pin_->inflight[i].blocking;
    for (size_t i = 0; i < pin_->backlog_kinds.size(); ++i) {
      blocked |= pin_->backlog_kinds[i].blocking;
    }
  }
  if (!subscribed_ &&
      !(dedicated_ != nullptr && (in_multi_ || watching_ || pin_permanent_ || blocked))) {
    StartDrain();
    return;
  }
  // A session that would never finish on its own (a transaction or WATCH left open, a
  // subscription, MONITOR, a command blocked without end) ends as Redis ends a client at
  // EOF: what it sent is answered first (the open transaction goes with the connection), a
  // command blocked without end is not waited for. That is a QUIT without its +OK.
  if (quit_pending_) return;  // the client's own QUIT ends it
  if (dedicated_ != nullptr && !unpin_marker_sent_ && !resubscribing_ && resub_swallow_ == 0 &&
      !auth_pending_) {
    quit_pending_ = quit_silent_ = true;
    MaybeQuit();
    return;
  }
  Close();  // between states (leaving pub/sub, subscribing again): nothing is due
}

void ClientSession::ResumeReading() {
  if (reading_ || peer_eof_ || closed_ || closing_after_flush_ || quit_pending_ ||
      unpin_marker_sent_ || resubscribing_ || resub_swallow_ != 0 || auth_pending_) {
    return;
  }
  reading_ = true;
  paused_ = false;
  uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), AllocCb, ReadCb);
}

void ClientSession::PauseReading() {
  if (!reading_) return;
  reading_ = false;
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
}

void ClientSession::ProcessInput() {
  // Not again from within: a request answered at once completes, which may resume this
  // client (AdvanceHead, MaybeResume) while the request is not consumed yet; a nested run
  // would parse it again. The running loop takes whatever a nested one would have.
  if (processing_input_) return;
  processing_input_ = true;
  struct Done {
    bool& flag;
    ~Done() { flag = false; }
  } done{processing_input_};
  const Config& cfg = worker_->config();
  // Between requests a client frames with the worker's parser; one whose request is still
  // arriving keeps that state in a parser of its own (own_parser_) until it goes idle. Taken
  // once for the whole batch of requests read, and given back reset.
  struct GiveBack {
    Worker* w;
    RequestParser* p = nullptr;
    ~GiveBack() {
      if (p == nullptr) return;
      p->Reset();
      w->ReturnParser(p);
    }
  } shared{worker_};
  while (!closed_ && !closing_after_flush_ && !quit_pending_ && !unpin_marker_sent_ &&
         !resubscribing_ && resub_swallow_ == 0 && !auth_pending_ && !in_.empty()) {
    const size_t pile_at = cfg.client.max_client_buffer_bytes / 2;
    if ((dedicated_ == nullptr &&
         InflightReaches(cfg.client.max_pipeline_depth, cfg.client.max_inflight_bytes)) ||
        UnreadReaches(cfg.client.max_inflight_bytes) || CountedReplyBytes() > pile_at ||
        BarrierHolds() || AwaitsUnpin()) {
      // Backpressure: too many requests (or bytes) in flight, or replies piling up that the
      // client does not read. Stop reading its requests until they drain (MaybeResume), well
      // before the buffer bound that would drop it. Replies it has not read count as if
      // still in flight: Redis would otherwise build every large reply a client asks for and
      // never reads (four clients each pipelining 30 GETs of 16 MB made a replica 2 GB big
      // and too busy to answer the health check).
      paused_ = true;
      if (TakesRequestsWhileWaited() && CountedReplyBytes() <= pile_at) {
        worker_->MarkDirty(this);  // what it holds counts towards the total bound (Account)
        return;
      }
      PauseReading();
      return;
    }
    size_t consumed = 0;
    // Before AUTH only small requests are framed (Redis's own bounds for unauthenticated
    // clients), so a client without the password cannot make the proxy hold large buffers.
    bool preauth = !authenticated_;
    if (preauth && !preauth_parser_) {
      // Only clients that must authenticate need it: idle connections stay small.
      preauth_parser_ = std::make_unique<RequestParser>(PreAuthLimits(cfg.resp));
    }
    if (!preauth && !own_parser_ && shared.p == nullptr) {
      shared.p = worker_->TakeParser();
      if (shared.p == nullptr) own_parser_ = std::make_unique<RequestParser>(cfg.resp);
    }
    const bool use_shared = !preauth && !own_parser_;
    RequestParser& parser = preauth ? *preauth_parser_ : use_shared ? *shared.p : *own_parser_;
    ParseStatus st = parser.Parse(in_.data(), in_.size(), &consumed);
    if (st == ParseStatus::kIncomplete) {
      if (peer_eof_) {
        // Nothing more will come: the rest of this request never arrives (see OnPeerEof).
        in_.Clear();
        own_parser_.reset();
        if (draining_) MaybeFinish();
        return;
      }
      if (use_shared) own_parser_ = std::make_unique<RequestParser>(*shared.p);  // resumes there
      if (in_.size() > cfg.client.max_client_buffer_bytes) LimitError(RespLimit::kClientBuffer);
      return;
    }
    if (st == ParseStatus::kError) {
      if (preauth && parser.limit_hit() == RespLimit::kArrayLen) {
        ProtocolError("Protocol error: unauthenticated multibulk length");
      } else if (preauth && parser.limit_hit() != RespLimit::kNone) {
        ProtocolError("Protocol error: unauthenticated bulk length");
      } else if (parser.limit_hit() != RespLimit::kNone) {
        LimitError(parser.limit_hit(), parser.error());
      } else {
        ProtocolError(parser.error());
      }
      return;
    }
    // A large request that is all the client has sent may become the backend's queue
    // (BackendConn::Send's donor) instead of being copied there.
    may_donate_ = consumed == in_.size() && consumed >= kWriteThroughAt;
    donated_ = false;
    bool handled = parser.argc() == 0 || HandleRequest(parser, in_.data(), consumed);
    may_donate_ = false;
    if (!handled) {
      // Held (a session waiting for a primary to pin to, a write waiting for the client's
      // replica reads, what follows a RESET): parsed again when it can go.
      parser.Reset();
      PauseReading();
      return;
    }
    if (donated_) {
      donated_ = false;  // in_ now holds the backend's empty storage: nothing to consume
    } else {
      in_.Consume(consumed);
    }
    parser.Reset();
    if (pin_ && pin_->backlog.size() > cfg.client.max_client_buffer_bytes) {
      // A pinned session's requests waiting for earlier replies count against its buffer.
      LimitError(RespLimit::kClientBuffer);
      return;
    }
  }
  if (in_.empty()) in_.ShrinkIfEmpty(kKeepBuffer);
  if (draining_) MaybeFinish();
}

void ClientSession::LimitError(RespLimit which, const std::string& parser_error) {
  // Named for what it is, and counted by limit: the input was well-formed, a bound was hit.
  std::string msg = which == RespLimit::kClientBuffer
                        ? "kompress: client buffer over limits.max_client_buffer_bytes (" +
                              std::to_string(worker_->config().client.max_client_buffer_bytes) +
                              " bytes); closing the connection"
                        : parser_error;
  Log().info("client {} dropped: {}", id_, msg);
  worker_->stats().limit_drops[static_cast<size_t>(which)]++;
  EndWithError(msg);
}

void ClientSession::ProtocolError(const std::string& msg) {
  Log().debug("client {}: {}", id_, msg);
  worker_->stats().protocol_errors++;
  EndWithError(msg);
}

void ClientSession::EndWithError(const std::string& msg) {
  // Like Redis: reply, then close once the reply (and everything before it) is written.
  closing_after_flush_ = true;  // first: nothing below may read more input
  AbandonPinned();
  uint64_t seq = NewSlot();
  CompleteError(seq, "ERR " + msg);
  closing_after_flush_ = true;
  PauseReading();
  in_.Clear();
  MaybeFinish();
}

// ---- routing ----

namespace {
// Retry budget per client: 20 % of its replica reads may be re-run after a timeout (Envoy's
// default budget share), with up to 10 re-runs saved up.
constexpr double kRetryEarn = 0.2;
constexpr double kRetryCap = 10.0;
// A connection paused while streaming this client a reply reads on below this.
constexpr size_t kStreamResumeAt = 512 * 1024;
// A client whose replies are this large or more (reply_estimate_) has no reads sent again
// (see MaySendAgain).
constexpr size_t kResendBelow = 256 * 1024;
// The tag of a read's key: one key at a fixed place, else "any" (MGET, SCAN, a script...).
uint64_t ReadKeyTag(const Request& req, const RouteDecision& d) {
  const CommandInfo* info = d.info;
  if (info == nullptr || info->first_key <= 0 || info->last_key != info->first_key ||
      info->is(kCmdMovableKeys) || static_cast<size_t>(info->first_key) >= req.nviews) {
    return kAnyKey;  // (SORT_RO ... BY / GET patterns read other keys too)
  }
  return KeyTag(req.argv[info->first_key]);
}
}  // namespace

bool ClientSession::HandleRequest(const RequestParser& parser, const char* raw, size_t len) {
  Request req;
  req.argc = parser.argc();
  req.nviews = req.argc < RequestParser::kMaxArgViews ? req.argc : RequestParser::kMaxArgViews;
  for (size_t i = 0; i < req.nviews; ++i) req.argv[i] = parser.arg(i, raw);

  if (parser.is_inline()) {
    // Backends get RESP; an inline command is re-encoded once (rare: telnet users).
    scratch_.Clear();
    resp::AppendArrayHeader(scratch_, req.argc);
    for (size_t i = 0; i < req.argc; ++i) resp::AppendBulk(scratch_, parser.arg(i, raw));
    raw = scratch_.data();
    len = scratch_.size();
  }
  if (pin_wait_deadline_ == 0 && !fenced_) worker_->stats().requests++;  // not again when re-run
  fenced_ = false;
  last_request_ms_ = worker_->now();

  RouteDecision d = worker_->router().Classify(req);
  if (dedicated_ != nullptr) {
    if (reset_forwarded_) {
      // Held until RESET is answered: its answer clears the session's state (subscriptions,
      // push mode), and what was sent after it would lose its own (a SUBSCRIBE pipelined
      // after RESET left the client unsubscribed; a second RESET lost the last replies).
      paused_ = true;
      fenced_ = true;
      return false;
    }
    if (AnswerInStream(req, d)) return true;
    if (d.route == Route::kDeny) {
      // Cannot be forwarded, and a local reply could not be ordered within the stream: end
      // the session with the explanation, as for a protocol error.
      closing_after_flush_ = true;
      AbandonPinned();
      worker_->stats().errors++;
      ReplyErrorNow(d.deny_reason);
      PauseReading();
      MaybeFinish();
      return true;
    }
    if (d.route == Route::kLocal && d.local == LocalCommand::kQuit) {
      // Never forwarded: the server would close the connection with the session's state,
      // and a connection closing under the proxy must stay a sign of trouble. The client gets
      // its +OK once what it sent before has been answered.
      quit_pending_ = true;
      PauseReading();
      MaybeQuit();
      return true;
    }
    PinnedHold hold = HoldPinnedWrite(req, d);
    if (hold == PinnedHold::kHeld) return false;
    if (hold == PinnedHold::kEnded) return true;
    ForwardPinned(req, d, raw, len);
    return true;
  }

  if (!authenticated_ && !(d.route == Route::kLocal &&
                           (d.local == LocalCommand::kAuth || d.local == LocalCommand::kHello ||
                            d.local == LocalCommand::kQuit || d.local == LocalCommand::kReset))) {
    ReplyErrorNow(errors::kNoAuth);
    return true;
  }
  if (multi_refused_) {
    InRefusedTransaction(req, d);
    return true;
  }
  if (cluster_multi_) {
    if (d.route == Route::kDeny) {
      // Refused inside the transaction: like a command Redis rejects at queue time, it
      // makes EXEC fail.
      cluster_multi_ = false;
      if (pin_) pin_->ClearHeld();
      multi_refused_ = multi_refused_queued_ = true;
      worker_->stats().errors++;
      ReplyErrorNow(d.deny_reason);
      return true;
    }
    return EnterPinnedCluster(req, d, raw, len);
  }
  if ((d.route == Route::kWrite || d.route == Route::kPin) && replica_reads_upto_ > head_ &&
      WaitsForReplicaReads(req, d)) {
    return false;
  }
  switch (d.route) {
    case Route::kLocal:
      HandleLocal(d.local, req);
      return true;
    case Route::kDeny:
      worker_->stats().errors++;
      ReplyErrorNow(d.deny_reason);
      return true;
    case Route::kPin:
      if (worker_->topology().cluster()) return EnterPinnedCluster(req, d, raw, len);
      return EnterPinned(req, d, raw, len);
    case Route::kRead:
    case Route::kWrite:
      if (worker_->topology().cluster()) {
        DispatchCluster(req, d, raw, len);
      } else {
        Dispatch(req, d, raw, len);
      }
      return true;
  }
  return true;
}

void ClientSession::Dispatch(const Request& req, const RouteDecision& d, const char* raw,
                             size_t len, uint16_t group, uint16_t hslot) {
  if (group == Topology::kNoGroup) {
    // Redis Cluster with the slot unserved (or the map not read yet): what a node says.
    worker_->stats().errors++;
    ReplyErrorNow("CLUSTERDOWN Hash slot not served");
    return;
  }
  uint64_t seq = NewSlot();
  Slot& s = SlotAt(seq);
  s.group = group;
  s.hslot = hslot;
  s.start_ns = worker_->clock_ns();
  // A kill changes no data and is no write for WAIT or read-your-writes (nor for the
  // latency histograms: kind 0).
  s.kind = d.side_conn ? 0 : d.route == Route::kRead ? 1 : 2;
  s.is_read = d.route == Route::kRead;
  s.cheap = s.is_read && CheapToRetry(d, req);
  s.may_write = d.route == Route::kWrite && d.may_write;
  s.side_conn = d.side_conn;
  s.sent_bytes = len;
  inflight_bytes_ += len;
  // Behind a request that waits for a backend, everything waits: order is the client's.
  if (!parked_.empty() || !Send(seq, &req, d, raw, len)) Park(seq, raw, len);
}

BackendGroup& ClientSession::GroupOf(uint64_t seq) {
  return *worker_->topology().group(SlotAt(seq).group);
}

BackendGroup& ClientSession::PinGroup() {
  return *worker_->topology().group(pin_group_);
}

bool ClientSession::Send(uint64_t seq, const Request* req, const RouteDecision& d, const char* raw,
                         size_t len) {
  Slot& s = SlotAt(seq);
  BackendGroup& group = GroupOf(seq);
  Backend* primary = group.primary();
  bool primary_ok = primary != nullptr && primary->serves_writes();
  bool keep = raw != s.request.data();  // a parked request is sent from its slot
  bool cluster = worker_->topology().cluster();
  uint64_t deadline = worker_->now() + worker_->timeout_ms();
  if (s.is_read) {
    ReadTarget t = PickReadTarget(req, d, group, s.cheap);
    if (t.wait) return false;
    if (t.replica != nullptr) {
      if (keep) s.request.Append(raw, len);
      s.on_replica = true;
      replica_reads_upto_ = std::max(replica_reads_upto_, seq + 1);
      worker_->stats().reads_replica++;
      retry_tokens_ = std::min(kRetryCap, retry_tokens_ + kRetryEarn);
      worker_->SharedConn(t.replica, cls_)->Send(this, seq, raw, len, deadline);
      ++inflight_;
      return true;
    }
    if (!primary_ok) return false;
    s.tried_primary = true;
    s.on_replica = false;
    // Kept in case the primary fails it and a replica can still answer (RetryOnReplica).
    if (keep && (group.size() > 1 || cluster)) s.request.Append(raw, len);
    (t.for_read_your_writes ? worker_->stats().reads_primary_ryw
                            : worker_->stats().reads_primary)++;
  } else {
    if (!primary_ok) return false;
    // Kept (when small) so a write refused with READONLY by a node that has just stopped
    // being the primary can go to the new one; with Redis Cluster always, for MOVED.
    if (keep && (len <= kKeepWriteBytes || cluster)) s.request.Append(raw, len);
    worker_->stats().writes++;
    if (s.side_conn) {
      // Not behind anyone's requests (a running script holds its connection's queue): a
      // connection of its own, in database 0 (SELECT is refused while a script runs).
      ConnClass side = cls_;
      side.db = 0;
      BackendConn* c = worker_->SideConn(primary, side);
      if (c == nullptr) {
        // On the shared connection it could wait behind the script it is meant to stop.
        CompleteError(seq, errors::kTooManyKills);
        return true;
      }
      c->Send(this, seq, raw, len, deadline);
      ++inflight_;
      return true;
    }
    ++writes_inflight_;
    last_write_group_ = static_cast<uint16_t>(group.id());
    writes_sent_upto_ = std::max(writes_sent_upto_, seq + 1);
  }
  // All of one client's primary requests share one connection, so they run in the order the
  // client sent them (a read behind its own write sees it).
  Buffer* donor = may_donate_ && raw == in_.data() && !s.is_read ? &in_ : nullptr;
  BackendConn* conn = worker_->PrimaryConnFor(primary, id_, cls_);
  if (conn->Send(this, seq, raw, len, deadline, donor)) {
    donated_ = true;
    may_donate_ = false;
  }
  ++inflight_;
  // A request this large holds up everything queued behind it on the connection for as long
  // as its bytes take to reach Redis (a 30 MB SET: a quarter of a second here). So the
  // connection leaves the pool with it, and everyone's later requests go on a fresh one.
  // What this client sent before is ahead of it on the same connection; what it sends next
  // waits until it is answered (BarrierHolds), so nothing of its own overtakes it; so do other
  // clients' later requests while they have requests queued behind it (FenceQueued).
  if (len >= std::max<size_t>(worker_->config().client.max_inflight_bytes, kRetireAt) &&
      worker_->RetireSharedConn(conn)) {
    HoldUntilAnswered(seq);
  }
  return true;
}

bool ClientSession::MayWait(const BackendGroup& g) const {
  // A request waits (up to the timeout) for a backend while the topology is changing: with
  // Sentinel (or Redis Cluster) a failover is expected to name a new primary; without it, a
  // primary lost less than a timeout ago may come back (restart, switchover). One gone for
  // longer fails fast.
  const Backend* primary = g.primary();
  if (primary == nullptr || worker_->config().external_topology()) return true;
  if (primary->serves_writes()) return true;  // a lost connection: a new one is opened
  return MonotonicMs() - primary->unavailable_since_ms() < worker_->timeout_ms();
}

void ClientSession::Park(uint64_t seq, const char* raw, size_t len) {
  Slot& s = SlotAt(seq);
  if ((parked_.empty() && !MayWait(GroupOf(seq))) ||
      (s.park_deadline != 0 && worker_->now() >= s.park_deadline)) {
    // (A request parked before keeps its first deadline: sent again and failed again, it was
    // otherwise parked anew without end.)
    FailParked(seq);
    return;
  }
  if (raw != s.request.data()) {
    s.request.Clear();
    s.request.Append(raw, len);
  }
  // Once: a request parked again (READONLY from another node) keeps its first deadline.
  if (s.park_deadline == 0) s.park_deadline = worker_->now() + worker_->timeout_ms();
  // In the order the client sent them: one parked again (refused, or its connection lost) goes
  // before later ones. A later one first could wait forever on a barrier (see RetryParked)
  // that only this one's answer lifts, or overtake it.
  parked_.push_back(seq);
  for (size_t i = parked_.size() - 1; i > 0 && parked_[i - 1] > parked_[i]; --i) {
    std::swap(parked_[i - 1], parked_[i]);
  }
  ++inflight_;  // the worker calls back (RetryParked) until it is sent or answered
  worker_->Park(this);
}

bool ClientSession::RetryParked() {
  if (resubscribing_ && !closed_) TryResubscribe();
  if (waiting_to_pin_) {
    waiting_to_pin_ = false;
    if (!closed_) {
      ResumeReading();
      ProcessInput();  // holds the request again (waiting_to_pin_) while it must wait
    }
  }
  uint64_t now = worker_->now();
  RouteDecision plain;
  while (!parked_.empty()) {
    uint64_t seq = parked_.front();
    Slot& s = SlotAt(seq);
    // A request after a barrier (a connection that left the pool still carries earlier ones of
    // this client) waits for it as a new one would, whatever its park deadline: sent now, it
    // could run before them. Those before the barrier may go: the barrier waits for them.
    if (!closed_ && barrier_seq_ != kNoParent && seq > barrier_seq_ && BarrierHolds()) break;
    if (!closed_) {
      plain.route = s.is_read ? Route::kRead : Route::kWrite;
      // A write sent behind reads of this client that went to replicas meanwhile (they were
      // parked before it) waits for them, as a new one would (WaitsForReplicaReads).
      if (!s.is_read && ReplicaReadsAhead(nullptr, plain, seq) != kNoParent) break;
      // The slot's owner may have changed meanwhile (a shard failover, a MOVED).
      if (s.hslot != kNoSlot) {
        uint16_t g = worker_->topology().GroupOfSlot(s.hslot);
        if (g != Topology::kNoGroup) s.group = g;
      }
      if (Send(seq, nullptr, plain, s.request.data(), s.request.size())) {
        parked_.pop_front();
        --inflight_;
        continue;
      }
      if (now < s.park_deadline) break;
    }
    parked_.pop_front();
    --inflight_;
    if (!closed_) FailParked(seq);
  }
  if (closed_) worker_->MarkDirty(this);  // deletable now
  return !parked_.empty() || waiting_to_pin_ || (resubscribing_ && !closed_);
}

void ClientSession::FailParked(uint64_t seq) {
  worker_->stats().errors++;
  if (SlotAt(seq).is_read) {
    // Why the primary cannot answer either (a certificate refused, connection refused...).
    const Backend* primary = GroupOf(seq).primary();
    std::string why = primary != nullptr ? primary->last_error() : std::string();
    CompleteError(seq, why.empty() ? std::string(errors::kNoBackendForRead)
                                   : std::string(errors::kNoBackendForRead) + " (primary " +
                                         primary->name() + ": " + why + ")");
  } else {
    CompleteError(seq, PrimaryUnavailable(GroupOf(seq).primary()));
  }
}

std::string ClientSession::PrimaryUnavailable(const Backend* primary) const {
  std::string msg(errors::kPrimaryDown);
  if (primary == nullptr) {
    return msg + " (no primary known yet: " +
           (worker_->config().cluster()           ? std::string("the cluster has not named one")
            : worker_->config().sentinels.empty() ? std::string("none configured")
                                                  : "the Sentinels have not named one") +
           ")";
  }
  msg += " (" + primary->name();
  std::string why = primary->last_error();
  if (!why.empty()) msg += ": " + why;
  return msg + ")";
}

bool ClientSession::PrimaryHeld(const Backend* primary) const {
  // Up but not confirmed (a failover's fence before the Sentinels name the new primary, a
  // connection closed under it): it took no writes since, but it may hold the client's
  // last one. With Sentinel or a cluster that lasts until the new primary is named; a static
  // primary unconfirmed for a whole timeout is not coming back as it was.
  if (primary == nullptr || primary->serves_writes() || !primary->up()) return false;
  return worker_->config().external_topology() ||
         MonotonicMs() - primary->unavailable_since_ms() < worker_->timeout_ms();
}

ClientSession::ReadTarget ClientSession::PickReadTarget(const Request* req, const RouteDecision& d,
                                                        const BackendGroup& g, bool cheap) {
  ReadTarget t;
  Worker& w = *worker_;
  const Backend* primary = g.primary();
  bool primary_up = primary != nullptr && primary->serves_writes();
  bool primary_held = !primary_up && PrimaryHeld(primary);  // the call only when it matters
  int64_t need = ReadYourWrites::kAny;
  if (w.config().read_your_writes) {
    // A read behind the client's own unanswered write goes after it, on the same primary
    // connection; after the write, to a replica only once that replica has it.
    need =
        writes_inflight_ > 0 ? ReadYourWrites::kPrimaryOnly : Ryw(g.id()).Requirement(g.progress());
    // Nothing newer than the replicas' data can be written while the primary is down, and
    // the replicas that serve reads then are those holding the newest data left: a replica
    // known to have the client's write if there is one, else the best there is. Except the
    // client's own write still in flight: if it was never sent it runs on the next primary,
    // so the read waits to go after it (or for it to fail).
    if (!primary_up && need == ReadYourWrites::kPrimaryOnly) {
      if (writes_inflight_ > 0 || primary_held) {
        t.wait = true;
        return t;
      }
      need = ReadYourWrites::kAny;
    }
  }
  if (d.cursor_arg != 0 && req != nullptr) {
    // A cursor is only valid on the server that issued it, and clients interleave iterations
    // (SCAN over keys, HSCAN of each): all of a client's cursor commands stay on one server.
    // A continued iteration goes there while it serves reads; a new one too, unless
    // read-your-writes rules that server out.
    bool continued = d.cursor_arg < req->argc && req->arg(d.cursor_arg) != "0";
    if (scan_on_primary_ && primary_up &&
        (continued || need == ReadYourWrites::kPrimaryOnly || need >= 0)) {
      t.for_read_your_writes = need != ReadYourWrites::kAny;
      return t;
    }
    if (scan_backend_ != nullptr && scan_backend_->serves_reads() &&
        scan_backend_->group() == g.id() &&
        (continued || need == ReadYourWrites::kAny ||
         (need >= 0 && scan_backend_->offset() >= need))) {
      t.replica = scan_backend_;
      return t;
    }
  }
  if (need != ReadYourWrites::kPrimaryOnly) t.replica = w.PickReplica(g, need, Steered(cheap));
  if (t.replica == nullptr && !primary_up && need >= 0) {
    if (primary_held) {
      t.wait = true;
      return t;
    }
    t.replica = w.PickReplica(g, -1, Steered(cheap));
  }
  t.for_read_your_writes = t.replica == nullptr && need != ReadYourWrites::kAny;
  if (d.cursor_arg != 0) {
    scan_backend_ = t.replica;
    scan_on_primary_ = t.replica == nullptr;
  }
  return t;
}

uint64_t ClientSession::ReplicaReadsAhead(const Request* req, const RouteDecision& d,
                                          uint64_t before) {
  const uint64_t end = std::min(replica_reads_upto_, before);
  if (end <= head_) return kNoParent;
  // The write's keys (at most a request's argument views; beyond, or none, or moving: any).
  uint64_t tags[RequestParser::kMaxArgViews];
  size_t ntags = 0;
  bool any = true;
  const CommandInfo* info = d.info;
  // (Movable keys count as any: SORT ... STORE dst, GEORADIUS ... STORE, MIGRATE ... KEYS.)
  if (req != nullptr && info != nullptr && info->first_key > 0 && info->key_step > 0 &&
      !info->is(kCmdMovableKeys)) {
    const int argc = static_cast<int>(req->argc);
    const int last = info->last_key >= 0 ? info->last_key : argc + info->last_key;
    if (last < argc && static_cast<size_t>(last) < req->nviews) {
      any = false;
      for (int i = info->first_key; i <= last; i += info->key_step) {
        tags[ntags++] = KeyTag(req->argv[i]);
      }
    }
  }
  uint64_t ahead = kNoParent;
  for (uint64_t q = head_; q < end; ++q) {
    Slot& r = SlotAt(q);
    if (r.done || !r.on_replica) continue;
    bool same = any;
    if (!same) {
      const uint64_t tag = ReadKeyTagOf(r);
      same = tag == kAnyKey;
      for (size_t i = 0; i < ntags && !same; ++i) same = tags[i] == tag;
    }
    if (same) ahead = q;
  }
  return ahead;
}

uint64_t ClientSession::ReadKeyTagOf(Slot& s) {
  // Worked out here, from the copy kept for failover, rather than for every read sent: only a
  // write behind reads still out on replicas asks (a pipeline mixing the two).
  if (!s.key_tag_known) {
    s.key_tag_known = true;
    s.key_tag = kAnyKey;
    std::vector<std::string_view> args;
    if (SplitRequest(s.request.data(), s.request.size(), &args) && !args.empty()) {
      Request req;
      req.argc = args.size();
      req.nviews = std::min(args.size(), RequestParser::kMaxArgViews);
      for (size_t i = 0; i < req.nviews; ++i) req.argv[i] = args[i];
      s.key_tag = ReadKeyTag(req, worker_->router().Classify(req));
    }
  }
  return s.key_tag;
}

bool ClientSession::WaitsForReplicaReads(const Request& req, const RouteDecision& d) {
  // Writes that change data, and sessions that may (MULTI, BLPOP...). Not SCRIPT KILL: the
  // read it is meant to stop may be the one it would wait for.
  const bool writes =
      (d.route == Route::kWrite && d.may_write && !d.side_conn) || d.route == Route::kPin;
  if (!writes) return false;
  const uint64_t ahead = ReplicaReadsAhead(&req, d, next_);
  if (ahead == kNoParent) return false;
  // Parsed again once they are answered (AdvanceHead, MaybeResume): the barrier holds reading.
  HoldUntilAnswered(ahead);
  paused_ = true;
  fenced_ = true;
  worker_->stats().fenced_writes++;
  return true;
}

bool ClientSession::CheapToRetry(const RouteDecision& d, const Request& req) {
  // Redis flags `fast` what runs in O(1) or O(log N) per argument; with a fixed argument
  // count (GET, HGET, ZSCORE...) or only a few (MGET of some keys) that is cheap however
  // large the data set. MGET, EXISTS or HMGET of a million keys are flagged fast as well.
  return d.info != nullptr && d.info->is(kCmdFast) &&
         (d.info->arity > 0 || req.argc <= kCheapRetryMaxArgs);
}

bool ClientSession::RetryAllowed(uint64_t timeout_pass, bool free) {
  // A read that timed out may be slow itself: re-running it on the primary doubles exactly
  // the load that hurts, and a burst of them would stall the primary for everyone. So a
  // re-run costs a token of the client's budget: each read it sends earns kRetryEarn (20 %
  // of its reads may be re-run), at most kRetryCap saved. A client that has not earned one
  // (a new connection) may take the worker's spare one, refilled once a second, so a quiet
  // client still fails over while a burst of new connections with slow reads gets at most
  // one re-run. The client's requests found late in the same check cost one token together
  // (a pipeline stuck behind a stalled replica fails over as a whole).
  //
  // `free`: a read that never reached the server, or a cheap one (CheapToRetry: GET, HGET...)
  // late on a replica that sent nothing at all for the whole timeout. Neither is the slow
  // read the budget is about: the replica stalled (stopped, swapping, or busy with someone
  // else's slow command; it is marked down for it), and on the primary the read costs what
  // it would have cost there. It is re-run without a token, so a replica that hangs fails
  // over every client's plain reads, new connections' included (a PHP client connects per
  // request), as the proxy promises. (Cheap reads late behind large replies the replica is
  // still sending, 50 GETs of 16 MB, stay within the budget: re-run, they would double
  // exactly that transfer.)
  if (free) {
    worker_->stats().read_retries++;
    return true;
  }
  if (timeout_pass != 0 && timeout_pass == last_retry_pass_) {
    (last_retry_allowed_ ? worker_->stats().read_retries : worker_->stats().read_retries_refused)++;
    return last_retry_allowed_;
  }
  bool allowed = false;
  if (retry_tokens_ >= 1.0) {
    retry_tokens_ -= 1.0;
    allowed = true;
  } else {
    allowed = worker_->TakeSpareRetry();
  }
  last_retry_pass_ = timeout_pass;
  last_retry_allowed_ = allowed;
  (allowed ? worker_->stats().read_retries : worker_->stats().read_retries_refused)++;
  return allowed;
}

void ClientSession::RetryOnPrimary(uint64_t seq, bool failover) {
  Backend* primary = GroupOf(seq).primary();
  Slot& s = SlotAt(seq);
  if (primary == nullptr || !primary->serves_writes()) {
    s.tried_primary = true;
    if (!s.tried_replica && RetryOnReplica(seq)) return;
    // Nothing can take it now: it waits for a backend like a new request would.
    Park(seq, s.request.data(), s.request.size());
    return;
  }
  s.tried_primary = true;
  s.on_replica = false;
  if (failover) worker_->stats().failovers++;
  worker_->PrimaryConnFor(primary, id_, cls_)
      ->Send(this, seq, s.request.data(), s.request.size(), worker_->now() + worker_->timeout_ms());
  ++inflight_;
}

bool ClientSession::RetryOnReplica(uint64_t seq) {
  // A read sent to the primary (read-your-writes, or a replica's failover) that the primary
  // could not answer. Once the primary is known to be down nothing newer than the replicas'
  // data can be written, so a replica that serves reads is the best answer there is. While
  // it is merely slow, only a replica known to have this client's writes may answer.
  Slot& s = SlotAt(seq);
  s.tried_replica = true;
  if (s.request.empty()) return false;
  // A write of this client sent after it may have run and reached the replicas: the read
  // would see it (with read_your_writes or not).
  if (writes_sent_upto_ > seq + 1) return false;
  int64_t need = ReadYourWrites::kAny;
  BackendGroup& g = GroupOf(seq);
  const Backend* primary = g.primary();
  if (worker_->config().read_your_writes) {
    // Not ahead of the client's own write: one waiting for a primary (never sent), or one
    // still in flight, which may be sent to the next primary.
    if (writes_inflight_ > 0 || (!parked_.empty() && parked_.front() < seq)) return false;
    if (primary != nullptr && (primary->serves_writes() || PrimaryHeld(primary))) {
      need = Ryw(g.id()).Requirement(g.progress());
      if (need == ReadYourWrites::kPrimaryOnly) return false;
    }
  }
  Backend* replica = worker_->PickReplica(g, need, Steered(s.cheap));
  if (replica == nullptr) return false;
  worker_->stats().failovers++;
  s.on_replica = true;
  replica_reads_upto_ = std::max(replica_reads_upto_, seq + 1);
  worker_->SharedConn(replica, cls_)
      ->Send(this, seq, s.request.data(), s.request.size(), worker_->now() + worker_->timeout_ms());
  ++inflight_;
  return true;
}

bool ClientSession::MaySendAgain(uint64_t first_seq, size_t count) {
  // Each send costs the server the reply (and the first one it holds until the slow reader
  // ahead has read): only for clients whose replies are known to be small (a new client's
  // may be anything while large replies are about: 50 redis-benchmark clients' first GETs of
  // a 16 MB value were all built twice), and once.
  if (closed_ || RepliesMayBeLarge()) return false;
  // Run again later, they must not see what the client asked for after them, nor run after
  // a later request of its that has run: they are all it asked for since the first, and none
  // of its writes is in flight or among them (a GET sent again after its own SET saw the new
  // value; a GET sent again after the client's next GET had run elsewhere read newer than
  // that one).
  if (writes_inflight_ > 0 || first_seq < head_ || next_ - first_seq != count) return false;
  for (uint64_t q = first_seq; q < next_; ++q) {
    const Slot& s = SlotAt(q);
    // A part of a request split over shards, a read behind its ASKING, or a passthrough AUTH
    // is answered on its own terms; a reply already begun cannot be taken from another
    // connection.
    if (!s.is_read || s.kind == 2 || s.may_write || s.stream || s.resent || s.request.empty() ||
        s.done || s.streamed > 0 || s.parent != kNoParent || s.auth_user != 0 || s.discard ||
        s.redirects > 0) {
      return false;
    }
  }
  return true;
}

bool ClientSession::WaitsBehindSlowReader(uint64_t seq) {
  return RepliesMayBeLarge() && SlotAt(seq).is_read;
}

bool ClientSession::Steered(bool cheap) const {
  // Only cheap reads: a slow one (EVAL_RO, KEYS, SUNION) may be what keeps the replica busy,
  // and moved it would burden the primary as well. Not of clients whose replies are large,
  // nor of new ones while large replies are about; a new client's otherwise (one connecting
  // per request: 9 of 59 GETs waited out a 3 s stop, against 40 when only clients known to
  // have small replies went elsewhere). Moving a read not sent yet costs nothing twice, unlike
  // releasing one already sent (see CheapReadWaiting).
  return cheap && !RepliesMayBeLarge();
}

bool ClientSession::RepliesMayBeLarge() const {
  return reply_estimate_ >= kResendBelow ||
         (reply_estimate_ == 0 && worker_->LargeRepliesSeenWithin(kLargeRepliesMemoryMs));
}

bool ClientSession::CheapReadWaiting(uint64_t seq, bool stalled) {
  const Slot& s = SlotAt(seq);
  if (closed_ || !s.is_read || !s.cheap || s.streamed != 0 || s.done) return false;
  if (!s.on_replica) {
    // Sent to this node as the primary, which a failover has demoted since (a hung primary
    // the Sentinels replaced): whatever its size, nothing else waits for that node. Not when
    // the client wrote after it: sent to the new primary, that write would be in the answer.
    return !s.rerun && !s.timed_out && writes_sent_upto_ <= seq + 1;
  }
  // A GET is cheap to run, not to send: one of a 16 MB value run again doubles that transfer.
  // A new client's may be anything: never-readers' first GETs of 16 MB, moved from a replica
  // busy building their like, kept a well-behaved client's SET waiting 2.3-3.0 s on the
  // primary (bench/soak.py; also when new clients were let go while no large reply had been
  // seen yet: the first ones were still being built).
  return stalled && reply_estimate_ != 0 && reply_estimate_ < kResendBelow;
}

bool ClientSession::SendAgain(uint64_t first_seq, size_t count, BackendConn* from,
                              uint64_t held_ms) {
  if (!MaySendAgain(first_seq, count)) return false;
  // The same server, in the same class (database, user) as the first send: what a read sees
  // is what it would have seen there, a little later. One connection for all of them, in
  // order (on a primary, the client's own). Not a retry for a failure: the retry budget is
  // not charged.
  Backend* b = from->backend();
  BackendConn* to = b->is_primary() ? worker_->PrimaryConnFor(b, id_, from->conn_class())
                                    : worker_->SharedConn(b, from->conn_class());
  if (to == from) return false;  // (it is out of the pool: not expected)
  const uint64_t deadline = worker_->now() + worker_->timeout_ms();
  for (uint64_t q = first_seq; q < next_; ++q) {
    Slot& s = SlotAt(q);
    s.resent = true;
    worker_->stats().resent++;
    to->Send(this, q, s.request.data(), s.request.size(), deadline);
    // Behind slow readers there as well, it goes on at once: a second in all, not per hop.
    to->CarryHeld(this, q, held_ms);
  }
  // Nothing more of this client's is sent until they are answered: a later request on a
  // connection that is ready would run before them where `to` has yet to connect (a
  // replica's clients are not held when a connection leaves the pool, see FenceQueued).
  HoldUntilAnswered(next_ - 1);
  return true;  // inflight_ stays: the first sends' entries are cleared, these count instead
}

// ---- backend callbacks ----

bool ClientSession::LooksAbsent(const char* data, size_t len) {
  std::string_view r(data, len);
  if (r == "$-1\r\n" || r == "*-1\r\n" || r == "_\r\n" || r == "*0\r\n" || r == "~0\r\n" ||
      r == "%0\r\n" || r == ":0\r\n" || r == ":-2\r\n" || r == "+none\r\n") {
    return true;
  }
  // An array with a null among its elements (MGET of a key that moved).
  if (len > 4 && data[0] == '*') {
    return r.find("\r\n$-1\r\n") != std::string_view::npos ||
           r.find("\r\n_\r\n") != std::string_view::npos;
  }
  return false;
}

void ClientSession::NoteWriteDone(bool may_have_written, const BackendGroup& g) {
  if (writes_inflight_ > 0) --writes_inflight_;
  if (may_have_written) Ryw(g.id()).OnWrite(g.progress());
}

void ClientSession::OnReply(uint64_t seq, Backend* from, const char* data, size_t len,
                            bool is_error) {
  --inflight_;
  if (closed_) {
    worker_->MarkDirty(this);  // lets the worker delete us once nothing is in flight
    return;
  }
  Slot& s = SlotAt(seq);
  if (s.auth_user != 0) {
    std::string_view text(data, len);
    if (!is_error) return FinishPassthroughAuth(seq, {});
    return FinishPassthroughAuth(seq, text.substr(1, len >= 3 ? len - 3 : 0));
  }
  if (worker_->topology().cluster()) {
    if (is_error && FollowRedirect(seq, from, data, len)) return;
    if (!is_error && s.is_read && !s.tried_primary && !from->is_primary() &&
        LooksAbsent(data, len)) {
      // A replica of a shard whose slot is being moved away no longer has the keys already
      // migrated (MIGRATE deleted them), and it answers for the slot without the ASK its
      // primary would give. "No such key" from a replica is therefore asked again of the
      // primary, which has it, redirects, or confirms.
      worker_->stats().absent_rechecks++;
      RetryOnPrimary(seq, false);
      return;
    }
  }
  if (s.kind == 2) NoteWriteDone(s.may_write, GroupOf(seq));
  if (is_error && s.is_read && !from->is_primary() && !s.tried_primary) {
    ReplicaRefusal r = ClassifyReplicaError(data, len);
    if (r != ReplicaRefusal::kNone) {
      if (r == ReplicaRefusal::kUnhealthy) {
        std::string_view line(data + 1, len > 3 ? len - 3 : 0);
        from->MarkDown("replied " + std::string(line.substr(0, line.find(' '))));
      }
      RetryOnPrimary(seq);
      return;
    }
  }
  if (is_error && !s.is_read && len > 9 && std::memcmp(data, "-READONLY", 9) == 0 &&
      from == GroupOf(seq).primary()) {
    // The "primary" refused a write as a replica: the topology changed under us (a failover
    // or switchover the monitor has not seen yet). The write was not applied. It waits for
    // the monitor to confirm a primary and goes there, not blindly elsewhere; a write whose
    // bytes were not kept (a large one) gets Redis's answer.
    from->Disqualify();
    from->set_last_error("it answered READONLY: no longer a primary");
    if (!s.request.empty()) {
      worker_->stats().failovers++;
      Park(seq, s.request.data(), s.request.size());
      return;
    }
  }
  Complete(seq, data, len);
}

void ClientSession::OnReplyPart(uint64_t seq, const char* data, size_t len) {
  if (closed_) return;
  Slot& s = SlotAt(seq);
  if (s.parent != kNoParent || s.discard) {
    // A part's reply is merged whole (OnPartReply): its leading bytes wait here.
    s.reply.Append(data, len);
    return;
  }
  // The reply is at least this large already: later requests are weighed by it now. A bulk
  // string says its size in its first bytes: without it, the estimate grew part by part and
  // a client pipelining GETs of 16 MB had a dozen more sent on while the first one began.
  size_t announced = s.streamed == 0 ? AnnouncedBulkSize(data, len) : 0;
  s.streamed += len;
  if (s.kind != 0) {
    reply_estimate_ = std::max({reply_estimate_, s.streamed, announced});
    NoteLargeReply(std::max(s.streamed, announced));
  }
  // A reply larger than the bound is delivered, not counted (as when it arrives whole).
  if (s.streamed > worker_->config().client.max_client_buffer_bytes) {
    oversize_bytes_ = std::max(oversize_bytes_, s.streamed);
  }
  if (seq == head_) {
    size_t sent = WriteThrough(data, len);
    if (out_.writable() < len - sent && out_.capacity() < kStreamRoom) {
      // The client's socket is full and the reply streams on: room for what may queue here
      // before the backend connection waits for this client (its stream window), at once.
      // Growing part by part doubled the buffer several times per window, each time
      // copying all it held (a quarter of the proxy's CPU on 16 MB GETs, `perf`). Past
      // that, growth doubles as usual (a backlog of many replies).
      out_.TryPrepareWrite(len - sent + kStreamRoom);
    }
    out_.Append(data + sent, len - sent);
  } else {
    s.reply.Append(data, len);
    held_bytes_ += len;
  }
  // Counted part by part, not once per loop turn: a connection resumed with megabytes
  // waiting in its socket reads them all in one turn (up to 32 reads), and judged the total
  // by what the clients held before it (BackendConn::StreamPart): readers were closed for it.
  Account();
  worker_->MarkDirty(this);
}

void ClientSession::OnPush(uint64_t seq, const char* data, size_t len) {
  if (closed_) return;
  Slot& s = SlotAt(seq);
  // The proxy's own request, or a part of a split one: nobody to show it to (it would be
  // merged into the part's reply).
  if (s.parent != kNoParent || s.discard) return;
  if (seq == head_) {
    out_.Append(data, len);
  } else {
    s.reply.Append(data, len);  // ahead of the reply, which Complete appends
    held_bytes_ += len;
  }
  Account();
  worker_->MarkDirty(this);
}

size_t ClientSession::WriteThrough(const char* data, size_t len) {
  // A large reply at the head of the line with nothing queued before it goes from the
  // backend's buffer to the client's socket directly: one copy less of every byte (a 1 MB
  // GET was bound by copying). Small replies keep being batched into one write per turn.
  if (len < kWriteThroughAt || tls_ || writing_ || !out_.empty() || !wbuf_.empty() || closed_) {
    return 0;
  }
  uv_buf_t b = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(len));
  int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1);
  return n > 0 ? static_cast<size_t>(n) : 0;  // errors show at the next write or read
}

void ClientSession::OnBackendFailure(uint64_t seq, Backend* from, const std::string& reason,
                                     bool timeout, uint64_t timeout_pass, bool unsent,
                                     bool stalled) {
  --inflight_;
  if (closed_) {
    worker_->MarkDirty(this);
    return;
  }
  Slot& s = SlotAt(seq);
  if (s.auth_user != 0) {
    // The connection opened as the user was refused: Redis's own reason (WRONGPASS...).
    for (std::string_view prefix : {"AUTH refused: ", "HELLO 3 refused: "}) {
      if (std::string_view(reason).substr(0, prefix.size()) == prefix) {
        return FinishPassthroughAuth(seq, std::string_view(reason).substr(prefix.size()));
      }
    }
    return FinishPassthroughAuth(seq, std::string(errors::kPrimaryLost) + " (" + reason + ")");
  }
  if (s.parent != kNoParent) s.reply.Clear();  // a part's leading bytes: it is sent again
  if (s.streamed > 0) {
    // Part of the reply has been passed on: neither a retry nor an error can follow it in
    // the stream, so the connection ends, as it would have with Redis itself.
    Log().info("client {}: connection to {} lost in the middle of a {}-byte reply ({}); closing",
               id_, from->name(), s.streamed, reason);
    worker_->stats().errors++;
    Close();
    return;
  }
  // A read that timed out once and again: a slow read, not a slow server (see below).
  const bool timed_out_before = s.timed_out;
  if (timeout) s.timed_out = true;
  // A write that failed or timed out may still have been applied.
  if (s.kind == 2) NoteWriteDone(s.may_write, GroupOf(seq));
  // A shard's node failing may be the start of a failover: the slot map is read again soon.
  if (worker_->topology().cluster()) worker_->topology().RequestRefresh();
  if (s.is_read && !from->is_primary() && !s.tried_primary) {
    if (!timeout || RetryAllowed(timeout_pass, unsent || (s.cheap && stalled))) {
      RetryOnPrimary(seq);
      return;
    }
    worker_->stats().errors++;
    CompleteError(seq, "ERR kompress: read timed out on replica " + from->name() + " (" + reason +
                           "); not re-run on the primary: this client's retry budget is spent "
                           "(slow reads are not doubled onto the primary)");
    return;
  }
  if (s.is_read && !s.request.empty() && !parked_.empty() && parked_.front() < seq) {
    // An earlier request of this client was never sent and waits for a primary (a write on
    // the same lost connection): a replica's answer now would not have it. The read goes
    // after it.
    Park(seq, s.request.data(), s.request.size());
    return;
  }
  // Not a read that had timed out on a replica already: a 7 s EVAL_RO (timeout 5 s) ran on
  // the replica, then on the primary (the retry budget's re-run), then on the other replica.
  if (s.is_read && from->is_primary() && !s.tried_replica && !(timeout && timed_out_before) &&
      RetryOnReplica(seq)) {
    return;
  }
  if (s.is_read && timeout && !s.on_replica && !s.rerun && !timed_out_before &&
      !s.request.empty() && !from->is_primary() && writes_sent_upto_ <= seq + 1 &&
      RetryAllowed(timeout_pass, s.cheap && stalled)) {
    // Sent to the primary, which then went silent and has been replaced (a failover): the
    // read runs again where reads go now, once, as after a lost connection. Not when the
    // client wrote after it: sent to the new primary, that write would be in the answer.
    s.rerun = true;
    Park(seq, s.request.data(), s.request.size());
    return;
  }
  if (s.is_read && !timeout && !s.request.empty() && (!s.rerun || unsent)) {
    // A read changes nothing, so one whose connection to the primary was lost (CLIENT KILL,
    // a restart, a failover) can run again: on a new connection, or on the primary the
    // Sentinels or the cluster promote, up to the timeout. Once: a read that loses its
    // connection again is what closes it (over the server's output buffer limit, say), and
    // sent again and again it would take every other request on the connection down too.
    // One that was never sent (the new connection refused: the primary just died, and the
    // monitor has not seen it yet) did not close anything, and waits on.
    s.rerun = true;
    Park(seq, s.request.data(), s.request.size());
    return;
  }
  if (!s.is_read && unsent) {
    // Never sent, so certainly not applied: it waits for a primary like a new write (or
    // gets "primary is unavailable" when it may not wait).
    if (!s.request.empty()) {
      Park(seq, s.request.data(), s.request.size());
      return;
    }
    worker_->stats().errors++;
    CompleteError(seq, PrimaryUnavailable(from) + " (" + reason + ")");
    return;
  }
  worker_->stats().errors++;
  if (s.is_read) {
    // (From a replica when the primary failed it first: tried on both.)
    // (Sent to it as the primary, it is named so even if a failover has demoted it since.)
    const bool as_primary = from->is_primary() || !s.on_replica;
    CompleteError(seq, std::string("ERR kompress: read failed on ") +
                           (as_primary ? "primary " : "replica ") + from->name() + ": " + reason);
  } else {
    CompleteError(seq, std::string(timeout ? errors::kPrimaryTimeout : errors::kPrimaryLost) +
                           " (" + from->name() + ": " + reason + ")");
  }
}

// ---- ordered replies ----

std::vector<std::vector<ClientSession::Slot>>& ClientSession::RingPool() {
  thread_local std::vector<std::vector<Slot>> pool;
  return pool;
}

void ClientSession::TrimRingPool() {
  auto& pool = RingPool();
  if (pool.size() > kRingPoolKeep) {
    pool.resize(kRingPoolKeep);
    pool.shrink_to_fit();
  }
}

void ClientSession::MaybeReturnSlots() {
  // Only a ring nothing refers to any more: every slot answered and written, and no backend
  // still to call back about one (a late reply to a timed-out request names its slot).
  if (head_ != next_ || inflight_ != 0 || slots_.size() != kFirstSlots) return;
  auto& pool = RingPool();
  if (pool.size() >= kRingPoolMax) {
    // No room among the spares: the ring is freed rather than kept. Thousands of clients
    // answered in one burst (each PINGs once, then idles) would otherwise each hold one,
    // about 0.9 KB a client, until the idle sweep.
    std::vector<Slot>().swap(slots_);
    return;
  }
  for (Slot& s : slots_) {
    // Spares keep the small buffers they hold (the next client's read copies reuse them),
    // not a big value's. (NewSlot resets the rest when a slot is used again.)
    if (s.reply.capacity() > kFreeAtOnce || s.request.capacity() > kFreeAtOnce) {
      s.request.Clear();
      s.reply.ShrinkIfEmpty(kFreeAtOnce);
      s.request.ShrinkIfEmpty(kFreeAtOnce);
    }
  }
  pool.emplace_back().swap(slots_);
}

uint64_t ClientSession::NewSlot() {
  if (slots_.empty()) {
    // Idle clients hold no ring: one is taken from the worker thread's spares per burst of
    // requests, and given back when all are answered (MaybeReturnSlots).
    auto& pool = RingPool();
    if (pool.empty()) {
      slots_.resize(kFirstSlots);
    } else {
      slots_.swap(pool.back());
      pool.pop_back();
    }
  } else if (next_ - head_ == slots_.size()) {
    std::vector<Slot> bigger(slots_.size() * 2);
    for (uint64_t q = head_; q < next_; ++q) {
      bigger[q & (bigger.size() - 1)] = std::move(slots_[q & (slots_.size() - 1)]);
    }
    slots_.swap(bigger);
  }
  uint64_t seq = next_++;
  Slot& s = SlotAt(seq);
  s.done = false;
  s.is_read = false;
  s.tried_primary = false;
  s.tried_replica = false;
  s.rerun = false;
  s.resent = false;
  s.park_deadline = 0;
  s.streamed = 0;
  s.sent_bytes = 0;
  s.auth_user = 0;
  s.stream = false;
  s.kind = 0;
  s.may_write = false;
  s.side_conn = false;
  s.cheap = false;
  s.on_replica = false;
  s.key_tag_known = false;
  s.timed_out = false;
  s.reply.Clear();
  s.request.Clear();
  s.group = 0;
  s.hslot = kNoSlot;
  s.redirects = 0;
  s.discard = false;
  s.parent = kNoParent;
  s.part = 0;
  s.fan.reset();
  return seq;
}

void ClientSession::Complete(uint64_t seq, const char* data, size_t len, bool from_server) {
  Slot& s = SlotAt(seq);
  if (s.parent != kNoParent || s.discard) {
    // A part of a split request, or the proxy's own ASKING: never shown as such. The slot
    // is settled before the merge, which may complete the parent and take more input (the
    // ring may grow: `s` is not used after it).
    uint64_t parent = s.parent;
    uint32_t part = s.part;
    s.done = true;
    inflight_bytes_ -= s.sent_bytes;
    s.sent_bytes = 0;
    Buffer whole;
    if (parent != kNoParent && !s.reply.empty()) {
      // Leading bytes of a large part reply arrived before (OnReplyPart).
      std::swap(whole, s.reply);
      whole.Append(data, len);
      data = whole.data();
      len = whole.size();
    }
    s.reply.Clear();
    if (parent != kNoParent) OnPartReply(parent, part, data, len);
    if (seq == head_) AdvanceHead();
    return;
  }
  // One reply larger than the whole bound is Redis's legitimate answer (a big value): it is
  // written to a client that reads, not counted against it. Replies piling up are.
  if (len + s.streamed > worker_->config().client.max_client_buffer_bytes) {
    oversize_bytes_ = std::max(oversize_bytes_, len + s.streamed);
  }
  inflight_bytes_ -= s.sent_bytes;
  s.sent_bytes = 0;
  if (s.kind != 0) {
    // Only the server's replies say what this client's requests bring back. The proxy's own
    // errors (a timeout) are short: counting them would let a client whose large reads keep
    // timing out put ever more of them in flight, each one built by the server for nobody.
    if (from_server) {
      NoteReplySize(len + s.streamed);
      NoteLargeReply(len + s.streamed);
    }
    uint64_t ns = worker_->clock_ns() - s.start_ns;
    (s.kind == 1 ? worker_->stats().read_latency : worker_->stats().write_latency).Observe(ns);
  }
  if (seq == head_) {
    size_t sent = WriteThrough(data, len);
    out_.Append(data + sent, len - sent);
    s.done = true;
    ++head_;
    s.request.ShrinkIfEmpty(kKeepBuffer);
    AdvanceHead();
  } else {
    s.reply.Append(data, len);
    s.done = true;
    held_bytes_ += len;
    if (CountedReplyBytes() > worker_->config().client.max_client_buffer_bytes &&
        !CheckOutputLimit()) {
      return;
    }
  }
  worker_->MarkDirty(this);
}

void ClientSession::CompleteError(uint64_t seq, std::string_view msg) {
  scratch_.Clear();
  resp::AppendError(scratch_, msg);
  Complete(seq, scratch_.data(), scratch_.size(), false);
}

void ClientSession::ReplyNow(const Buffer& b) {
  if (capture_ != nullptr) {
    capture_->Append(b.data(), b.size());
    return;
  }
  uint64_t seq = NewSlot();
  Complete(seq, b.data(), b.size());
}

void ClientSession::ReplyErrorNow(std::string_view msg) {
  if (capture_ != nullptr) {
    resp::AppendError(*capture_, msg);
    return;
  }
  uint64_t seq = NewSlot();
  CompleteError(seq, msg);
}

void ClientSession::AdvanceHead() {
  while (head_ < next_) {
    Slot& s = SlotAt(head_);
    if (s.stream) {
      // Everything before the pinned session has been answered: its requests may go now.
      if (pin_ && !pin_->backlog.empty() && dedicated_ != nullptr) {
        dedicated_->SendRaw(pin().backlog.data(), pin().backlog.size());
        pin().backlog.Clear();
        while (!pin().backlog_kinds.empty()) {
          NoteSentPinned(pin().backlog_kinds.front());
          pin().backlog_kinds.pop_front();
        }
      }
      if (quit_pending_) {
        MaybeQuit();
        // The stream slot may have ended (and the +OK behind it with it).
        if (!SlotAt(head_).stream || head_ == next_) continue;
      }
      break;
    }
    if (!s.done) {
      if (!s.reply.empty() && s.parent == kNoParent && !s.discard) {
        // The first part of a large reply that arrived while earlier slots were open: it
        // goes out now, and the rest straight after it (OnReplyPart, Complete).
        out_.Append(s.reply.data(), s.reply.size());
        held_bytes_ -= s.reply.size();
        s.reply.Clear();
      }
      break;
    }
    out_.Append(s.reply.data(), s.reply.size());
    held_bytes_ -= s.reply.size();
    s.reply.Clear();
    s.reply.ShrinkIfEmpty(kKeepBuffer);
    s.request.Clear();
    s.request.ShrinkIfEmpty(kKeepBuffer);
    if (s.parent != kNoParent || s.discard) --aux_slots_;
    ++head_;
  }
  MaybeResume();
}

size_t ClientSession::CountedReplyBytes() const {
  size_t buffered = out_.size() + wbuf_.size() + held_bytes_;
  return buffered > oversize_bytes_ ? buffered - oversize_bytes_ : 0;
}

bool ClientSession::TakesRequestsWhileWaited() const {
  // A reply waits for this client to read it (WaitForDrain, or MBs of replies are unsent to
  // it): the client may be writing its whole pipeline before it reads anything, and would
  // wait forever for a proxy that stopped reading. Its requests are taken in, as Redis
  // takes them, up to the same bound as replies held for it; none is sent on until its
  // replies drain, since they would only queue more of its replies ahead of everyone else's
  // at the server. So is one whose requests wait for its pinned session to end (cluster,
  // AwaitsUnpin): reading on, the proxy sees it go away while a BLPOP still blocks for it,
  // which must then end rather than take the next element pushed for nobody.
  return (RepliesAwaitReader() || AwaitsUnpin()) &&
         in_.size() <= worker_->config().client.max_client_buffer_bytes / 2;
}

size_t ClientSession::UnreceivedBytes() const {
  const auto* s = reinterpret_cast<const uv_stream_t*>(&tcp_);
  size_t n = out_.size() + uv_stream_get_write_queue_size(s);
  // The kernel's send queue as well: a client reading slowly through a small window drains
  // it for a long while before libuv can write again (0.5 s without a byte taken from the
  // write queue, from a client reading 2 MB/s).
  uv_os_fd_t fd;
  int queued = 0;
  if (uv_fileno(reinterpret_cast<const uv_handle_t*>(&tcp_), &fd) == 0 &&
      ioctl(fd, SIOCOUTQ, &queued) == 0 && queued > 0) {
    n += static_cast<size_t>(queued);
  }
  return n;
}

bool ClientSession::RepliesAwaitReader() const {
  return !drain_waiters_.empty() || UnreadReaches(worker_->config().client.max_inflight_bytes / 2);
}

void ClientSession::WaitForDrain(BackendConn* c) {
  if (std::find(drain_waiters_.begin(), drain_waiters_.end(), c) == drain_waiters_.end()) {
    drain_waiters_.push_back(c);
  }
  if (paused_ && !reading_ && TakesRequestsWhileWaited() &&
      CountedReplyBytes() <= worker_->config().client.max_client_buffer_bytes / 2) {
    ResumeReading();
    paused_ = true;  // still: nothing is sent on until replies drain (MaybeResume)
  }
}

void ClientSession::ResumeStreams(bool drained) {
  std::vector<BackendConn*> waiting;
  waiting.swap(drain_waiters_);
  for (BackendConn* c : waiting) c->ResumeStream(drained);
}

bool ClientSession::InflightReaches(uint64_t depth, size_t bytes) const {
  uint64_t n = next_ - head_;
  if (n == 0) return false;
  if (n >= depth) return true;
  // A client's requests queue ahead of everyone else's on the shared connections: a pipeline
  // of large GETs or SETs would make others wait seconds for a small reply (Redis answers a
  // connection's requests in order). The bound counts what its requests will bring back, as
  // its earlier replies suggest, so small requests keep the full depth. The parts of a
  // request split over shards count as the one request their merged reply answers.
  uint64_t requests = n > aux_slots_ ? n - aux_slots_ : 0;
  if (reply_estimate_ == 0) return requests >= FirstBurst();
  return inflight_bytes_ + requests * reply_estimate_ >= bytes;
}

void ClientSession::NoteLargeReply(size_t len) {
  if (len >= worker_->config().client.max_inflight_bytes / kFirstBurst) worker_->NoteLargeReply();
}

uint64_t ClientSession::FirstBurst() const {
  // While large replies are about (one of max_inflight_bytes / kFirstBurst or more seen in
  // the last minute), a new client sends one request and waits for its reply's size. Its
  // requests queue ahead of others' on the shared connection: four GETs of 16 MB from a
  // client that never reads put 64 MB before whatever others sent next (read through into
  // that client's buffer), and the well-behaved clients waited up to 0.6 s (1.6 s when the
  // replica died and the reads went to the primary). The cost: a new connection that
  // pipelines at once waits one round trip more while large values are in use.
  return worker_->LargeRepliesSeenWithin(kLargeRepliesMemoryMs) ? 1 : kFirstBurst;
}

void ClientSession::HoldUntilAnswered(uint64_t seq) {
  if (barrier_seq_ == kNoParent || seq > barrier_seq_) barrier_seq_ = seq;
}

bool ClientSession::BarrierHolds() {
  if (barrier_seq_ == kNoParent) return false;
  // Every request up to the barrier answered (their slots perhaps reused since): the client
  // may go on. Not only the barrier's own: a client can have requests on two connections
  // that left the pool. The pinned session's slot never completes and runs elsewhere.
  // The scan resumes where it stopped (a slot answered stays so until head_ passes it).
  uint64_t i = std::max(barrier_scan_, head_);
  while (i <= barrier_seq_ && i < next_ && (SlotAt(i).done || SlotAt(i).stream)) ++i;
  barrier_scan_ = i;
  if (i > barrier_seq_ || i >= next_) barrier_seq_ = kNoParent;
  return barrier_seq_ != kNoParent;
}

void ClientSession::NoteReplySize(size_t len) {
  // Up quickly (requests sent with a low estimate cannot be called back), down slowly.
  if (reply_estimate_ == 0) {
    reply_estimate_ = std::max<size_t>(len, 1);
  } else if (len > reply_estimate_) {
    reply_estimate_ += (len - reply_estimate_) / 2;
  } else {
    reply_estimate_ -= (reply_estimate_ - len) / 16;
  }
}

void ClientSession::MaybeResume() {
  if (!drain_waiters_.empty() && StreamBacklog() <= kStreamResumeAt) ResumeStreams(true);
  const ClientLimits& lim = worker_->config().client;
  if (!paused_ || closed_ ||
      (dedicated_ == nullptr &&
       InflightReaches(lim.max_pipeline_depth / 2 + 1, lim.max_inflight_bytes / 2)) ||
      UnreadReaches(lim.max_inflight_bytes / 2 + 1) ||
      CountedReplyBytes() > lim.max_client_buffer_bytes / 4 || BarrierHolds() || AwaitsUnpin()) {
    // Held back, yet read while its replies wait for it (TakesRequestsWhileWaited): paused
    // before they piled up, a client writing its whole pipeline before it reads would wait
    // forever for a proxy waiting for it to read.
    if (paused_ && !closed_ && !reading_ && TakesRequestsWhileWaited() &&
        CountedReplyBytes() <= lim.max_client_buffer_bytes / 2) {
      ResumeReading();
      paused_ = true;  // still: nothing is sent on until replies drain
    }
    return;
  }
  // No longer held, even when reading had not stopped (TakesRequestsWhileWaited) and so
  // does not start again here.
  paused_ = false;
  ResumeReading();
  // Requests already buffered are not announced by another read callback.
  if (!in_.empty()) ProcessInput();
}

// ---- writing and closing ----

bool ClientSession::CheckOutputLimit() {
  // Unsent replies, including those that arrived ahead of an earlier slow one and messages
  // pushed to a subscriber (one reply larger than the bound excepted: it is delivered).
  size_t buffered = CountedReplyBytes();
  if (buffered <= worker_->config().client.max_client_buffer_bytes) return true;
  // As Redis drops a client past its output buffer limit: the proxy cannot slow the server
  // down for one client of a shared connection, so it must not hold the bytes either.
  std::string client = std::to_string(id_);
  LogFields f{
      {"event", "client_dropped"}, {"client", client}, {"reason", "max_client_buffer_bytes"}};
  Log().warn(
      "client {}{}: {} bytes of replies unread, over limits.max_client_buffer_bytes ({}); "
      "closing",
      id_, push_mode_ ? " (subscriber)" : "", buffered,
      worker_->config().client.max_client_buffer_bytes);
  worker_->stats().limit_drops[static_cast<size_t>(RespLimit::kClientBuffer)]++;
  worker_->stats().client_drops[static_cast<size_t>(DropReason::kClientBuffer)]++;
  Close();
  return false;
}

void ClientSession::Account() {
  // Requests taken in while a reply waits for the client to read it (TakesRequestsWhileWaited)
  // are held for it as its replies are: they count too, so many such clients cannot together
  // grow the proxy past the total bound.
  size_t now = CountedReplyBytes() + (RepliesAwaitReader() || AwaitsUnpin() ? in_.size() : 0);
  if (now == accounted_) return;
  auto delta = static_cast<int64_t>(now) - static_cast<int64_t>(accounted_);
  accounted_ = now;
  // Added up per worker and published once per loop turn (Worker::OnCheck), which also
  // enforces the total bound: no shared counter touched per client write.
  worker_->AddReplyBytes(delta);
}

void ClientSession::DropForTotalBudget() {
  std::string client = std::to_string(id_);
  LogFields f{
      {"event", "client_dropped"}, {"client", client}, {"reason", "max_total_client_buffer_bytes"}};
  Log().warn(
      "client {}{}: holds {} bytes of replies (and requests not yet sent on), the most while "
      "all clients together hold more than limits.max_total_client_buffer_bytes ({}); "
      "closing",
      id_, push_mode_ ? " (subscriber)" : "", accounted_,
      worker_->config().client.max_total_client_buffer_bytes);
  worker_->stats().client_drops[static_cast<size_t>(DropReason::kTotalClientBuffer)]++;
  Close();
}

void ClientSession::DropForUnreadReply() {
  std::string client = std::to_string(id_);
  LogFields f{{"event", "client_dropped"}, {"client", client}, {"reason", "unread_reply_timeout"}};
  Log().warn(
      "client {}: read nothing of its reply for {} ms while other clients' replies wait "
      "behind it; closing",
      id_, worker_->timeout_ms());
  worker_->stats().client_drops[static_cast<size_t>(DropReason::kUnreadReply)]++;
  Close();
}

void ClientSession::Flush() {
  if (closed_) return;
  // A bound that held reading back may have been lifted by something other than a reply
  // (a connection now waiting for this client to read).
  if (paused_ && !reading_) MaybeResume();
  if (closed_ || !CheckOutputLimit()) return;
  // What the client holds is counted once the write below is done with (OnWritten when it
  // all went at once): counted before it as well, a reply written at once cost two counts.
  if (writing_ || (out_.empty() && !(tls_ && tls_->has_output()))) {
    Account();
    // Replies written straight through (a large one) leave nothing to flush: the ring goes
    // back here then.
    if (!writing_ && held_bytes_ == 0) MaybeReturnSlots();
    MaybeFinish();
    return;
  }
  if (tls_) {
    if (!out_.empty() && tls_->Write(out_.data(), out_.size()) != TlsStream::Status::kOk) {
      Log().debug("client {}: {}", id_, tls_->error());
      Close();
      return;
    }
    out_.Clear();
    tls_->TakeOutput(&wbuf_);
  } else {
    out_.swap(wbuf_);
  }
  uv_buf_t b = uv_buf_init(wbuf_.data(), static_cast<unsigned>(wbuf_.size()));
  // Straight to the socket first (see BackendConn::Flush): a client that reads keeps the
  // poller untouched and gets no write callback.
  int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1);
  if (n == static_cast<int>(wbuf_.size())) {
    wbuf_.Clear();
    Recycle(wbuf_);
    OnWritten();
    return;
  }
  if (n < 0 && n != UV_EAGAIN) {
    wbuf_.Clear();
    Close();
    return;
  }
  if (n > 0) {
    wbuf_.Consume(static_cast<size_t>(n));
    b = uv_buf_init(wbuf_.data(), static_cast<unsigned>(wbuf_.size()));
  }
  write_req_.data = this;
  if (uv_write(&write_req_, reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1, WriteCb) != 0) {
    wbuf_.Clear();
    Close();
    return;
  }
  writing_ = true;
  Account();
}

void ClientSession::WriteCb(uv_write_t* req, int status) {
  auto* self = static_cast<ClientSession*>(req->data);
  self->writing_ = false;
  self->wbuf_.Clear();
  Recycle(self->wbuf_);
  if (status < 0) {
    self->Close();
    return;
  }
  if (!self->out_.empty()) {
    self->Flush();
    self->MaybeResume();
    return;
  }
  self->OnWritten();
}

bool ClientSession::TrimIfIdle(uint64_t now_ms) {
  if (closed_ || writing_ || head_ != next_ || dedicated_ != nullptr || !in_.empty() ||
      !out_.empty() || now_ms - last_request_ms_ < 2000) {
    return false;
  }
  bool had = in_.capacity() + out_.capacity() + wbuf_.capacity() + scratch_.capacity() > 0;
  read_chunk_ = kFirstReadChunk;
  in_.ShrinkIfEmpty(0);
  out_.ShrinkIfEmpty(0);
  wbuf_.ShrinkIfEmpty(0);
  scratch_.ShrinkIfEmpty(0);
  if (inflight_ == 0) {
    had = had || !slots_.empty();
    std::vector<Slot>().swap(slots_);
  }
  own_parser_.reset();  // in_ is empty: nothing half framed
  if (authenticated_) preauth_parser_.reset();
  if (pin_ && pin_->Empty() && !subscribed_ && !resubscribing_ && !waiting_to_pin_ &&
      !quit_pending_ && !unpin_marker_sent_ && !auth_pending_ && !cluster_multi_) {
    pin_.reset();  // the session left its pinned state behind
    had = true;
  }
  return had;
}

void ClientSession::OnWritten() {
  // What was written is no longer held: counted at once, not at the next request (a client
  // that had read a 16 MB reply kept counting it while idle, and the total looked crowded
  // to the connections streaming to others, see BackendConn::StreamPart).
  if (!closed_) Account();
  if (out_.empty() && held_bytes_ == 0) {
    oversize_bytes_ = 0;  // everything written: no big reply is pending any more
    Recycle(out_);
    scratch_.Clear();
    Recycle(scratch_);
    MaybeReturnSlots();
  }
  MaybeFinish();
  if (!closed_) MaybeResume();
}

void ClientSession::MaybeFinish() {
  if (closed_ || !(closing_after_flush_ || draining_)) return;
  if (head_ < next_ || writing_ || !out_.empty()) return;
  // Draining: what the client already sent is served too; the session ends once it is idle
  // (the drain timeout bounds a client that keeps sending).
  if (draining_ && !closing_after_flush_ && !in_.empty()) return;
  Close();
}

void ClientSession::StartDrain() {
  if (closed_) return;
  draining_ = true;
  resubscribing_ = false;
  if ((dedicated_ != nullptr || subscribed_) &&
      (pin_permanent_ || subscribed_ || stream_outstanding_ == 0)) {
    // A blocking or pub/sub session may never finish on its own: what it has received is
    // delivered, the rest ends with the connection. A transaction with replies still due
    // gets them first (MaybeUnpin ends it; the drain timeout bounds the wait).
    AbandonPinned();
    closing_after_flush_ = true;
    PauseReading();
  }
  worker_->MarkDirty(this);
  MaybeFinish();
}

void ClientSession::Close() {
  if (closed_) return;
  closed_ = true;
  reading_ = false;
  // The rest of any reply streaming to it is read and dropped (those connections then close).
  ResumeStreams(false);
  if (accounted_ != 0) {
    worker_->AddReplyBytes(-static_cast<int64_t>(accounted_));
    accounted_ = 0;
  }
  if (dedicated_ != nullptr) {
    BackendConn* d = dedicated_;
    dedicated_ = nullptr;
    d->Shutdown("client closed", true);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), CloseCb);
}

void ClientSession::CloseCb(uv_handle_t* h) {
  auto* self = static_cast<ClientSession*>(h->data);
  self->handle_closed_ = true;
  self->worker_->OnClientClosed(self);
}

}  // namespace kp
