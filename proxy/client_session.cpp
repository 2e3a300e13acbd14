// ClientSession: request framing, routing, the ordered reply queue, local commands, pinned
// sessions, failover of reads, limits and backpressure for one client.
#include "proxy/client_session.h"

#include <algorithm>
#include <cstring>

#include "common/errors.h"
#include "common/logging.h"
#include "common/resp_writer.h"
#include "proxy/backend.h"
#include "proxy/backend_conn.h"
#include "proxy/proxy_info.h"
#include "proxy/worker.h"

namespace kp {

namespace {
constexpr size_t kReadChunk = 64 * 1024;
constexpr size_t kKeepBuffer = 1024 * 1024;
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

ClientSession::ClientSession(Worker* worker, uint64_t id)
    : worker_(worker), id_(id), parser_(worker->config().resp) {
  created_ms_ = last_request_ms_ = worker->now();
  slots_.resize(16);
  authenticated_ = worker->config().requirepass.empty();
}

ClientSession::~ClientSession() = default;

bool ClientSession::Open(int fd) {
  uv_tcp_init(worker_->loop(), &tcp_);
  tcp_.data = this;
  if (uv_tcp_open(&tcp_, fd) != 0) {
    ::close(fd);
    closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), CloseCb);
    return false;
  }
  uv_tcp_nodelay(&tcp_, 1);
  ResumeReading();
  return true;
}

// ---- reading and framing ----

void ClientSession::AllocCb(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* self = static_cast<ClientSession*>(h->data);
  char* p = self->in_.PrepareWrite(kReadChunk);
  *buf = uv_buf_init(p, static_cast<unsigned>(self->in_.writable()));
}

void ClientSession::ReadCb(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  auto* self = static_cast<ClientSession*>(s->data);
  if (nread > 0) {
    self->in_.Commit(static_cast<size_t>(nread));
    self->ProcessInput();
  } else if (nread < 0) {
    // The client went away (or reset): nothing to answer.
    self->Close();
  }
}

void ClientSession::ResumeReading() {
  if (reading_ || closed_ || closing_after_flush_ || quit_pending_) return;
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
  const Config& cfg = worker_->config();
  while (!closed_ && !closing_after_flush_ && !quit_pending_ && !in_.empty()) {
    if ((dedicated_ == nullptr && next_ - head_ >= cfg.client.max_pipeline_depth) ||
        CountedReplyBytes() > cfg.client.max_client_buffer_bytes / 2) {
      // Backpressure: too many requests in flight, or replies piling up that the client does
      // not read. Stop reading its requests until they drain (MaybeResume), well before the
      // buffer bound that would drop it.
      paused_ = true;
      PauseReading();
      return;
    }
    size_t consumed = 0;
    ParseStatus st = parser_.Parse(in_.data(), in_.size(), &consumed);
    if (st == ParseStatus::kIncomplete) {
      if (in_.size() > cfg.client.max_client_buffer_bytes) LimitError(RespLimit::kClientBuffer);
      return;
    }
    if (st == ParseStatus::kError) {
      if (parser_.limit_hit() != RespLimit::kNone) {
        LimitError(parser_.limit_hit());
      } else {
        ProtocolError(parser_.error());
      }
      return;
    }
    if (parser_.argc() > 0 && !HandleRequest(in_.data(), consumed)) {
      // Held (a session waiting for a primary to pin to): parsed again when it can go.
      parser_.Reset();
      PauseReading();
      return;
    }
    in_.Consume(consumed);
    parser_.Reset();
    if (backlog_.size() > cfg.client.max_client_buffer_bytes) {
      // A pinned session's requests waiting for earlier replies count against its buffer.
      LimitError(RespLimit::kClientBuffer);
      return;
    }
  }
  if (in_.empty()) in_.ShrinkIfEmpty(kKeepBuffer);
  if (draining_) MaybeFinish();
}

void ClientSession::LimitError(RespLimit which) {
  // Named for what it is, and counted by limit: the input was well-formed, a bound was hit.
  std::string msg = which == RespLimit::kClientBuffer
                        ? "kompress: client buffer over limits.max_client_buffer_bytes (" +
                              std::to_string(worker_->config().client.max_client_buffer_bytes) +
                              " bytes); closing the connection"
                        : parser_.error();
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
// A PING's answer: "+PONG" normally, ["pong", ""] while subscribed (RESP2).
bool IsPong(const char* data, size_t len) {
  static constexpr std::string_view kPong = "+PONG\r\n";
  static constexpr std::string_view kSubscribedPong = "*2\r\n$4\r\npong\r\n$0\r\n\r\n";
  std::string_view f(data, len);
  return f == kPong || f == kSubscribedPong;
}

// Retry budget per client: 20 % of its replica reads may be re-run after a timeout (Envoy's
// default budget share), with up to 10 re-runs saved up.
constexpr double kRetryEarn = 0.2;
constexpr double kRetryCap = 10.0;
// A connection paused while streaming this client a reply reads on below this.
constexpr size_t kStreamResumeAt = 512 * 1024;
}  // namespace

