// ClientSession, pinned sessions: a dedicated primary connection for what cannot share one
// (transactions, blocking commands, pub/sub, a selected database), the order of its replies
// among the client's others, leaving it again, QUIT inside it, and a transaction that could
// not start.
#include "proxy/client_session.h"

#include <algorithm>
#include <cstring>

#include "common/errors.h"
#include "common/logging.h"
#include "common/resp_writer.h"
#include "proxy/backend.h"
#include "proxy/backend_conn.h"
#include "proxy/worker.h"

namespace kp {

namespace {
// The answer to the proxy's own `PING token`: the token as a bulk string, or ["pong", token]
// while subscribed (RESP2).
bool IsMarkerPong(const char* data, size_t len, const std::string& token) {
  std::string bulk = "$" + std::to_string(token.size()) + "\r\n" + token + "\r\n";
  std::string_view f(data, len);
  return f == bulk || f == "*2\r\n$4\r\npong\r\n" + bulk;
}

// "subscribe" / "psubscribe" / "ssubscribe" confirmation frames (RESP2 array or RESP3 push).
bool IsSubscribeConfirmation(const char* data, size_t len, int proto) {
  std::string_view f(data, len);
  for (std::string_view kind :
       {"$9\r\nsubscribe\r\n", "$10\r\npsubscribe\r\n", "$10\r\nssubscribe\r\n"}) {
    if (f.size() > 4 + kind.size() && f[0] == (proto == 3 ? '>' : '*') &&
        f.substr(1, 3) == "3\r\n" && f.substr(4, kind.size()) == kind) {
      return true;
    }
  }
  return false;
}
}  // namespace

// ---- pinned sessions ----

bool ClientSession::EnterPinned(const Request& req, const RouteDecision& d, const char* raw,
                                size_t len, bool multi_first) {
  Backend* primary = PinGroup().primary();
  if (primary == nullptr || !primary->serves_writes()) {
    // During a failover a transaction, a blocking command or a subscription waits for the
    // new primary like a write does (up to the timeout), rather than failing at once.
    uint64_t now = worker_->now();
    if (MayWait(PinGroup()) && (pin_wait_deadline_ == 0 || now < pin_wait_deadline_)) {
      if (pin_wait_deadline_ == 0) pin_wait_deadline_ = now + worker_->timeout_ms();
      waiting_to_pin_ = true;
      worker_->Park(this);
      return false;
    }
    pin_wait_deadline_ = 0;
    worker_->stats().errors++;
    std::string why = PrimaryUnavailable(primary);
    // What follows a MULTI that could not start must not run outside the transaction.
    if (multi_first || EqualsLower(req.arg(0), "multi")) {
      multi_refused_ = true;
      multi_refused_queued_ = false;
    }
    ReplyErrorNow(why);
    return true;
  }
  pin_wait_deadline_ = 0;
  worker_->stats().pinned_sessions++;
  dedicated_ = worker_->NewDedicatedConn(primary, this, cls_);
  stream_seq_ = NewSlot();
  SlotAt(stream_seq_).stream = true;
  pin_permanent_ = false;
  in_multi_ = watching_ = false;
  reset_forwarded_ = false;
  dedicated_reusable_ = true;
  push_mode_ = false;
  stream_outstanding_ = 0;
  pin().inflight.clear();
  pin().backlog_kinds.clear();
  if (!dedicated_->client_name_is(name_)) {
    // The name the client set before it was pinned belongs on the connection it now uses
    // (CLIENT GETNAME inside a transaction, CLIENT LIST on the primary); a connection another
    // named client used before loses that name ("" clears it).
    pin().inject.Clear();
    std::string_view args[] = {"CLIENT", "SETNAME", name_};
    resp::AppendCommand(pin().inject, args);
    SendPinned(pin().inject.data(), pin().inject.size(), {false, true, false});
    dedicated_->set_client_name(name_);
  }
  if (multi_first) {
    // The client had its +OK for MULTI already: the server's is dropped.
    static constexpr char kMulti[] = "*1\r\n$5\r\nMULTI\r\n";
    Request m;
    m.argc = m.nviews = 1;
    m.argv[0] = "MULTI";
    RouteDecision md = worker_->router().Classify(m);
    PinnedReq kind = TrackPinnedState(m, md);
    --stream_outstanding_;
    kind.swallow = true;
    SendPinned(kMulti, sizeof kMulti - 1, kind);
    // Keyless commands the client queued before the first key (answered QUEUED already).
    for (const std::string& held : pin().multi_held) {
      SendPinned(held.data(), held.size(), {false, true, false});
    }
    if (!pin().multi_held.empty()) dedicated_->forget_client_name();  // one may be SETNAME
    pin().multi_name = std::exchange(pin().held_name, std::nullopt);
    pin().multi_held.clear();
  }
  ForwardPinned(req, d, raw, len);
  return true;
}

ClientSession::PinnedReq ClientSession::TrackPinnedState(const Request& req,
                                                         const RouteDecision& d) {
  std::string_view name = req.arg(0);
  bool local = d.route == Route::kLocal;
  if (reset_forwarded_) ++after_reset_;
  // The client's name follows what the server runs, in its order: a CLIENT SETNAME or HELLO
  // ... SETNAME once answered (not refused), one queued in MULTI once EXEC's reply says the
  // transaction ran, RESET once answered (see ApplyNaming). The connection's own name is
  // unknown from the moment one is sent.
  PinnedReq kind{d.blocking && !in_multi_, false, d.push && !in_multi_};
  std::optional<std::string_view> sets_name;
  if (local && d.local == LocalCommand::kReset) {
    reset_forwarded_ = true;
    after_reset_ = 0;
    pin().multi_name.reset();
    in_multi_ = watching_ = false;  // what follows runs outside any transaction
    kind.naming = PinnedReq::kNameReset;
    if (dedicated_ != nullptr) dedicated_->set_client_name("");
  }
  if (local && d.local == LocalCommand::kClientSetName) sets_name = req.arg(2);
  if (local && d.local == LocalCommand::kHello && req.argc > 1) {
    // HELLO protover [AUTH user pass] [SETNAME name]
    for (size_t i = 2; i < req.argc; ++i) {
      if (EqualsLower(req.arg(i), "auth")) {
        i += 2;
      } else if (EqualsLower(req.arg(i), "setname") && i + 1 < req.argc) {
        sets_name = req.arg(++i);
      }
    }
  }
  if (sets_name) {
    if (dedicated_ != nullptr) dedicated_->forget_client_name();
    if (ValidClientName(*sets_name)) {
      if (in_multi_) {
        pin().multi_name = std::string(*sets_name);
      } else {
        kind.naming = PinnedReq::kNameSet;
        kind.new_name = std::string(*sets_name);
      }
    }
  }
  ++stream_outstanding_;
  if (!in_multi_) {
    // CLIENT REPLY: whether the commands the proxy answers in the stream get an answer.
    reply_skip_ = false;  // a SKIP covered this command
    if (req.argc == 3 && EqualsLower(name, "client") && EqualsLower(req.arg(1), "reply")) {
      if (EqualsLower(req.arg(2), "off")) reply_off_ = true;
      if (EqualsLower(req.arg(2), "on")) reply_off_ = false;
      if (EqualsLower(req.arg(2), "skip")) reply_skip_ = !reply_off_;
    }
  }
  // Transactions are followed whatever else holds the connection (MONITOR, CLIENT TRACKING,
  // a RESET not answered yet): a connection left inside MULTI must never go back to the
  // worker for another client.
  if (EqualsLower(name, "multi")) {
    in_multi_ = true;
    return kind;
  }
  if (EqualsLower(name, "exec") || EqualsLower(name, "discard")) {
    // Only inside MULTI do they end the transaction and drop WATCHes; outside it Redis
    // answers an error and the WATCH stays (the connection must not be reused then).
    if (in_multi_) watching_ = false;
    if (in_multi_ && EqualsLower(name, "exec")) {
      last_write_group_ = pin_group_;
      if (pin().multi_name) {
        kind.naming = PinnedReq::kNameExec;
        kind.new_name = std::move(*pin().multi_name);
      }
    }
    pin().multi_name.reset();
    in_multi_ = false;
    return kind;
  }
  if (EqualsLower(name, "watch")) {
    watching_ = true;
    return kind;
  }
  if (EqualsLower(name, "unwatch")) {
    if (!in_multi_) watching_ = false;
    return kind;
  }
  if (pin_permanent_) return kind;
  if (EqualsLower(name, "wait")) {
    // WAIT changes nothing on the connection.
  } else if (d.push && name.size() >= 9 && EqualsLower(name.substr(name.size() - 9), "subscribe")) {
    // (P|S)(UN)SUBSCRIBE: pinned while subscribed; the confirmations say when that ends. A
    // SUBSCRIBE not confirmed yet keeps the session in pub/sub whatever counts arrive first
    // (UNSUBSCRIBE and SUBSCRIBE in one batch), and a connection that ever subscribed is
    // not handed to anyone else afterwards.
    subscribed_ = true;
    dedicated_reusable_ = false;
    bool unsub = name.size() >= 11 && EqualsLower(name.substr(name.size() - 11), "unsubscribe");
    if (!unsub) pending_sub_confirms_ += req.argc > 1 ? req.argc - 1 : 0;
  } else if (d.blocking && !d.push) {
    // BLPOP, XREAD BLOCK, WAITAOF...: the connection only while it blocks. The session
    // leaves it once the reply is in (MaybeUnpin), so the client is back on shared
    // connections and replica reads.
  } else if (d.route == Route::kPin ||
             (local && d.local != LocalCommand::kPing && d.local != LocalCommand::kEcho &&
              d.local != LocalCommand::kClientSetName && d.local != LocalCommand::kClientGetName &&
              d.local != LocalCommand::kClientId && d.local != LocalCommand::kClientInfo &&
              d.local != LocalCommand::kClientList && d.local != LocalCommand::kClientSetInfo &&
              d.local != LocalCommand::kProxy)) {
    // Anything else that changes the connection for good keeps it pinned: MONITOR, CLIENT
    // REPLY/TRACKING, and what the proxy would otherwise answer itself (AUTH, HELLO,
    // SELECT, RESET reach the backend on a pinned connection).
    pin_permanent_ = true;
  }
  return kind;
}

ClientSession::PinnedHold ClientSession::HoldPinnedWrite(const Request& req,
                                                         const RouteDecision& d) {
  const Backend* on = dedicated_->backend();
  const Backend* primary = PinGroup().primary();
  bool exec = EqualsLower(req.arg(0), "exec");
  // Queued inside MULTI nothing is applied yet: only EXEC, or a write outside one (blocking
  // ones too: BLMOVE, BLPOP), waits.
  bool write = d.route == Route::kWrite || (d.info != nullptr && d.info->is(kCmdWrite));
  // Also when another node is the primary already: the worker closes the session at its
  // next tick, and until then the old one would still take the write (and lose it).
  bool fenced = on == primary && primary != nullptr && !primary->serves_writes() && primary->up();
  if (!(fenced || on != primary) || !(exec || (write && !in_multi_))) {
    pin_wait_deadline_ = 0;
    return PinnedHold::kGo;
  }
  uint64_t now = worker_->now();
  if (pin_wait_deadline_ == 0) pin_wait_deadline_ = now + worker_->timeout_ms();
  if (now < pin_wait_deadline_ && MayWait(PinGroup())) {
    // Sent once the primary is confirmed again; if another is named instead, the session's
    // connection is closed with the change, and this was never sent.
    waiting_to_pin_ = true;
    worker_->Park(this);
    return PinnedHold::kHeld;
  }
  // A whole timeout and the primary still takes no writes: sent now, it could be
  // acknowledged and lost. Not sent; the session ends (its state lives on that connection),
  // with the reason, as when its connection is lost.
  pin_wait_deadline_ = 0;
  worker_->stats().errors++;
  closing_after_flush_ = true;
  AbandonPinned();
  ReplyErrorNow(PrimaryUnavailable(primary) + "; not sent, session closed");
  PauseReading();
  MaybeFinish();
  return PinnedHold::kEnded;
}

void ClientSession::ForwardPinned(const Request& req, const RouteDecision& d, const char* raw,
                                  size_t len) {
  worker_->stats().pinned_requests++;
  PinnedReq kind = TrackPinnedState(req, d);
  await_unpin_ =
      worker_->topology().cluster() && !pin_permanent_ && !subscribed_ && !in_multi_ && !watching_;
  if (EqualsLower(req.arg(0), "wait") && !in_multi_) {
    // WAIT counts replicas that acknowledged this connection's last write, but the client's
    // writes went out on shared connections. A propagated no-op write here first (the
    // client's earlier writes have all been answered by now) makes WAIT wait for at least
    // those writes; its reply is swallowed.
    pin().inject.Clear();
    std::string_view args[] = {"PUBLISH", "__kompress:wait", ""};
    resp::AppendCommand(pin().inject, args);
    SendPinned(pin().inject.data(), pin().inject.size(), {false, true, false});
  }
  SendPinned(raw, len, kind);
}

bool ClientSession::AnswerInStream(const Request& req, const RouteDecision& d) {
  const bool self = d.route == Route::kLocal &&
                    (d.local == LocalCommand::kClientId || d.local == LocalCommand::kClientInfo ||
                     d.local == LocalCommand::kClientList);
  if (d.route != Route::kDeny && !self) return false;
  if (reset_forwarded_ || resubscribing_ || quit_pending_) return false;
  if (!in_multi_ && (reply_off_ || reply_skip_)) {
    // CLIENT REPLY OFF / SKIP: Redis would not answer it, and a marker would get no reply
    // either (its answer would wait for good). The server's SKIP is spent on a PING instead,
    // so the client's next command is answered, as it would be.
    if (!reply_off_) {
      static constexpr char kPing[] = "*1\r\n$4\r\nPING\r\n";
      SendPinned(kPing, sizeof kPing - 1, PinnedReq{false, true, false});
    }
    reply_skip_ = false;
    return true;
  }
  Buffer reply;
  if (d.route == Route::kDeny) {
    worker_->stats().errors++;
    resp::AppendError(reply, d.deny_reason);
  } else {
    capture_ = &reply;
    HandleLocal(d.local, req);
    capture_ = nullptr;
  }
  if (in_multi_) {
    // Queued in a transaction: a refusal makes EXEC abort, as a command Redis refuses at
    // queue time does. The proxy's own answers would have to sit inside EXEC's reply:
    // CLIENT INFO/LIST go as ECHO of the proxy's text (the server's list is not this
    // client's business); CLIENT ID goes to the server as before.
    if (d.route == Route::kDeny) {
      SendLocalMarker(std::string(reply.view()), /*as_command=*/true);
      return true;
    }
    if (d.local == LocalCommand::kClientId || reply.empty() || reply.data()[0] == '-') {
      return false;
    }
    std::string_view v = reply.view();  // $n\r\ntext\r\n, or =n\r\ntxt:text\r\n (RESP3)
    size_t body = v.find("\r\n") + 2;
    std::string_view text = v.substr(body, v.size() - body - 2);
    if (v[0] == '=') text.remove_prefix(4);
    pin().inject.Clear();
    std::string_view args[] = {"ECHO", text};
    resp::AppendCommand(pin().inject, args);
    ++stream_outstanding_;
    SendPinned(pin().inject.data(), pin().inject.size(), PinnedReq{});
    return true;
  }
  SendLocalMarker(std::string(reply.view()), /*as_command=*/false);
  return true;
}

void ClientSession::SendLocalMarker(std::string reply, bool as_command) {
  PinState& p = pin();
  uint64_t n = ++p.local_token;
  std::string token = "kompress-local-" + std::to_string(id_) + "-" + std::to_string(n);
  p.local_replies.emplace_back(n, std::move(reply));
  p.inject.Clear();
  if (as_command) {
    std::string_view args[] = {token};
    resp::AppendCommand(p.inject, args);
  } else {
    std::string_view args[] = {"PING", token};
    resp::AppendCommand(p.inject, args);
  }
  ++stream_outstanding_;
  SendPinned(p.inject.data(), p.inject.size(), PinnedReq{});
}

const std::string* ClientSession::TakeLocalReply(const char* data, size_t len) {
  // Only the exact answer to a marker is one: `PING token` answers the token as a bulk
  // string, or ["pong", token] while subscribed (RESP2); the token sent as a command (inside
  // MULTI) answers "unknown command 'token'...". A pub/sub message or a MONITOR line never
  // has those shapes, whatever it carries.
  if (!pin_ || pin_->local_replies.empty() || len > 256) return nullptr;
  std::string_view f(data, len);
  const std::string prefix = "kompress-local-" + std::to_string(id_) + "-";
  std::string_view token;
  if (f.substr(0, 4) == "*2\r\n") {
    if (f.substr(4, 10) != "$4\r\npong\r\n") return nullptr;
    f.remove_prefix(14);
  }
  if (f.substr(0, 22) == "-ERR unknown command '") {
    size_t end = f.find('\'', 22);
    if (end == std::string_view::npos) return nullptr;
    token = f.substr(22, end - 22);
  } else if (!f.empty() && f[0] == '$') {
    size_t eol = f.find("\r\n");
    if (eol == std::string_view::npos || f.size() < eol + 4 || f.substr(f.size() - 2) != "\r\n") {
      return nullptr;
    }
    token = f.substr(eol + 2, f.size() - eol - 4);
    if (f.substr(1, eol - 1) != std::to_string(token.size())) return nullptr;
  } else {
    return nullptr;
  }
  if (token.substr(0, prefix.size()) != prefix) return nullptr;
  uint64_t n = 0;
  for (char ch : token.substr(prefix.size())) {
    if (ch < '0' || ch > '9') return nullptr;
    n = n * 10 + static_cast<uint64_t>(ch - '0');
  }
  auto& q = pin_->local_replies;
  auto it = std::find_if(q.begin(), q.end(), [n](const auto& e) { return e.first == n; });
  if (it == q.end()) return nullptr;
  // Markers before it whose replies never came (CLIENT REPLY OFF/SKIP) are passed over.
  q.erase(q.begin(), it);
  pin_->local_out = std::move(q.front().second);
  q.pop_front();
  return &pin_->local_out;
}

void ClientSession::SendPinned(const char* raw, size_t len, PinnedReq kind) {
  if (head_ == stream_seq_ && pin().backlog.empty()) {
    dedicated_->SendRaw(raw, len);
    NoteSentPinned(kind);
  } else {
    pin().backlog.Append(raw, len);
    pin().backlog_kinds.push_back(kind);
  }
}

void ClientSession::NoteSentPinned(PinnedReq kind) {
  if (kind.push) {
    // From here replies no longer pair with requests: no per-request deadlines.
    push_mode_ = true;
    dedicated_->SetDeadline(0);
    return;
  }
  if (push_mode_) {
    // Replies are not paired with requests any more: a name is taken as the server will.
    if (kind.naming != PinnedReq::kNameNone) ApplyNaming(kind, nullptr, 0);
    return;
  }
  kind.end = dedicated_->queued_bytes();
  pin().inflight.push_back(kind);
  if (pin().inflight.size() == 1) ArmPinnedDeadline();
}

void ClientSession::ApplyNaming(const PinnedReq& kind, const char* data, size_t len) {
  // `data`: the server's reply, or null when it is not seen (push mode): taken as success.
  const bool error = data != nullptr && len > 0 && (data[0] == '-' || data[0] == '!');
  switch (kind.naming) {
    case PinnedReq::kNameSet:
      if (!error) name_ = kind.new_name;
      break;
    case PinnedReq::kNameExec:
      // EXEC ran the transaction (an array, not a nil for a failed WATCH, not EXECABORT).
      if (data == nullptr || (len > 1 && data[0] == '*' && data[1] != '-')) name_ = kind.new_name;
      break;
    case PinnedReq::kNameReset:
      if (!error) name_.clear();
      break;
    default:
      break;
  }
}

void ClientSession::ArmPinnedDeadline() {
  // The oldest request must be answered within the timeout unless it may legitimately
  // block (BLPOP, WAIT, ...): the same rule as on shared connections.
  if (dedicated_ == nullptr) return;
  if (push_mode_ || pin().inflight.empty() || pin().inflight.front().blocking) {
    dedicated_->SetDeadline(0);
  } else {
    dedicated_->SetDeadline(worker_->now() + worker_->timeout_ms(), pin().inflight.front().end);
  }
}

void ClientSession::OnStreamFrame(const char* data, size_t len) {
  if (closed_) return;
  if (resub_renaming_ && resub_swallow_ > 0) {
    // The answer to the CLIENT SETNAME ahead of the renewed subscriptions. Refused (an ACL
    // user without CLIENT SETNAME), the subscriptions are renewed all the same, under
    // whatever name the connection has.
    resub_renaming_ = false;
    if (len > 0 && (data[0] == '-' || data[0] == '!') && dedicated_ != nullptr) {
      dedicated_->forget_client_name();
    }
    return;
  }
  if (resub_swallow_ > 0 && len > 0 && (data[0] == '-' || data[0] == '!')) {
    // The renewal was refused (an ACL changed meanwhile...): the subscriber cannot be given
    // back what it had, so it is told and disconnected.
    std::string why(data + 1, len > 3 ? len - 3 : 0);
    resub_swallow_ = 0;
    resubscribe_since_ = 0;
    subscribed_ = false;
    closing_after_flush_ = true;
    AbandonPinned();
    worker_->stats().errors++;
    ReplyErrorNow("ERR kompress: subscriptions lost and could not be renewed (" + why + ")");
    PauseReading();
    MaybeFinish();
    return;
  }
  if (resub_swallow_ > 0 && IsSubscribeConfirmation(data, len, cls_.proto)) {
    // The confirmations of renewed subscriptions: the client has had them already.
    if (--resub_swallow_ == 0) {
      resubscribe_since_ = 0;
      dedicated_->SetDeadline(0);
      ResumeReading();
      if (!in_.empty()) ProcessInput();
    }
    return;
  }
  if (unpin_marker_sent_ && std::string_view(data, len) == pin().unpin_marker) {
    // Everything sent before the marker has been answered: the connection is quiet and
    // clean, the session leaves it, and the client's input is read again.
    unpin_marker_sent_ = false;
    stream_outstanding_ = 0;
    pin().inflight.clear();
    dedicated_->SetDeadline(0);
    MaybeUnpin();
    ResumeReading();
    if (!in_.empty()) ProcessInput();
    return;
  }
  if (quit_marker_sent_ && IsMarkerPong(data, len, pin().quit_marker)) {
    quit_marker_seen_ = true;  // the proxy's, after QUIT: everything before it is relayed
    MaybeQuit();
    return;
  }
  bool swallow = false, blocking = false;
  if (!pin().inflight.empty()) {
    swallow = pin().inflight.front().swallow;
    blocking = pin().inflight.front().blocking;
    if (pin().inflight.front().naming != PinnedReq::kNameNone) {
      ApplyNaming(pin().inflight.front(), data, len);
    }
    pin().inflight.pop_front();
    ArmPinnedDeadline();
  }
  if (swallow) return;  // the reply to a command the proxy added (CLIENT SETNAME, PUBLISH)
  if (const std::string* mine = TakeLocalReply(data, len)) {
    data = mine->data();  // a marker's reply: the proxy's own answer goes in its place
    len = mine->size();
  }
  // Anything answered on the dedicated connection may have been a write (EXEC, BLPOP...):
  // the reads that follow once the session is unpinned must see it. (Not pub/sub traffic.)
  if (!push_mode_) {
    Ryw(pin_group_).OnWrite(PinGroup().progress());
    // A WAIT after it counts this shard's replicas: an EXEC's (noted as it was sent), or a
    // blocking pop's that got something (one that timed out wrote nothing).
    const bool nil = (len == 5 && (std::memcmp(data, "*-1\r\n", 5) == 0 ||
                                   std::memcmp(data, "$-1\r\n", 5) == 0)) ||
                     (len == 3 && std::memcmp(data, "_\r\n", 3) == 0);
    if (blocking && !nil && len > 0 && data[0] != '-') last_write_group_ = pin_group_;
  }
  if (len > worker_->config().client.max_client_buffer_bytes) {
    oversize_bytes_ = std::max(oversize_bytes_, len);
  }
  if (worker_->topology().cluster() && len > 7 &&
      (std::memcmp(data, "-MOVED ", 7) == 0 || std::memcmp(data, "-ASK ", 5) == 0)) {
    // A command of the pinned session (a transaction) for a key another shard serves: what
    // Redis says of keys in several slots, never a redirection the client cannot follow.
    static constexpr char kCross[] = "-CROSSSLOT Keys in request don't hash to the same slot\r\n";
    data = kCross;
    len = sizeof kCross - 1;
  }
  out_.Append(data, len);
  worker_->MarkDirty(this);
  // A subscriber that does not read is dropped as soon as it is over the bound, not at the
  // end of the loop turn: one turn may bring tens of megabytes of messages (libuv reads a
  // busy socket up to 32 times per event), all of which would be held first.
  if (push_mode_ && !CheckOutputLimit()) return;
  if (stream_outstanding_ > 0) --stream_outstanding_;
  if (push_mode_ && subscribed_) NoteSubscriptionReply(data, len);
  const bool reset_answered =
      reset_forwarded_ && len == 8 && std::memcmp(data, "+RESET\r\n", 8) == 0;
  if (reset_answered) {
    // RESET answered: the connection is back to its defaults (database 0, no transaction,
    // no subscriptions), so the session can leave pinned mode once everything sent after
    // RESET is answered too. RESET also logged the connection out of the backend, so with
    // backend credentials it is closed rather than reused.
    reset_forwarded_ = false;
    reply_off_ = reply_skip_ = false;
    authenticated_ = NeedsNoAuth(worker_->config());
    // What arrived after RESET is framed again from its start by the parser for the new
    // state: a request half-read meanwhile must not resume in a parser the client may
    // return to after authenticating again.
    own_parser_.reset();
    if (preauth_parser_) preauth_parser_->Reset();
    pin_permanent_ = false;
    // (in_multi_ and watching_ were cleared as RESET was sent: a MULTI or WATCH sent after it
    // holds again, and must keep the connection.)
    push_mode_ = subscribed_ = false;
    // Counting replies was meaningless in push mode; what is still due is what came after.
    stream_outstanding_ = after_reset_;
    if (!worker_->config().backend_password.empty()) dedicated_reusable_ = false;
    if (!cls_.is_default()) dedicated_reusable_ = false;  // the connection is in db 0, RESP2 now
    cls_ = ConnClass{};
  }
  if (!pin_permanent_) MaybeUnpin();
  MaybeQuit();
  // What the client sent after RESET waited for its answer (HandleRequest).
  if (reset_answered && !closed_) MaybeResume();
}

void ClientSession::NoteSubscriptionReply(const char* data, size_t len) {
  // A (un)subscribe confirmation: [kind, channel, count] with `count` the subscriptions left
  // of that family (channels and patterns together; shard channels on their own).
  std::string_view f(data, len);
  // RESP3 sends confirmations as pushes; an array there is an ordinary reply (a RESP3
  // client may run any command while subscribed), whatever it contains.
  char type = cls_.proto == 3 ? '>' : '*';
  if (f.size() < 8 || f[0] != type || f.substr(1, 3) != "3\r\n") return;
  size_t eol = f.find("\r\n", 4);
  if (eol == std::string_view::npos || f[4] != '$') return;
  size_t name_len = static_cast<size_t>(std::atoi(std::string(f.substr(5, eol - 5)).c_str()));
  if (eol + 2 + name_len > f.size()) return;
  std::string_view kind = f.substr(eol + 2, name_len);
  bool shard = EqualsLower(kind, "ssubscribe") || EqualsLower(kind, "sunsubscribe");
  if (!shard && !EqualsLower(kind, "subscribe") && !EqualsLower(kind, "unsubscribe") &&
      !EqualsLower(kind, "psubscribe") && !EqualsLower(kind, "punsubscribe")) {
    return;  // a message
  }
  // The count is the last element: an integer line of its own.
  size_t colon = f.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || f[colon - 1] != '\n' ||
      f.size() < colon + 3) {
    return;
  }
  int64_t count = std::atoll(std::string(f.substr(colon + 1, f.size() - colon - 3)).c_str());
  (shard ? shard_subscriptions_ : subscriptions_) = count;
  bool confirms_subscribe = EqualsLower(kind, "subscribe") || EqualsLower(kind, "psubscribe") ||
                            EqualsLower(kind, "ssubscribe");
  if (confirms_subscribe && pending_sub_confirms_ > 0) --pending_sub_confirms_;
  // What the client is subscribed to, to renew it elsewhere if the connection is lost.
  size_t at = eol + 2 + name_len + 2;
  if (at < f.size() && f[at] == '$') {
    size_t e = f.find("\r\n", at);
    int64_t n = e == std::string_view::npos
                    ? -1
                    : std::atoll(std::string(f.substr(at + 1, e - at - 1)).c_str());
    if (n >= 0 && e + 2 + static_cast<size_t>(n) <= f.size()) {
      std::string target(f.substr(e + 2, static_cast<size_t>(n)));
      bool pattern = kind.size() > 1 && (kind[0] == 'p' || kind[0] == 'P');
      auto& set = shard ? pin().shard_channels : pattern ? pin().patterns : pin().channels;
      bool adds = !(EqualsLower(kind, "unsubscribe") || EqualsLower(kind, "punsubscribe") ||
                    EqualsLower(kind, "sunsubscribe"));
      if (adds) {
        set.insert(std::move(target));
      } else {
        set.erase(target);
      }
    }
  }
  if (subscriptions_ != 0 || shard_subscriptions_ != 0 || pending_sub_confirms_ != 0) return;
  // No subscription left: the connection answers normally again. Unless something else keeps
  // it (MONITOR, a transaction...), the session leaves it once what the client sent after the
  // last UNSUBSCRIBE is answered too: a marker PING goes last, and the client's further input
  // waits for its answer.
  subscribed_ = false;
  push_mode_ = false;
  if (pin_permanent_ || in_multi_ || watching_ || quit_pending_ || dedicated_ == nullptr) return;
  unpin_marker_token_++;
  std::string token =
      "kompress-unpin-" + std::to_string(id_) + "-" + std::to_string(unpin_marker_token_);
  pin().inject.Clear();
  std::string_view args[] = {"PING", token};
  resp::AppendCommand(pin().inject, args);
  dedicated_->SendRaw(pin().inject.data(), pin().inject.size());
  dedicated_->SetDeadline(worker_->now() + worker_->timeout_ms());
  pin().unpin_marker.clear();
  Buffer b;
  resp::AppendBulk(b, token);
  pin().unpin_marker.assign(b.data(), b.size());
  unpin_marker_sent_ = true;
  PauseReading();
}

void ClientSession::MaybeQuit() {
  if (!quit_pending_ || closed_ || dedicated_ == nullptr) return;
  if (!pin().backlog.empty() || head_ != stream_seq_) return;  // earlier requests not sent yet
  // Replies still due are relayed first. In push mode they do not pair with requests, so a
  // PING goes last: once its answer is back, everything before it has been relayed.
  if (push_mode_) {
    if (!quit_marker_sent_) {
      quit_marker_sent_ = true;
      // A token of its own, so no PING of the client's can be taken for it.
      pin().quit_marker = "kompress-quit-" + std::to_string(id_);
      pin().inject.Clear();
      std::string_view args[] = {"PING", pin().quit_marker};
      resp::AppendCommand(pin().inject, args);
      dedicated_->SetDeadline(worker_->now() + worker_->timeout_ms());
      dedicated_->SendRaw(pin().inject.data(), pin().inject.size());
    }
    if (!quit_marker_seen_) return;
  } else if (stream_outstanding_ != 0 || !pin().inflight.empty()) {
    // At the client's EOF a command blocked without end is not waited for (see OnPeerEof);
    // a QUIT the client sent after it is, as Redis reads nothing from a blocked client.
    if (!quit_silent_ || pin().inflight.empty() || !pin().inflight.front().blocking) return;
  }
  AbandonPinned();  // closed quietly: the backend is not blamed for it
  if (!quit_silent_) {
    scratch_.Clear();
    resp::AppendSimple(scratch_, "OK");
    ReplyNow(scratch_);
  }
  closing_after_flush_ = true;
  MaybeFinish();
}