bool ClientSession::HandleRequest(const char* raw, size_t len) {
  Request req;
  req.argc = parser_.argc();
  req.nviews = req.argc < RequestParser::kMaxArgViews ? req.argc : RequestParser::kMaxArgViews;
  for (size_t i = 0; i < req.nviews; ++i) req.argv[i] = parser_.arg(i, raw);

  if (parser_.is_inline()) {
    // Backends get RESP; an inline command is re-encoded once (rare: telnet users).
    scratch_.Clear();
    resp::AppendArrayHeader(scratch_, req.argc);
    for (size_t i = 0; i < req.argc; ++i) resp::AppendBulk(scratch_, parser_.arg(i, raw));
    raw = scratch_.data();
    len = scratch_.size();
  }
  if (pin_wait_deadline_ == 0) worker_->stats().requests++;  // not again when re-run
  last_request_ms_ = worker_->now();

  RouteDecision d = worker_->router().Classify(req);
  if (dedicated_ != nullptr) {
    if (d.route == Route::kDeny) {
      // Cannot be forwarded, and a local reply could not be ordered within the stream: end
      // the session with the explanation, as for a protocol error.
      closing_after_flush_ = true;
      AbandonPinned();
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
  switch (d.route) {
    case Route::kLocal:
      HandleLocal(d.local, req);
      return true;
    case Route::kDeny:
      ReplyErrorNow(d.deny_reason);
      return true;
    case Route::kPin:
      return EnterPinned(req, d, raw, len);
    case Route::kRead:
    case Route::kWrite:
      Dispatch(req, d, raw, len);
      return true;
  }
  return true;
}

void ClientSession::InRefusedTransaction(const Request& req, const RouteDecision& d) {
  // The client believes it is inside MULTI; as Redis does for a command refused at queue
  // time, every command gets an error and EXEC aborts the transaction.
  std::string_view name = req.arg(0);
  if (EqualsLower(name, "exec")) {
    multi_refused_ = false;
    return ReplyErrorNow("EXECABORT Transaction discarded because of previous errors.");
  }
  if (EqualsLower(name, "discard")) {
    multi_refused_ = false;
    scratch_.Clear();
    resp::AppendSimple(scratch_, "OK");
    return ReplyNow(scratch_);
  }
  if (d.route == Route::kLocal &&
      (d.local == LocalCommand::kQuit || d.local == LocalCommand::kReset)) {
    multi_refused_ = false;
    return HandleLocal(d.local, req);
  }
  if (EqualsLower(name, "multi")) return ReplyErrorNow("ERR MULTI calls can not be nested");
  if (EqualsLower(name, "watch")) return ReplyErrorNow("ERR WATCH inside MULTI is not allowed");
  worker_->stats().errors++;
  ReplyErrorNow(
      "ERR kompress: not queued: the transaction could not start (primary unavailable); EXEC "
      "will abort it");
}

void ClientSession::Dispatch(const Request& req, const RouteDecision& d, const char* raw,
                             size_t len) {
  uint64_t seq = NewSlot();
  Slot& s = SlotAt(seq);
  s.start_ns = uv_hrtime();
  s.kind = d.route == Route::kRead ? 1 : 2;
  s.is_read = d.route == Route::kRead;
  // Behind a request that waits for a backend, everything waits: order is the client's.
  if (!parked_.empty() || !Send(seq, &req, d, raw, len)) Park(seq, raw, len);
}

bool ClientSession::Send(uint64_t seq, const Request* req, const RouteDecision& d, const char* raw,
                         size_t len) {
  Backend* primary = worker_->backends().primary();
  bool primary_ok = primary != nullptr && primary->serves_writes();
  Slot& s = SlotAt(seq);
  bool keep = raw != s.request.data();  // a parked request is sent from its slot
  uint64_t deadline = worker_->now() + worker_->timeout_ms();
  if (s.is_read) {
    ReadTarget t = PickReadTarget(req, d);
    if (t.replica != nullptr) {
      if (keep) s.request.Append(raw, len);
      worker_->stats().reads_replica++;
      retry_tokens_ = std::min(kRetryCap, retry_tokens_ + kRetryEarn);
      worker_->SharedConn(t.replica)->Send(this, seq, raw, len, deadline);
      ++inflight_;
      return true;
    }
    if (!primary_ok) return false;
    s.tried_primary = true;
    // Kept in case the primary fails it and a replica can still answer (RetryOnReplica).
    if (keep && worker_->backends().size() > 1) s.request.Append(raw, len);
    (t.for_read_your_writes ? worker_->stats().reads_primary_ryw
                            : worker_->stats().reads_primary)++;
  } else {
    if (!primary_ok) return false;
    // Kept (when small) so a write refused with READONLY by a node that has just stopped
    // being the primary can go to the new one.
    if (keep && len <= kKeepWriteBytes) s.request.Append(raw, len);
    worker_->stats().writes++;
    ++writes_inflight_;
  }
  // All of one client's primary requests share one connection, so they run in the order the
  // client sent them (a read behind its own write sees it).
  worker_->PrimaryConnFor(primary, id_)->Send(this, seq, raw, len, deadline);
  ++inflight_;
  return true;
}

bool ClientSession::MayWait() const {
  // A request waits (up to the timeout) for a backend while the topology is changing: with
  // Sentinel a failover is expected to name a new primary; without it, a primary lost less
  // than a timeout ago may come back (restart, switchover). One gone for longer fails fast.
  const Backend* primary = worker_->backends().primary();
  if (primary == nullptr || !worker_->config().sentinels.empty()) return true;
  return MonotonicMs() - primary->unavailable_since_ms() < worker_->timeout_ms();
}

void ClientSession::Park(uint64_t seq, const char* raw, size_t len) {
  Slot& s = SlotAt(seq);
  if (parked_.empty() && !MayWait()) {
    FailParked(seq);
    return;
  }
  if (raw != s.request.data()) {
    s.request.Clear();
    s.request.Append(raw, len);
  }
  // Once: a request parked again (READONLY from another node) keeps its first deadline.
  if (s.park_deadline == 0) s.park_deadline = worker_->now() + worker_->timeout_ms();
  parked_.push_back(seq);
  ++inflight_;  // the worker calls back (RetryParked) until it is sent or answered
  worker_->Park(this);
}

bool ClientSession::RetryParked() {
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
    if (!closed_) {
      plain.route = s.is_read ? Route::kRead : Route::kWrite;
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
  return !parked_.empty() || waiting_to_pin_;
}

void ClientSession::FailParked(uint64_t seq) {
  worker_->stats().errors++;
  if (SlotAt(seq).is_read) {
    CompleteError(seq, errors::kNoBackendForRead);
  } else {
    CompleteError(seq, PrimaryUnavailable(worker_->backends().primary()));
  }
}

std::string ClientSession::PrimaryUnavailable(const Backend* primary) const {
  std::string msg(errors::kPrimaryDown);
  if (primary == nullptr) {
    return msg + " (no primary known yet: " +
           (worker_->config().sentinels.empty() ? std::string("none configured")
                                                : "the Sentinels have not named one") +
           ")";
  }
  msg += " (" + primary->name();
  std::string why = primary->last_error();
  if (!why.empty()) msg += ": " + why;
  return msg + ")";
}

ClientSession::ReadTarget ClientSession::PickReadTarget(const Request* req,
                                                        const RouteDecision& d) {
  ReadTarget t;
  Worker& w = *worker_;
  const Backend* primary = w.backends().primary();
  bool primary_up = primary != nullptr && primary->serves_writes();
  int64_t need = ReadYourWrites::kAny;
  if (w.config().read_your_writes) {
    // A read behind the client's own unanswered write goes after it, on the same primary
    // connection; after the write, to a replica only once that replica has it.
    need = writes_inflight_ > 0 ? ReadYourWrites::kPrimaryOnly
                                : ryw_.Requirement(w.backends().progress());
    // Nothing newer than the replicas' data can be written while the primary is down, and
    // the replicas that serve reads then are those holding the newest data left: a replica
    // known to have the client's write if there is one, else the best there is.
    if (!primary_up && need == ReadYourWrites::kPrimaryOnly) need = ReadYourWrites::kAny;
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
        (continued || need == ReadYourWrites::kAny ||
         (need >= 0 && scan_backend_->offset() >= need))) {
      t.replica = scan_backend_;
      return t;
    }
  }
  if (need != ReadYourWrites::kPrimaryOnly) t.replica = w.PickReplica(need);
  if (t.replica == nullptr && !primary_up && need >= 0) t.replica = w.PickReplica(-1);
  t.for_read_your_writes = t.replica == nullptr && need != ReadYourWrites::kAny;
  if (d.cursor_arg != 0) {
    scan_backend_ = t.replica;
    scan_on_primary_ = t.replica == nullptr;
  }
  return t;
}

bool ClientSession::RetryAllowed(uint64_t timeout_pass) {
  // A read that timed out may be slow itself: re-running it on the primary doubles exactly
  // the load that hurts, and a burst of them would stall the primary for everyone. So a
  // re-run costs a token of the client's budget: each read it sends earns kRetryEarn (20 %
  // of its reads may be re-run), at most kRetryCap saved. A client that has not earned one
  // (a new connection) may take the worker's spare one, refilled once a second, so a quiet
  // client still fails over while a burst of new connections with slow reads gets at most
  // one re-run. The client's requests found late in the same check cost one token together
  // (a pipeline stuck behind a stalled replica fails over as a whole).
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

void ClientSession::RetryOnPrimary(uint64_t seq) {
  Backend* primary = worker_->backends().primary();
  Slot& s = SlotAt(seq);
  if (primary == nullptr || !primary->serves_writes()) {
    s.tried_primary = true;
    if (!s.tried_replica && RetryOnReplica(seq)) return;
    // Nothing can take it now: it waits for a backend like a new request would.
    Park(seq, s.request.data(), s.request.size());
    return;
  }
  s.tried_primary = true;
  worker_->stats().failovers++;
  worker_->PrimaryConnFor(primary, id_)
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
  int64_t need = ReadYourWrites::kAny;
  const Backend* primary = worker_->backends().primary();
  if (worker_->config().read_your_writes && primary != nullptr && primary->serves_writes()) {
    need = writes_inflight_ > 0 ? ReadYourWrites::kPrimaryOnly
                                : ryw_.Requirement(worker_->backends().progress());
    if (need == ReadYourWrites::kPrimaryOnly) return false;
  }
  Backend* replica = worker_->PickReplica(need);
  if (replica == nullptr) return false;
  worker_->stats().failovers++;
  worker_->SharedConn(replica)->Send(this, seq, s.request.data(), s.request.size(),
                                     worker_->now() + worker_->timeout_ms());
  ++inflight_;
  return true;
}

// ---- backend callbacks ----

void ClientSession::NoteWriteDone() {
  if (writes_inflight_ > 0) --writes_inflight_;
  ryw_.OnWrite(worker_->backends().progress());
}

void ClientSession::OnReply(uint64_t seq, Backend* from, const char* data, size_t len,
                            bool is_error) {
  --inflight_;
  if (closed_) {
    worker_->MarkDirty(this);  // lets the worker delete us once nothing is in flight
    return;
  }
  Slot& s = SlotAt(seq);
  if (s.kind == 2) NoteWriteDone();
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
      from == worker_->backends().primary()) {
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
  s.streamed += len;
  // A reply larger than the bound is delivered, not counted (as when it arrives whole).
  if (s.streamed > worker_->config().client.max_client_buffer_bytes) {
    oversize_bytes_ = std::max(oversize_bytes_, s.streamed);
  }
  if (seq == head_) {
    out_.Append(data, len);
  } else {
    s.reply.Append(data, len);
    held_bytes_ += len;
  }
  worker_->MarkDirty(this);
}

void ClientSession::OnBackendFailure(uint64_t seq, Backend* from, const std::string& reason,
                                     bool timeout, uint64_t timeout_pass) {
  --inflight_;
  if (closed_) {
    worker_->MarkDirty(this);
    return;
  }
  Slot& s = SlotAt(seq);
  if (s.streamed > 0) {
    // Part of the reply has been passed on: neither a retry nor an error can follow it in
    // the stream, so the connection ends, as it would have with Redis itself.
    Log().info("client {}: connection to {} lost in the middle of a {}-byte reply ({}); closing",
               id_, from->name(), s.streamed, reason);
    worker_->stats().errors++;
    Close();
    return;
  }
  // A write that failed or timed out may still have been applied.
  if (s.kind == 2) NoteWriteDone();
  if (s.is_read && !from->is_primary() && !s.tried_primary) {
    if (!timeout || RetryAllowed(timeout_pass)) {
      RetryOnPrimary(seq);
      return;
    }
    worker_->stats().errors++;
    CompleteError(seq, "ERR kompress: read timed out on replica " + from->name() + " (" + reason +
                           "); not re-run on the primary: this client's retry budget is spent "
                           "(slow reads are not doubled onto the primary)");
    return;
  }
  if (s.is_read && from->is_primary() && !s.tried_replica && RetryOnReplica(seq)) return;
  worker_->stats().errors++;
  if (s.is_read) {
    CompleteError(seq, "ERR kompress: read failed on primary " + from->name() + ": " + reason);
  } else {
    CompleteError(seq, std::string(timeout ? errors::kPrimaryTimeout : errors::kPrimaryLost) +
                           " (" + from->name() + ": " + reason + ")");
  }
}

// ---- ordered replies ----

uint64_t ClientSession::NewSlot() {
  if (next_ - head_ == slots_.size()) {
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
  s.park_deadline = 0;
  s.streamed = 0;
  s.stream = false;
  s.kind = 0;
  s.reply.Clear();
  s.request.Clear();
  return seq;
}

void ClientSession::Complete(uint64_t seq, const char* data, size_t len) {
  Slot& s = SlotAt(seq);
  // One reply larger than the whole bound is Redis's legitimate answer (a big value): it is
  // written to a client that reads, not counted against it. Replies piling up are.
  if (len + s.streamed > worker_->config().client.max_client_buffer_bytes) {
    oversize_bytes_ = std::max(oversize_bytes_, len + s.streamed);
  }
  if (s.kind != 0) {
    uint64_t ns = uv_hrtime() - s.start_ns;
    (s.kind == 1 ? worker_->stats().read_latency : worker_->stats().write_latency).Observe(ns);
  }
  if (seq == head_) {
    out_.Append(data, len);
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
  Complete(seq, scratch_.data(), scratch_.size());
}

void ClientSession::ReplyNow(const Buffer& b) {
  uint64_t seq = NewSlot();
  Complete(seq, b.data(), b.size());
}

void ClientSession::ReplyErrorNow(std::string_view msg) {
  uint64_t seq = NewSlot();
  CompleteError(seq, msg);
}

void ClientSession::AdvanceHead() {
  while (head_ < next_) {
    Slot& s = SlotAt(head_);
    if (s.stream) {
      // Everything before the pinned session has been answered: its requests may go now.
      if (!backlog_.empty() && dedicated_ != nullptr) {
        dedicated_->SendRaw(backlog_.data(), backlog_.size());
        backlog_.Clear();
        while (!backlog_kinds_.empty()) {
          NoteSentPinned(backlog_kinds_.front());
          backlog_kinds_.pop_front();
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
      if (!s.reply.empty()) {
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
    ++head_;
  }
  MaybeResume();
}

size_t ClientSession::CountedReplyBytes() const {
  size_t buffered = out_.size() + wbuf_.size() + held_bytes_;
  return buffered > oversize_bytes_ ? buffered - oversize_bytes_ : 0;
}

void ClientSession::MaybeResume() {
  if (drain_waiter_ != nullptr && UnsentBytes() <= kStreamResumeAt) {
    BackendConn* c = drain_waiter_;
    drain_waiter_ = nullptr;
    c->ResumeStream();
  }
  const ClientLimits& lim = worker_->config().client;
  if (!paused_ || closed_ || next_ - head_ > lim.max_pipeline_depth / 2 ||
      CountedReplyBytes() > lim.max_client_buffer_bytes / 4) {
    return;
  }
  ResumeReading();
  // Requests already buffered are not announced by another read callback.
  if (!in_.empty()) ProcessInput();
}

// ---- pinned sessions ----

bool ClientSession::EnterPinned(const Request& req, const RouteDecision& d, const char* raw,
                                size_t len) {
  Backend* primary = worker_->backends().primary();
  if (primary == nullptr || !primary->serves_writes()) {
    // During a failover a transaction, a blocking command or a subscription waits for the
    // new primary like a write does (up to the timeout), rather than failing at once.
    uint64_t now = worker_->now();
    if (MayWait() && (pin_wait_deadline_ == 0 || now < pin_wait_deadline_)) {
      if (pin_wait_deadline_ == 0) pin_wait_deadline_ = now + worker_->timeout_ms();
      waiting_to_pin_ = true;
      worker_->Park(this);
      return false;
    }
    pin_wait_deadline_ = 0;
    worker_->stats().errors++;
    std::string why = PrimaryUnavailable(primary);
    // What follows a MULTI that could not start must not run outside the transaction.
    if (EqualsLower(req.arg(0), "multi")) multi_refused_ = true;
    ReplyErrorNow(why);
    return true;
  }
  pin_wait_deadline_ = 0;
  worker_->stats().pinned_sessions++;
  dedicated_ = worker_->NewDedicatedConn(primary, this);
  stream_seq_ = NewSlot();
  SlotAt(stream_seq_).stream = true;
  pin_permanent_ = false;
  in_multi_ = watching_ = false;
  reset_forwarded_ = false;
  dedicated_reusable_ = true;
  push_mode_ = false;
  stream_outstanding_ = 0;
  pinned_inflight_.clear();
  backlog_kinds_.clear();
  if (!name_.empty()) {
    // The name the client set before it was pinned belongs on the connection it now uses
    // (CLIENT GETNAME inside a transaction, CLIENT LIST on the primary).
    inject_.Clear();
    std::string_view args[] = {"CLIENT", "SETNAME", name_};
    resp::AppendCommand(inject_, args);
    SendPinned(inject_.data(), inject_.size(), {false, true, false});
    dedicated_reusable_ = false;
  }
  ForwardPinned(req, d, raw, len);
  return true;
}

ClientSession::PinnedReq ClientSession::TrackPinnedState(const Request& req,
                                                         const RouteDecision& d) {
  std::string_view name = req.arg(0);
  bool local = d.route == Route::kLocal;
  if (reset_forwarded_) ++after_reset_;
  if (local && d.local == LocalCommand::kReset) {
    reset_forwarded_ = true;
    after_reset_ = 0;
  }
  if (local && d.local == LocalCommand::kClientSetName) {
    name_ = std::string(req.arg(2));
    dedicated_reusable_ = false;
  }
  ++stream_outstanding_;
  PinnedReq kind{d.blocking && !in_multi_, false, d.push && !in_multi_};
  if (pin_permanent_) return kind;
  if (EqualsLower(name, "multi")) {
    in_multi_ = true;
  } else if (EqualsLower(name, "exec") || EqualsLower(name, "discard")) {
    // Only inside MULTI do they end the transaction and drop WATCHes; outside it Redis
    // answers an error and the WATCH stays (the connection must not be reused then).
    if (in_multi_) watching_ = false;
    in_multi_ = false;
  } else if (EqualsLower(name, "watch")) {
    watching_ = true;
  } else if (EqualsLower(name, "unwatch")) {
    if (!in_multi_) watching_ = false;
  } else if (EqualsLower(name, "wait")) {
    // WAIT changes nothing on the connection.
  } else if (d.route == Route::kPin ||
             (local && d.local != LocalCommand::kPing && d.local != LocalCommand::kEcho &&
              d.local != LocalCommand::kClientSetName && d.local != LocalCommand::kClientGetName &&
              d.local != LocalCommand::kClientId && d.local != LocalCommand::kClientInfo &&
              d.local != LocalCommand::kClientList && d.local != LocalCommand::kClientSetInfo &&
              d.local != LocalCommand::kProxy)) {
    // Anything else that changes the connection for good keeps it pinned: blocking and
    // pub/sub commands, SELECT n, CLIENT REPLY, and what the proxy would otherwise answer
    // itself (AUTH, HELLO, RESET, QUIT reach the backend on a pinned connection).
    pin_permanent_ = true;
  }
  return kind;
}

void ClientSession::ForwardPinned(const Request& req, const RouteDecision& d, const char* raw,
                                  size_t len) {
  worker_->stats().pinned_requests++;
  if (push_mode_ && d.route == Route::kLocal && d.local == LocalCommand::kPing) ++push_pings_;
  PinnedReq kind = TrackPinnedState(req, d);
  if (EqualsLower(req.arg(0), "wait") && !in_multi_) {
    // WAIT counts replicas that acknowledged this connection's last write, but the client's
    // writes went out on shared connections. A propagated no-op write here first (the
    // client's earlier writes have all been answered by now) makes WAIT wait for at least
    // those writes; its reply is swallowed.
    inject_.Clear();
    std::string_view args[] = {"PUBLISH", "__kompress:wait", ""};
    resp::AppendCommand(inject_, args);
    SendPinned(inject_.data(), inject_.size(), {false, true, false});
  }
  SendPinned(raw, len, kind);
}

void ClientSession::SendPinned(const char* raw, size_t len, PinnedReq kind) {
  if (head_ == stream_seq_ && backlog_.empty()) {
    dedicated_->SendRaw(raw, len);
    NoteSentPinned(kind);
  } else {
    backlog_.Append(raw, len);
    backlog_kinds_.push_back(kind);
  }
}

void ClientSession::NoteSentPinned(PinnedReq kind) {
  if (kind.push) {
    // From here replies no longer pair with requests: no per-request deadlines.
    push_mode_ = true;
    dedicated_->SetDeadline(0);
    return;
  }
  if (push_mode_) return;
  pinned_inflight_.push_back(kind);
  if (pinned_inflight_.size() == 1) ArmPinnedDeadline();
}

void ClientSession::ArmPinnedDeadline() {
  // The oldest request must be answered within the timeout unless it may legitimately
  // block (BLPOP, WAIT, ...): the same rule as on shared connections.
  if (dedicated_ == nullptr) return;
  if (push_mode_ || pinned_inflight_.empty() || pinned_inflight_.front().blocking) {
    dedicated_->SetDeadline(0);
  } else {
    dedicated_->SetDeadline(worker_->now() + worker_->timeout_ms());
  }
}

void ClientSession::OnStreamFrame(const char* data, size_t len) {
  if (closed_) return;
  if ((push_pings_ > 0 || quit_marker_sent_) && IsPong(data, len)) {
    if (push_pings_ > 0) {
      --push_pings_;  // the client's own PING
    } else {
      quit_marker_seen_ = true;  // the proxy's, after QUIT: everything before it is relayed
      MaybeQuit();
      return;
    }
  }
  bool swallow = false;
  if (!pinned_inflight_.empty()) {
    swallow = pinned_inflight_.front().swallow;
    pinned_inflight_.pop_front();
    ArmPinnedDeadline();
  }
  if (swallow) return;  // the reply to a command the proxy added (CLIENT SETNAME, PUBLISH)
  // Anything answered on the dedicated connection may have been a write (EXEC, EVAL...):
  // the reads that follow once the session is unpinned must see it.
  ryw_.OnWrite(worker_->backends().progress());
  if (len > worker_->config().client.max_client_buffer_bytes) {
    oversize_bytes_ = std::max(oversize_bytes_, len);
  }
  out_.Append(data, len);
  worker_->MarkDirty(this);
  if (stream_outstanding_ > 0) --stream_outstanding_;
  if (reset_forwarded_ && len == 8 && std::memcmp(data, "+RESET\r\n", 8) == 0) {
    // RESET answered: the connection is back to its defaults (database 0, no transaction,
    // no subscriptions), so the session can leave pinned mode once everything sent after
    // RESET is answered too. RESET also logged the connection out of the backend, so with
    // backend credentials it is closed rather than reused.
    reset_forwarded_ = false;
    name_.clear();
    authenticated_ = worker_->config().requirepass.empty();
    pin_permanent_ = false;
    in_multi_ = watching_ = false;
    push_mode_ = false;
    // Counting replies was meaningless in push mode; what is still due is what came after.
    stream_outstanding_ = after_reset_;
    if (!worker_->config().backend_password.empty()) dedicated_reusable_ = false;
  }
  if (!pin_permanent_) MaybeUnpin();
  MaybeQuit();
}

void ClientSession::MaybeQuit() {
  if (!quit_pending_ || closed_ || dedicated_ == nullptr) return;
  if (!backlog_.empty() || head_ != stream_seq_) return;  // earlier requests not sent yet
  // Replies still due are relayed first. In push mode they do not pair with requests, so a
  // PING goes last: once its answer is back, everything before it has been relayed.
  if (push_mode_) {
    if (!quit_marker_sent_) {
      quit_marker_sent_ = true;
      static const char kPing[] = "*1\r\n$4\r\nPING\r\n";
      dedicated_->SendRaw(kPing, sizeof kPing - 1);
      dedicated_->SetDeadline(worker_->now() + worker_->timeout_ms());
    }
    if (!quit_marker_seen_) return;
  } else if (stream_outstanding_ != 0 || !pinned_inflight_.empty()) {
    return;
  }
  AbandonPinned();  // closed quietly: the backend is not blamed for it
  scratch_.Clear();
  resp::AppendSimple(scratch_, "OK");
  ReplyNow(scratch_);
  closing_after_flush_ = true;
  MaybeFinish();
}

void ClientSession::MaybeUnpin() {
  if (pin_permanent_ || quit_pending_ || stream_outstanding_ != 0 || !backlog_.empty() ||
      !pinned_inflight_.empty() || dedicated_ == nullptr || head_ != stream_seq_) {
    return;
  }
  if (in_multi_ || watching_) return;
  // The transaction is over and every reply is in: the connection is clean (no MULTI, no
  // WATCH, database 0), so it goes back to the worker and reads balance over replicas again.
  if (dedicated_reusable_) {
    worker_->ReleaseDedicatedConn(dedicated_);
  } else {
    dedicated_->Shutdown("released", true);
  }
  dedicated_ = nullptr;
  Slot& s = SlotAt(stream_seq_);
  s.stream = false;
  s.done = true;
  AdvanceHead();
}

void ClientSession::AbandonPinned() {
  if (dedicated_ != nullptr) {
    BackendConn* d = dedicated_;
    dedicated_ = nullptr;
    d->Shutdown("session ended", true);  // clears its owner first: no callback comes back
  }
  backlog_.Clear();
  backlog_kinds_.clear();
  pinned_inflight_.clear();
  Slot& s = SlotAt(stream_seq_);
  if (s.stream) {
    // The stream slot ends here; replies ahead of it keep their order.
    s.stream = false;
    s.done = true;
    AdvanceHead();
  }
}

void ClientSession::OnStreamFailure(const std::string& reason) {
  dedicated_ = nullptr;  // the connection is going away by itself
  if (closed_) return;
  closing_after_flush_ = true;
  AbandonPinned();
  Log().debug("client {}: pinned connection failed: {}", id_, reason);
  worker_->stats().errors++;
  ReplyErrorNow(std::string(errors::kPinnedLost) + " (" + reason + ")");
  closing_after_flush_ = true;
  PauseReading();
  MaybeFinish();
}

// ---- local commands ----

void ClientSession::HandleLocal(LocalCommand cmd, const Request& req) {
  const Config& cfg = worker_->config();
  Buffer& b = scratch_;
  b.Clear();
  auto wrong_args = [&](std::string_view name) {
    std::string lower(name);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    ReplyErrorNow("ERR wrong number of arguments for '" + lower + "' command");
  };
  switch (cmd) {
    case LocalCommand::kPing:
      if (req.argc == 1) {
        resp::AppendSimple(b, "PONG");
      } else if (req.argc == 2) {
        resp::AppendBulk(b, req.arg(1));
      } else {
        return wrong_args("ping");
      }
      break;
    case LocalCommand::kEcho:
      if (req.argc != 2) return wrong_args("echo");
      resp::AppendBulk(b, req.arg(1));
      break;
    case LocalCommand::kQuit:
      resp::AppendSimple(b, "OK");
      ReplyNow(b);
      closing_after_flush_ = true;
      PauseReading();
      MaybeFinish();
      return;
    case LocalCommand::kAuth: {
      if (req.argc < 2) return wrong_args("auth");
      if (req.argc > 3) return ReplyErrorNow("ERR syntax error");
      if (cfg.requirepass.empty()) {
        if (req.argc == 2) return ReplyErrorNow(errors::kAuthNotConfigured);
        if (!EqualsLower(req.arg(1), "default")) return ReplyErrorNow(errors::kWrongPass);
        resp::AppendSimple(b, "OK");
        break;
      }
      bool user_ok = req.argc == 2 || EqualsLower(req.arg(1), "default");
      if (!user_ok || req.arg(req.argc - 1) != cfg.requirepass) {
        return ReplyErrorNow(errors::kWrongPass);
      }
      authenticated_ = true;
      resp::AppendSimple(b, "OK");
      break;
    }
    case LocalCommand::kHello: {
      size_t i = 1;
      if (req.argc >= 2) {
        std::string_view ver = req.arg(1);
        if (ver != "2") {
          bool numeric = !ver.empty() && ver.size() < 19;
          for (char c : ver) numeric = numeric && ((c >= '0' && c <= '9') || c == '-');
          if (!numeric) {
            return ReplyErrorNow("ERR Protocol version is not an integer or out of range");
          }
          return ReplyErrorNow(ver == "3" ? errors::kNoResp3 : errors::kNoProto);
        }
        i = 2;
      }
      std::string setname;
      bool has_setname = false;
      for (; i < req.argc; ++i) {
        if (EqualsLower(req.arg(i), "auth") && i + 2 < req.argc) {
          std::string_view user = req.arg(i + 1), pass = req.arg(i + 2);
          bool ok = cfg.requirepass.empty()
                        ? EqualsLower(user, "default")
                        : (EqualsLower(user, "default") && pass == cfg.requirepass);
          if (!ok) return ReplyErrorNow(errors::kWrongPass);
          authenticated_ = true;
          i += 2;
        } else if (EqualsLower(req.arg(i), "setname") && i + 1 < req.argc) {
          setname = req.arg(i + 1);
          for (char c : setname) {
            if (c < '!' || c > '~') {
              return ReplyErrorNow(
                  "ERR Client names cannot contain spaces, newlines or special characters.");
            }
          }
          has_setname = true;
          i += 1;
        } else {
          return ReplyErrorNow("ERR Syntax error in HELLO option '" + std::string(req.arg(i)) +
                               "'");
        }
      }
      if (!authenticated_) {
        return ReplyErrorNow(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
            "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and "
            "select the RESP protocol version at the same time");
      }
      if (has_setname) name_ = setname;
      resp::AppendArrayHeader(b, 14);
      resp::AppendBulk(b, "server");
      resp::AppendBulk(b, "redis");
      resp::AppendBulk(b, "version");
      resp::AppendBulk(b, "7.0.0");
      resp::AppendBulk(b, "proto");
      resp::AppendInteger(b, 2);
      resp::AppendBulk(b, "id");
      resp::AppendInteger(b, static_cast<int64_t>(id_));
      resp::AppendBulk(b, "mode");
      resp::AppendBulk(b, "standalone");
      resp::AppendBulk(b, "role");
      resp::AppendBulk(b, "master");
      resp::AppendBulk(b, "modules");
      resp::AppendArrayHeader(b, 0);
      break;
    }
    case LocalCommand::kSelectZero:
      resp::AppendSimple(b, "OK");
      break;
    case LocalCommand::kClientSetName: {
      std::string_view n = req.arg(2);
      for (char c : n) {
        if (c < '!' || c > '~') {
          return ReplyErrorNow(
              "ERR Client names cannot contain spaces, newlines or special characters.");
        }
      }
      name_ = n;
      resp::AppendSimple(b, "OK");
      break;
    }
    case LocalCommand::kClientGetName:
      if (name_.empty()) {
        resp::AppendNullBulk(b);
      } else {
        resp::AppendBulk(b, name_);
      }
      break;
    case LocalCommand::kProxy:
      if (req.argc == 2 && EqualsLower(req.arg(1), "info") && worker_->info() != nullptr) {
        resp::AppendBulk(b, worker_->info()->Text());
      } else if (req.argc == 2 && EqualsLower(req.arg(1), "help")) {
        const char* lines[] = {"PROXY <subcommand>. Subcommands are:", "INFO",
                               "    The proxy's own view: version, uptime, configuration, nodes "
                               "with role and state, clients, counters.",
                               "HELP", "    Print this help."};
        resp::AppendArrayHeader(b, std::size(lines));
        for (const char* l : lines) resp::AppendSimple(b, l);
      } else if (req.argc < 2) {
        return wrong_args("proxy");
      } else {
        return ReplyErrorNow("ERR unknown subcommand '" + std::string(req.arg(1)) +
                             "'. Try PROXY HELP.");
      }
      break;
    case LocalCommand::kClientId:
      resp::AppendInteger(b, static_cast<int64_t>(id_));
      break;
    case LocalCommand::kClientInfo:
      resp::AppendBulk(b, DescribeSelf("client|info"));
      break;
    case LocalCommand::kClientList: {
      // Only this client is listed: the proxy's other clients are not its business, and the
      // server's list would show the proxy's shared connections.
      bool match = true;
      for (size_t i = 2; i < req.argc; ++i) {
        std::string_view opt = req.arg(i);
        if (EqualsLower(opt, "type") && i + 1 < req.argc) {
          std::string_view t = req.arg(++i);
          if (!EqualsLower(t, "normal") && !EqualsLower(t, "master") &&
              !EqualsLower(t, "replica") && !EqualsLower(t, "slave") && !EqualsLower(t, "pubsub")) {
            return ReplyErrorNow("ERR Unknown client type '" + std::string(t) + "'");
          }
          match = match && EqualsLower(t, "normal");
        } else if (EqualsLower(opt, "id") && i + 1 < req.argc) {
          bool listed = false;
          for (++i; i < req.argc; ++i) {
            std::string_view v = req.arg(i);
            bool digits = !v.empty() && v.size() < 20;
            for (char ch : v) digits = digits && ch >= '0' && ch <= '9';
            if (!digits) return ReplyErrorNow("ERR Invalid client ID");
            listed = listed || std::stoull(std::string(v)) == id_;
          }
          match = match && listed;
        } else {
          return ReplyErrorNow("ERR syntax error");
        }
      }
      resp::AppendBulk(b, match ? DescribeSelf("client|list") : std::string());
      break;
    }
    case LocalCommand::kClientSetInfo: {
      if (req.argc != 4) return wrong_args("client|setinfo");
      std::string_view attr = req.arg(2), value = req.arg(3);
      bool is_name = EqualsLower(attr, "lib-name");
      if (!is_name && !EqualsLower(attr, "lib-ver")) {
        return ReplyErrorNow("ERR Unrecognized option '" + std::string(attr) + "'");
      }
      for (char ch : value) {
        if (ch < '!' || ch > '~') {
          return ReplyErrorNow("ERR " + std::string(is_name ? "lib-name" : "lib-ver") +
                               " cannot contain spaces, newlines or special characters.");
        }
      }
      (is_name ? lib_name_ : lib_ver_) = value;
      resp::AppendSimple(b, "OK");
      break;
    }
    case LocalCommand::kReset:
      if (req.argc != 1) return wrong_args("reset");
      name_.clear();
      authenticated_ = cfg.requirepass.empty();
      resp::AppendSimple(b, "RESET");
      break;
    case LocalCommand::kNone:
      return ReplyErrorNow("ERR kompress: internal routing error");
  }
  ReplyNow(b);
}

std::string ClientSession::DescribeSelf(std::string_view cmd) const {
  // CLIENT INFO's fields as Redis 7 prints them; where a field is about the server's own
  // buffers the proxy gives its own numbers for this client.
  auto addr = [&](bool peer) {
    sockaddr_storage ss{};
    int len = sizeof ss;
    auto* sa = reinterpret_cast<sockaddr*>(&ss);
    int rc = peer ? uv_tcp_getpeername(&tcp_, sa, &len) : uv_tcp_getsockname(&tcp_, sa, &len);
    if (rc != 0) return std::string("?:0");
    char host[INET6_ADDRSTRLEN] = {0};
    int port = 0;
    if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
      uv_ip6_name(a, host, sizeof host);
      port = ntohs(a->sin6_port);
    } else {
      auto* a = reinterpret_cast<sockaddr_in*>(&ss);
      uv_ip4_name(a, host, sizeof host);
      port = ntohs(a->sin_port);
    }
    return std::string(host) + ":" + std::to_string(port);
  };
  uint64_t now = worker_->now();
  uv_os_fd_t fd = -1;
  uv_fileno(reinterpret_cast<const uv_handle_t*>(&tcp_), &fd);
  std::string flags = dedicated_ != nullptr && in_multi_ ? "x" : "N";
  char line[1024];
  std::snprintf(line, sizeof line,
                "id=%llu addr=%s laddr=%s fd=%d name=%s age=%llu idle=%llu flags=%s db=0 sub=0 "
                "psub=0 ssub=0 multi=%d qbuf=%zu qbuf-free=0 argv-mem=0 multi-mem=0 rbs=%zu "
                "rbp=0 obl=0 oll=0 omem=%zu tot-mem=%zu events=r cmd=%.*s user=default redir=-1 "
                "resp=2 lib-name=%s lib-ver=%s\n",
                static_cast<unsigned long long>(id_), addr(true).c_str(), addr(false).c_str(),
                static_cast<int>(fd), name_.c_str(),
                static_cast<unsigned long long>((now - created_ms_) / 1000),
                static_cast<unsigned long long>((now - last_request_ms_) / 1000), flags.c_str(),
                in_multi_ ? 0 : -1, in_.size(), in_.capacity(), out_.size() + held_bytes_,
                in_.capacity() + out_.capacity() + wbuf_.capacity() + held_bytes_,
                static_cast<int>(cmd.size()), cmd.data(), lib_name_.c_str(), lib_ver_.c_str());
  return line;
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
  size_t now = CountedReplyBytes();
  if (now == accounted_) return;
  auto delta = static_cast<int64_t>(now) - static_cast<int64_t>(accounted_);
  accounted_ = now;
  int64_t total = worker_->budget().reply_bytes.fetch_add(delta, std::memory_order_relaxed) + delta;
  if (delta > 0 &&
      total > static_cast<int64_t>(worker_->config().client.max_total_client_buffer_bytes)) {
    worker_->EnforceTotalBudget();
  }
}

void ClientSession::DropForTotalBudget() {
  std::string client = std::to_string(id_);
  LogFields f{
      {"event", "client_dropped"}, {"client", client}, {"reason", "max_total_client_buffer_bytes"}};
  Log().warn(
      "client {}{}: holds {} bytes of replies, the most while all clients together hold "
      "more than limits.max_total_client_buffer_bytes ({}); closing",
      id_, push_mode_ ? " (subscriber)" : "", accounted_,
      worker_->config().client.max_total_client_buffer_bytes);
  worker_->stats().client_drops[static_cast<size_t>(DropReason::kTotalClientBuffer)]++;
  Close();
}

void ClientSession::Flush() {
  if (closed_) return;
  Account();
  if (closed_ || !CheckOutputLimit()) return;
  if (writing_ || out_.empty()) {
    MaybeFinish();
    return;
  }
  std::swap(out_, wbuf_);
  uv_buf_t b = uv_buf_init(wbuf_.data(), static_cast<unsigned>(wbuf_.size()));
  write_req_.data = this;
  if (uv_write(&write_req_, reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1, WriteCb) != 0) {
    wbuf_.Clear();
    Close();
    return;
  }
  writing_ = true;
}

void ClientSession::WriteCb(uv_write_t* req, int status) {
  auto* self = static_cast<ClientSession*>(req->data);
  self->writing_ = false;
  self->wbuf_.Clear();
  self->wbuf_.ShrinkIfEmpty(kKeepBuffer);
  if (status < 0) {
    self->Close();
    return;
  }
  if (self->out_.empty() && self->held_bytes_ == 0) {
    self->oversize_bytes_ = 0;  // everything written: no big reply is pending any more
    self->out_.ShrinkIfEmpty(kKeepBuffer);
  }
  if (!self->out_.empty()) {
    self->Flush();
  } else {
    self->MaybeFinish();
  }
  self->MaybeResume();
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
  if (dedicated_ != nullptr && (pin_permanent_ || stream_outstanding_ == 0)) {
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
  if (drain_waiter_ != nullptr) {
    // The rest of the reply is read and dropped (the connection then closes).
    BackendConn* c = drain_waiter_;
    drain_waiter_ = nullptr;
    c->ResumeStream();
  }
  if (accounted_ != 0) {
    worker_->budget().reply_bytes.fetch_sub(static_cast<int64_t>(accounted_),
                                            std::memory_order_relaxed);
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