void ClientSession::MaybeUnpin() {
  if (pin_permanent_ || subscribed_ || unpin_marker_sent_ || quit_pending_ ||
      stream_outstanding_ != 0 || !pin().backlog.empty() || !pin().inflight.empty() ||
      dedicated_ == nullptr || head_ != stream_seq_) {
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
  if (pin_) {
    pin_->backlog.Clear();
    pin_->backlog_kinds.clear();
    pin_->inflight.clear();
  }
  if (slots_.empty()) return;  // an idle client: no stream slot
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
  if (subscribed_ && !pin_permanent_ && !in_multi_ && !watching_ && !quit_pending_ &&
      !unpin_marker_sent_ && pin().backlog.empty() && head_ == stream_seq_ &&
      (!pin().channels.empty() || !pin().patterns.empty() || !pin().shard_channels.empty())) {
    // A subscriber has nothing in flight but its subscriptions: they are renewed on the
    // primary (a new one after a failover) instead of ending the client. Messages published
    // in between are lost, as with any reconnecting subscriber.
    if (resubscribe_since_ == 0) {
      resubscribe_since_ = worker_->now();
      Log().warn("client {}: subscription connection lost ({}); renewing its subscriptions", id_,
                 reason);
    }
    resubscribing_ = true;
    pin().resubscribe_reason = reason;
    pin().inflight.clear();
    resub_swallow_ = 0;
    PauseReading();
    worker_->Park(this);
    return;
  }
  // With nothing asked and unanswered (an idle client inside WATCH, say) the client's
  // connection just closes, as its own connection to Redis would: an error nobody asked for
  // would be taken as the answer to its next command.
  const bool asked = stream_outstanding_ > 0 || (pin_ && !pin_->backlog.empty());
  // An EXEC (or a write) held for the primary to be confirmed, never sent: the client waits
  // for its answer, and a bare close would read as "may or may not have been applied".
  const bool held = !asked && pin_wait_deadline_ != 0 && !in_.empty();
  pin_wait_deadline_ = 0;
  closing_after_flush_ = true;
  AbandonPinned();
  Log().info("client {}: pinned connection failed ({}); closing the client{}", id_, reason,
             asked  ? ""
             : held ? " (its next command, held for the primary, was not sent)"
                    : " (nothing was in flight)");
  if (asked) {
    worker_->stats().errors++;
    ReplyErrorNow(std::string(errors::kPinnedLost) + " (" + reason + ")");
  } else if (held) {
    worker_->stats().errors++;
    ReplyErrorNow(std::string(errors::kPinnedHeldLost) + " (" + reason + ")");
  }
  closing_after_flush_ = true;
  PauseReading();
  MaybeFinish();
}

void ClientSession::TryResubscribe() {
  // A subscriber waits for a primary longer than a request would: it has nothing else to do,
  // and failovers take seconds.
  constexpr uint64_t kPatienceMs = 30'000;
  Backend* primary = PinGroup().primary();
  if (primary == nullptr || !primary->serves_writes()) {
    if (worker_->now() - resubscribe_since_ < kPatienceMs) return;
    resubscribing_ = false;
    resubscribe_since_ = 0;
    subscribed_ = false;
    OnStreamFailure(pin().resubscribe_reason + "; no primary to renew the subscriptions on");
    return;
  }
  resubscribing_ = false;
  dedicated_ = worker_->NewDedicatedConn(primary, this, cls_);
  pin().inject.Clear();
  resub_swallow_ = 0;
  resub_renaming_ = !dedicated_->client_name_is(name_);
  if (resub_renaming_) {
    // An idle connection may carry another client's name; this one's goes first.
    std::string_view args[] = {"CLIENT", "SETNAME", name_};
    resp::AppendCommand(pin().inject, args);
    dedicated_->set_client_name(name_);
  }
  auto add = [&](const char* cmd, const std::set<std::string>& targets) {
    if (targets.empty()) return;
    std::vector<std::string_view> args{cmd};
    for (const std::string& t : targets) args.push_back(t);
    resp::AppendCommand(pin().inject, args);
    resub_swallow_ += targets.size();
  };
  add("SUBSCRIBE", pin().channels);
  add("PSUBSCRIBE", pin().patterns);
  add("SSUBSCRIBE", pin().shard_channels);
  dedicated_->SendRaw(pin().inject.data(), pin().inject.size());
  dedicated_->SetDeadline(worker_->now() + worker_->timeout_ms());
  Log().info("client {}: {} subscription(s) renewed on {}", id_, resub_swallow_, primary->name());
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
  if (multi_refused_queued_) {
    // A command of the transaction was refused: Redis queues the rest, and EXEC aborts.
    scratch_.Clear();
    resp::AppendSimple(scratch_, "QUEUED");
    return ReplyNow(scratch_);
  }
  worker_->stats().errors++;
  ReplyErrorNow(
      "ERR kompress: not queued: the transaction could not start (primary unavailable); EXEC "
      "will abort it");
}

}  // namespace kp
