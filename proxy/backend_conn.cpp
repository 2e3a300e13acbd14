// BackendConn: connecting (resolve, connect, AUTH), batching writes, framing replies and
// matching them to requests, and turning every failure into answers for pending requests.
#include "proxy/backend_conn.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <cstring>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/logging.h"
#include "common/resp_writer.h"
#include "proxy/client_session.h"
#include "proxy/descriptors.h"
#include "proxy/loopback_tcp.h"
#include "proxy/tls.h"
#include "proxy/unread_bytes.h"
#include "proxy/worker.h"

namespace kp {

namespace {
// A reply still incomplete with this much buffered is streamed (see StreamPart).
constexpr size_t kStreamAt = 256 * 1024;
// A client this far behind a streamed reply pauses its connection (see StreamPart).
constexpr size_t kStreamWindow = 1024 * 1024;
// Less than this taken by a client a connection waits for is not reading (CheckTimeout).
constexpr size_t kReadProgressBytes = 16 * 1024;
// How long after a pause the paused-for client's queue is taken again (see settle_at_ms_).
constexpr uint64_t kSettleMs = 500;
// Whether the client reads is judged on what it took over this long after that (see
// HeadReads): judged at once, a client reading 320 KB/s was found not to read.
constexpr uint64_t kJudgeMs = 250;
// A pause for a streamed reply's client this long or longer is one for a slow reader (the
// pause lasts while it takes about 0.5 MB: slower than 0.5 MB/s), and the requests behind
// it are charged for it (OthersBehind). Shorter ones are not: on a loaded machine, 50
// redis-benchmark clients reading 16 MB values took 250 ms and more, and were dropped for
// the total bound once the connections read on.
constexpr uint64_t kSlowPauseMs = 1000;
// What a request waits behind slow readers in all, at most (or `timeout`, if shorter): the
// default 5 s timeout is long for a small GET held behind a client that does not read.
constexpr uint64_t kMaxSlowHeldMs = 1000;
// A shared connection owing this many replies to requests already answered by the timeout
// starts over (see CheckTimeout).
constexpr size_t kMaxLateReplies = 128;
// Requests at least this large are written straight from the client's buffer (see Send).
constexpr size_t kWriteThroughAt = 64 * 1024;
// A batch this large is written at once, replies owed or not (see Corked): Redis reads up to
// 16 KB of a connection's input per event anyway.
constexpr size_t kCorkBelow = 16 * 1024;
}  // namespace

// An address lookup in flight. It outlives the connection if the connection gives up first,
// so it holds a pointer the connection clears instead of a reference it might dangle.
struct BackendConn::Resolve {
  uv_getaddrinfo_t req;
  BackendConn* conn;
};

BackendConn::BackendConn(Worker* worker, Backend* backend, Mode mode, ClientSession* owner,
                         ConnClass cls)
    : worker_(worker),
      backend_(backend),
      mode_(mode),
      owner_(owner),
      cls_(cls),
      framer_(worker->config().resp.ForReplies()) {}

bool BackendConn::Send(ClientSession* client, uint64_t seq, const char* data, size_t len,
                       uint64_t deadline_ms, Buffer* donor) {
  queued_total_ += len;
  pending_.push_back({client, seq, deadline_ms, false, queued_total_, slow_held_ms_});
  size_t sent = 0;
  if (len >= kWriteThroughAt && state_ == State::kReady && !tls_ && !writing_ &&
      !awaiting_handshake_ && out_.empty() && queued_.empty() && !fail_soon_) {
    // A large request with nothing queued before it goes from the client's buffer to the
    // socket at once: what the socket takes is not copied (a 16 MB SET was bound by copying
    // and faulting in the pages to copy into). Errors show at the next write or read.
    uv_buf_t b = uv_buf_init(const_cast<char*>(data), static_cast<unsigned>(len));
    int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1);
    if (n > 0) sent = static_cast<size_t>(n);
  }
  bool took = false;
  if (donor != nullptr && len >= kWriteThroughAt && sent < len && donor->data() == data &&
      donor->size() == len) {
    // What the socket did not take is queued by taking the client's buffer itself: a 16 MB
    // SET was otherwise copied once more, into pages faulted in and zeroed for it. It waits
    // behind out_ as a buffer of its own; what comes after it goes into another.
    queued_.emplace_back();
    queued_.back().swap(*donor);
    queued_.back().Consume(sent);
    tail_appendable_ = false;
    took = true;
  } else {
    Tail().Append(data + sent, len - sent);
  }
  if (state_ == State::kIdle) {
    ConnectUnlessRefusing();
  } else if (state_ == State::kReady) {
    worker_->MarkDirty(this);
  }
  return took;
}

void BackendConn::SendRaw(const char* data, size_t len) {
  queued_total_ += len;
  Tail().Append(data, len);
  if (state_ == State::kIdle) {
    StartConnect();
  } else if (state_ == State::kReady) {
    worker_->MarkDirty(this);
  }
}

Buffer& BackendConn::Tail() {
  if (queued_.empty()) return out_;
  if (!tail_appendable_) {
    // Not appended to a taken buffer: growing it would copy the value after all.
    queued_.emplace_back();
    tail_appendable_ = true;
  }
  return queued_.back();
}

bool BackendConn::NextQueued() {
  if (!out_.empty()) return true;
  if (queued_.empty()) return false;
  out_.swap(queued_.front());
  queued_.erase(queued_.begin());
  if (queued_.empty()) tail_appendable_ = false;
  return true;
}

void BackendConn::QueueHandshake() {
  // What makes the connection what its class says, in front of whatever is already queued:
  // AUTH (or HELLO 3 with AUTH), then SELECT. Each reply is checked and dropped, and nothing
  // else is written until all are accepted: pipelined behind a refused SELECT (BUSY in a
  // script, NOPERM for an ACL user) a write ran in database 0, and behind a refused AUTH
  // (a password changed meanwhile) as the default user. One round trip per new connection.
  const Config& c = worker_->config();
  std::string username = c.backend_username, password = c.backend_password;
  if (cls_.user != 0) {
    // An ACL user's class: the connection is that user's (auth_mode passthrough).
    std::tie(username, password) = worker_->credentials().Get(cls_.user);
  }
  Buffer hs;
  uint8_t kinds[3];
  size_t n = 0;
  if (cls_.proto == 3) {
    std::string user = username.empty() ? "default" : username;
    if (password.empty()) {
      std::string_view args[] = {"HELLO", "3"};
      resp::AppendCommand(hs, args);
    } else {
      std::string_view args[] = {"HELLO", "3", "AUTH", user, password};
      resp::AppendCommand(hs, args);
    }
    kinds[n++] = password.empty() ? kHandshakeHello : kHandshakeAuth;
  } else if (!password.empty()) {
    resp::AppendAuth(hs, username, password);
    kinds[n++] = kHandshakeAuth;
  }
  if (cls_.db != 0) {
    std::string db = std::to_string(cls_.db);
    std::string_view args[] = {"SELECT", db};
    resp::AppendCommand(hs, args);
    kinds[n++] = kHandshakeSelect;
  }
  readonly_ = c.cluster() && !side_ && !backend_->is_primary();
  if (readonly_) {
    // Redis Cluster replicas answer reads only on READONLY connections (harmless on a
    // replica that becomes a primary). Not on a primary's: demoted by a failover, it would
    // answer reads from its own data, before it has the writes the new primary took
    // (a client's GET right after its acknowledged SET read the value before), where
    // without READONLY it answers MOVED to the new primary.
    std::string_view args[] = {"READONLY"};
    resp::AppendCommand(hs, args);
    kinds[n++] = kHandshakeReadonly;
  }
  if (n == 0 && mode_ == Mode::kShared && !side_ && backend_->is_primary()) {
    // Nothing else to say first, on a primary: a PING all the same, so that no write goes
    // out before the server has read something from this socket. A server being killed
    // still completes connections into its listen backlog, and closes them unread a moment
    // later; a write sent on one could not be known to be unapplied ("may or may not"),
    // where behind an unanswered PING it is known unsent and waits for the next primary.
    // An error answer is what the requests would get (see HandshakeRefused). Not on a side
    // connection: SCRIPT/FUNCTION KILL go there while a script runs, when PING gets -BUSY.
    std::string_view args[] = {"PING"};
    resp::AppendCommand(hs, args);
    kinds[n++] = kHandshakePing;
  }
  if (n == 0) return;
  const uint64_t hs_len = hs.size();
  queued_total_ += hs_len;
  hs_out_.swap(hs);
  awaiting_handshake_ = true;
  if (mode_ == Mode::kShared) {
    Ring<PendingReply> with;
    for (size_t k = 0; k < n; ++k) {
      with.push_back({nullptr, kinds[k], worker_->now() + worker_->timeout_ms(), true, hs_len});
    }
    while (!pending_.empty()) {
      with.push_back(pending_.front());
      with[with.size() - 1].end += hs_len;  // its bytes now go after the handshake's
      pending_.pop_front();
    }
    pending_.swap(with);
  } else {
    for (size_t k = 0; k < n; ++k) handshake_kinds_[k] = kinds[k];
    handshake_next_ = 0;
    auth_replies_expected_ = static_cast<int>(n);
  }
}

bool BackendConn::RefusesService(const char* reply, size_t len) {
  // The answers that refuse this connection anything, which the requests behind would get
  // too: what Redis writes on accept before closing (max number of clients, DENIED by
  // protected mode), LOADING, BUSY, NOAUTH, MASTERDOWN. Any other error to the PING (NOPERM,
  // PING renamed away) still shows the server reading the socket.
  std::string_view r(reply, len);
  for (std::string_view p :
       {"-LOADING", "-BUSY", "-NOAUTH", "-MASTERDOWN", "-DENIED", "-ERR max number of clients"}) {
    if (r.substr(0, p.size()) == p) return true;
  }
  return false;
}

void BackendConn::HandshakeDone() {
  // Every part accepted: the connection is what its class says, and what waits goes out.
  awaiting_handshake_ = false;
  if (!out_.empty() || !queued_.empty()) worker_->MarkDirty(this);
}

void BackendConn::HandshakeRefused(uint64_t kind, const char* p, size_t len) {
  // A refused AUTH is a configuration problem of that node (marked down, as the monitor's
  // own AUTH would find); a refused SELECT or HELLO concerns only this class.
  std::string text(p + 1, len > 3 ? len - 3 : 0);
  const char* what = kind == kHandshakeAuth     ? "AUTH"
                     : kind == kHandshakeHello  ? "HELLO 3"
                     : kind == kHandshakeSelect ? "SELECT"
                     : kind == kHandshakePing   ? "PING"
                                                : "READONLY";
  std::string reason = std::string(what) + " refused: " + text;
  if (mode_ == Mode::kShared &&
      (kind == kHandshakeSelect || kind == kHandshakeReadonly || kind == kHandshakePing)) {
    // A busy server (a script running) refuses SELECT and READONLY, and would refuse every
    // request held behind them the same way; an ACL user may lack SELECT. Nothing behind the
    // handshake was sent, so on a primary each request gets that answer: the server's own
    // -BUSY, as a direct client would, or an error saying what was refused (a read on a
    // replica goes to the primary instead). For a moment new requests get it too without
    // connecting again: clients retrying on -BUSY opened thousands of connections a second,
    // one per refused attempt.
    // A refused PING is the server's answer to anything on this connection, given verbatim:
    // what Redis writes on accept and then closes with (max number of clients reached,
    // DENIED by protected mode), LOADING, NOAUTH.
    if (text.rfind("BUSY", 0) == 0 || kind == kHandshakePing) {
      refused_.assign(p, len);
    } else {
      refused_ = "-ERR kompress: " + reason + "\r\n";
    }
    refused_reason_ = reason;
    refused_until_ms_ = worker_->now() + kRefusedHoldMs;
    answer_refused_ = true;
    Fail(reason, false);
    return;
  }
  if (mode_ == Mode::kShared) {
    // A refused AUTH or HELLO: nothing behind it was sent, and run on as the default user the
    // requests once bypassed an ACL user's rules. On a primary each gets a definite answer at
    // once: Redis's own words for an ACL user's class (WRONGPASS: its password changed since
    // the client's AUTH), else what was refused. Not held: a new AUTH of the client, or a
    // configuration reload, may bring the right password at once. (Parked to wait for a
    // primary instead, they were sent again and refused again without end.)
    refused_ = cls_.user != 0 ? std::string(p, len) : "-ERR kompress: " + reason + "\r\n";
    refused_reason_ = reason;
    refused_until_ms_ = 0;
    answer_refused_ = true;
  }
  // A refused AUTH of the proxy's own is a configuration problem of that node (marked down,
  // as the monitor's own AUTH would find); an ACL user's is that client's business.
  Fail(reason, kind == kHandshakeAuth && cls_.user == 0);
}

void BackendConn::StartConnect() {
  QueueHandshake();
  const Endpoint& ep = backend_->endpoint();
  sockaddr_in6 a6;
  sockaddr_in a4;
  // Literal addresses skip the resolver (which runs on libuv's thread pool).
  if (uv_ip4_addr(ep.host.c_str(), ep.port, &a4) == 0) {
    ConnectTo(reinterpret_cast<const sockaddr*>(&a4));
    return;
  }
  std::string host = ep.host;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (uv_ip6_addr(host.c_str(), ep.port, &a6) == 0) {
    ConnectTo(reinterpret_cast<const sockaddr*>(&a6));
    return;
  }
  state_ = State::kResolving;
  resolve_ = new Resolve{{}, this};
  resolve_->req.data = resolve_;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  std::string port = std::to_string(ep.port);
  int rc = uv_getaddrinfo(
      worker_->loop(), &resolve_->req,
      [](uv_getaddrinfo_t* req, int status, addrinfo* res) {
        auto* r = static_cast<Resolve*>(req->data);
        BackendConn* self = r->conn;
        delete r;
        if (self == nullptr) {  // the connection gave up meanwhile
          uv_freeaddrinfo(res);
          return;
        }
        self->resolve_ = nullptr;
        if (status != 0 || res == nullptr) {
          uv_freeaddrinfo(res);
          self->state_ = State::kIdle;
          self->Fail(std::string("cannot resolve host: ") + uv_strerror(status), true);
          return;
        }
        // Prefer IPv4: "localhost" resolves to both and Redis often listens on one only.
        const addrinfo* pick = res;
        for (const addrinfo* ai = res; ai; ai = ai->ai_next) {
          if (ai->ai_family == AF_INET) {
            pick = ai;
            break;
          }
        }
        sockaddr_storage addr;
        std::memcpy(&addr, pick->ai_addr, pick->ai_addrlen);
        uv_freeaddrinfo(res);
        self->ConnectTo(reinterpret_cast<const sockaddr*>(&addr));
      },
      ep.host.c_str(), port.c_str(), &hints);
  if (rc != 0) {
    delete resolve_;
    resolve_ = nullptr;
    state_ = State::kIdle;
    FailSoon(std::string("cannot resolve host: ") + uv_strerror(rc), true);
  }
}

void BackendConn::ConnectTo(const sockaddr* addr) {
  uv_tcp_init(worker_->loop(), &tcp_);
  tcp_.data = this;
  state_ = State::kConnecting;
  connect_req_.data = this;
  int rc = uv_tcp_connect(&connect_req_, &tcp_, addr, ConnectCb);
  if (rc != 0) {
    // Called from Send(): reported a loop turn later (see FailSoon).
    bool local = IsDescriptorShortage(rc);
    if (local) NoteDescriptorShortage("backend connection");
    FailSoon(std::string("connect: ") + uv_strerror(rc), !local);
  }
}

void BackendConn::FailConnect(int err) {
  // A connection refused, reset or timed out is the backend's answer: the connect is itself
  // the retry after whatever failed before, so the node is marked down. Running out of
  // descriptors is this process's problem, and blaming the backend for it would turn a
  // client surge into an outage.
  bool local = IsDescriptorShortage(err);
  if (local) NoteDescriptorShortage("backend connection");
  Fail(std::string("connect: ") + uv_strerror(err), !local);
}

void BackendConn::ConnectCb(uv_connect_t* req, int status) {
  static_cast<BackendConn*>(req->data)->OnConnected(status);
}

void BackendConn::OnConnected(int status) {
  if (state_ != State::kConnecting) return;  // closed while connecting (status is ECANCELED)
  if (status != 0) {
    FailConnect(status);
    return;
  }
  state_ = State::kReady;
  if (worker_->backend_tls() != nullptr) {
    const std::string& name = worker_->config().backend_tls_server_name;
    tls_ = std::make_unique<TlsStream>(worker_->backend_tls(),
                                       name.empty() ? backend_->endpoint().host : name);
    if (tls_->Start() != TlsStream::Status::kOk) {
      Fail("TLS: " + tls_->error(), true);
      return;
    }
  }
  uv_tcp_nodelay(&tcp_, 1);
  uv_tcp_keepalive(&tcp_, 1, 60);
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&tcp_), &fd) == 0) {
    TuneLoopbackCongestion(fd, worker_->config().loopback_tcp_congestion);
  }
  uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), AllocCb, ReadCb);
  Log().debug("connected to {} {}", backend_->is_primary() ? "primary" : "replica",
              backend_->name());
  Flush();
}

void BackendConn::Flush() {
  if (fail_soon_) {
    std::string reason = std::move(fail_soon_reason_);
    Fail(reason, fail_soon_mark_down_);
    return;
  }
  if (state_ != State::kReady || writing_) return;
  if (tls_) {
    // Plaintext is encrypted as it goes (held by the stream until the handshake is done);
    // the handshake's own records go out too.
    if (!hs_out_.empty()) {
      if (tls_->Write(hs_out_.data(), hs_out_.size()) != TlsStream::Status::kOk) {
        Fail("TLS: " + tls_->error(), true);
        return;
      }
      hs_out_.Clear();
    }
    // A corked batch (see Corked) is not encrypted yet: one record for all of it later.
    bool wrote = false;
    while (!awaiting_handshake_ && !Corked() && NextQueued()) {
      if (tls_->Write(out_.data(), out_.size()) != TlsStream::Status::kOk) {
        Fail("TLS: " + tls_->error(), true);
        return;
      }
      out_.Clear();
      out_.ShrinkIfEmpty(kKeepBuffer);  // a large value's room is not kept
      wrote = true;
    }
    if (wrote) {
      if (queued_.empty()) flushed_total_ = queued_total_;
      read_since_write_ = false;
    }
    tls_->TakeOutput(&wbuf_);
    if (wbuf_.empty()) return;
  } else if (!hs_out_.empty()) {
    hs_out_.swap(wbuf_);
  } else {
    if (awaiting_handshake_ || !NextQueued() || Corked()) return;
    out_.swap(wbuf_);
    if (queued_.empty()) flushed_total_ = queued_total_;
    read_since_write_ = false;
  }
  uv_buf_t b = uv_buf_init(wbuf_.data(), static_cast<unsigned>(wbuf_.size()));
  // Straight to the socket first: when it takes everything (the usual case) no write request
  // is queued, so libuv neither calls back nor re-arms the poller (one epoll_ctl per write
  // otherwise).
  int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1);
  if (n == static_cast<int>(wbuf_.size())) {
    wbuf_.Clear();
    wbuf_.ShrinkIfEmpty(kKeepBuffer);
    if (!queued_.empty()) Flush();  // the next queued buffer (at most a few: large values)
    return;
  }
  if (n < 0 && n != UV_EAGAIN) {
    wbuf_.Clear();
    Fail(std::string("write: ") + uv_strerror(n), false);  // lost: see OnRead
    return;
  }
  if (n > 0) {
    wbuf_.Consume(static_cast<size_t>(n));
    b = uv_buf_init(wbuf_.data(), static_cast<unsigned>(wbuf_.size()));
  }
  write_req_.data = this;
  int rc = uv_write(&write_req_, reinterpret_cast<uv_stream_t*>(&tcp_), &b, 1, WriteCb);
  if (rc != 0) {
    wbuf_.Clear();
    Fail(std::string("write: ") + uv_strerror(rc), false);  // lost: see OnRead
    return;
  }
  writing_ = true;
}

bool BackendConn::Corked() const {
  // A small batch waits while the server still owes replies to what was last written and has
  // sent nothing since; the next bytes it sends release it (OnRead). Each write then carries
  // whatever every client queued in the meantime: one write (and one wake-up of the server)
  // per read instead of one per loop turn (50 clients: backend writes per GET 0.26 -> 0.14 at
  // P=1, 0.029 -> 0.0045 at P=16; with TLS, one record too). What waits here would have waited in
  // the server's queue behind those replies anyway; an idle connection, a large batch, a paused
  // stream (see StreamPart) or a dedicated connection write at once.
  return mode_ == Mode::kShared && !read_since_write_ && !read_paused_ && queued_.empty() &&
         out_.size() < kCorkBelow && !pending_.empty() && pending_.front().end <= flushed_total_;
}

void BackendConn::WriteCb(uv_write_t* req, int status) {
  auto* self = static_cast<BackendConn*>(req->data);
  self->writing_ = false;
  self->wbuf_.Clear();
  self->wbuf_.ShrinkIfEmpty(kKeepBuffer);
  if (status == UV_ECANCELED) return;  // the socket is closing; Fail() already answered
  if (status < 0) {
    self->Fail(std::string("write: ") + uv_strerror(status), false);  // lost: see OnRead
    return;
  }
  self->Flush();
}

void BackendConn::AllocCb(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* self = static_cast<BackendConn*>(h->data);
  Buffer& into = self->tls_ ? self->tls_in_ : self->in_;  // ciphertext first, with TLS
  char* p = into.PrepareWrite(kReadChunk);
  *buf = uv_buf_init(p, static_cast<unsigned>(into.writable()));
}

void BackendConn::ReadCb(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
  static_cast<BackendConn*>(s->data)->OnRead(nread);
}

void BackendConn::OnRead(ssize_t nread) {
  worker_->TouchClock();
  if (nread > 0 && tls_) {
    tls_in_.Commit(static_cast<size_t>(nread));
    TlsStream::Status st = tls_->Feed(tls_in_.data(), tls_in_.size(), &in_);
    tls_in_.Clear();
    if (st == TlsStream::Status::kError) {
      // A certificate or protocol problem on this node: not a passing network fault.
      Fail("TLS: " + tls_->error(), true);
      return;
    }
    if (tls_->has_output()) worker_->MarkDirty(this);
    if (st == TlsStream::Status::kClosed) nread = UV_EOF;
  }
  if (nread > 0) {
    last_read_ms_ = worker_->now();
    stall_replacement_ = false;
    if (stall_retired_) {
      // The script (or command) it was stuck behind has ended: the server is free again, for
      // every class's connections of this worker.
      stall_retired_ = false;
      worker_->ServerHeard(backend_);
    }
    if (!tls_) in_.Commit(static_cast<size_t>(nread));
    read_since_write_ = true;
    if (!out_.empty()) worker_->MarkDirty(this);  // a corked batch goes (see Corked)
    ProcessReplies();
    return;
  }
  if (nread == 0) return;
  // An established connection that is lost is not by itself evidence that the server is
  // down: its `timeout` setting, CLIENT KILL, a proxy restart on the path, a dedicated
  // connection's session ending. What was in flight fails (reads go elsewhere), the next
  // request connects again, and only a failed connect marks the node down (as the monitor,
  // probing every interval, also decides).
  // The server behind the address may be a new one when the next connection is made (a
  // replica restarted empty): it gets no reads until the monitor has looked at it.
  if (!backend_->is_primary()) backend_->Disqualify();
  Fail(nread == UV_EOF ? std::string("connection closed by server")
                       : std::string("read: ") + uv_strerror(static_cast<int>(nread)),
       false);
}

void BackendConn::ProcessReplies() {
  while (!in_.empty() && state_ == State::kReady) {
    size_t consumed = 0;
    ParseStatus st = framer_.Frame(in_.data(), in_.size(), &consumed);
    if (st == ParseStatus::kIncomplete) {
      if (mode_ == Mode::kShared && in_.size() >= kStreamAt) StreamPart();
      break;
    }
    if (st == ParseStatus::kError) {
      Fail("malformed reply: " + framer_.error(), true);
      return;
    }
    bool is_error = framer_.is_error();
    framer_.Reset();
    const char* p = in_.data();
    if (mode_ == Mode::kDedicated) {
      if (auth_replies_expected_ > 0) {
        --auth_replies_expected_;
        uint8_t kind = handshake_kinds_[handshake_next_++ % 3];
        if (is_error) {
          HandshakeRefused(kind, p, consumed);
          return;
        }
        if (auth_replies_expected_ == 0) HandshakeDone();
      } else {
        deadline_ms_ = 0;  // the server is making progress; the session re-arms if needed
        if (owner_ != nullptr) owner_->OnStreamFrame(p, consumed);
      }
    } else if (p[0] == '>') {
      // A RESP3 push on a shared connection (DEBUG PROTOCOL push, a module's): no request's
      // reply. Taken as one, it shifted every later reply onto the wrong request, other
      // clients' too. It goes to the client whose request is running (Redis sends it to the
      // connection that caused it, ahead of that command's reply); with none, it is dropped.
      if (!pending_.empty() && cancelled_ == 0 && !pending_.front().handshake &&
          pending_.front().client != nullptr) {
        pending_.front().client->OnPush(pending_.front().seq, p, consumed);
      }
    } else {
      if (pending_.empty()) {
        Fail("reply with no request outstanding", true);
        return;
      }
      PendingReply pr = pending_.front();
      pending_.pop_front();
      if (pr.handshake) {
        // AUTH / HELLO / SELECT of this connection: checked even when late (a refusal means
        // the connection is not what its class says, and must not carry requests).
        if (cancelled_ > 0) --cancelled_;
        if (is_error && (pr.seq != kHandshakePing || RefusesService(p, consumed))) {
          HandshakeRefused(pr.seq, p, consumed);
          return;
        }
        if (pending_.empty() || !pending_.front().handshake) HandshakeDone();
      } else if (cancelled_ > 0) {
        --cancelled_;  // the late reply of a request already answered by the timeout: dropped
      } else if (pr.client != nullptr) {
        pr.client->OnReply(pr.seq, backend_, p, consumed, is_error);
      }
    }
    // A callback may have failed or shut this connection (in_ is then already cleared).
    if (state_ != State::kReady) return;
    in_.Consume(consumed);
    if ((detached_ || retiring_) && pending_.empty()) {
      Shutdown("out of the pool, all answered", true);  // its work is done
      return;
    }
  }
  if (in_.empty()) in_.ShrinkIfEmpty(kKeepBuffer);
}

void BackendConn::StreamPart() {
  // A large reply is handed on as it arrives rather than held here whole: the client sees
  // its first bytes sooner, and the proxy holds at most what the client has not read yet
  // instead of the whole reply twice (here and in the client's buffer).
  size_t n = framer_.Settled(in_.size());
  if (n < kStreamAt / 2 || pending_.empty()) return;
  PendingReply& pr = pending_.front();
  ClientSession* client = cancelled_ == 0 ? pr.client : nullptr;
  if (client != nullptr) {
    // Progress: a reply that keeps arriving is not late, however long it takes in all.
    pr.deadline_ms = worker_->now() + worker_->timeout_ms();
    client->OnReplyPart(pr.seq, in_.data(), n);
  }  // else the reply of a request already answered (timed out): its bytes are dropped
  in_.Consume(n);
  framer_.Discard(n);
  if (client == nullptr || client->closed() || client->StreamBacklog() <= kStreamWindow ||
      state_ != State::kReady) {
    return;
  }
  // The client reads slower than the server sends. Holding the rest here would let one
  // client grow the proxy by a whole reply; stopping this connection would stall whoever
  // queues behind. So the connection leaves the pool (a new one takes its place: nobody
  // else's requests queue behind this reply any more) and, once no other client's requests
  // wait here, stops reading until the client reads. Those others only wait for the bytes
  // ahead of their replies: they are read on, into this client's buffer, unless all
  // clients together already hold half the total bound. Then the others wait for this
  // client to read, as they would behind it at Redis: read on, the replies of many clients
  // reading large values at once (50 GETs of 16 MB) passed the bound, and clients that were
  // reading were closed for it. A client that stops reading is closed by the timeout
  // (CheckTimeout) and the others' replies then come. Behind readers that keep up (a pause
  // under kSlowPauseMs: 0.5 MB taken at 0.5 MB/s or more) the others wait their turn; behind
  // slow ones, a second (or the timeout) in all at most. Then, if this client reads
  // (HeadReads; not known yet: the pause goes on until CheckTimeout has judged it) and each
  // of them can go elsewhere (small reads, all a client asked for since: see
  // ClientSession::MaySendAgain) or wait its turn (a large read, for a timeout in all at
  // most), the small ones go again on another connection (SendOthersAgain) and the pause
  // goes on: on a loaded machine 50 clients reading 16 MB values all paused for a second and
  // more, and reading on for the others passed the bound and closed clients that were
  // reading. Otherwise the connection reads on, and the total bound decides: sent again
  // behind clients that never read, their large reads were built by the server again and
  // again. (Small GETs behind a slow reader waited 26 s, behind three slow readers three
  // timeouts.)
  bool late = false;
  const bool others = OthersBehind(client, &late);
  if (!detached_) {
    // Taken out with others queued only while few are out (descriptors: they come from the
    // backends' reserve); it keeps its place, and reads on, otherwise.
    if (others && !retiring_ && !worker_->MayTakeOutOfPool()) return;
    if (!retiring_) worker_->DetachSharedConn(this);  // (a retiring one is out already)
    detached_ = true;
    FenceQueued(1);  // the streamed request itself has run: those behind it may not have
  }
  if (others && worker_->ClientBuffersCrowded() && late) {
    const Reads r = HeadReads();
    // Not known yet: paused, and judged a while after the client's kernel has settled
    // (CheckTimeout), unless a reader here was judged not to read already (the others waited
    // for that once).
    if (r == Reads::kNo || (r == Reads::kUnknown && judged_no_)) return;
    bool send = false;
    if (!MayHoldOthers(client, &send)) {
      // Some could neither go elsewhere nor wait: read on. Those behind have waited long, and
      // a later reply's client is not waited for to be judged either (three readers that
      // never read, judged one after the other, held small GETs two seconds).
      judged_no_ = true;
      return;
    }
    if (r == Reads::kYes && send) SendOthersAgain(client);
  } else if (others && !worker_->ClientBuffersCrowded()) {
    return;
  }
  uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
  read_paused_ = true;
  drain_waiter_ = client;
  reader_unsent_ = client->UnreceivedBytes();
  paused_at_ms_ = worker_->now();
  settle_at_ms_ = paused_at_ms_ + std::min<uint64_t>(kSettleMs, worker_->timeout_ms() / 2);
  judge_at_ms_ = 0;
  client->WaitForDrain(this);
}

void BackendConn::ReleaseCheapReads(uint64_t now_ms) {
  // Cheap tests first: this runs every tick on every shared connection.
  const uint64_t quiet = worker_->unanswered_ms();
  if (pending_.size() <= cancelled_ || backend_->is_primary() || now_ms - last_read_ms_ < quiet ||
      quiet >= worker_->timeout_ms()) {
    return;
  }
  // A replica whose health check goes unanswered, or a node no longer listed at all; and
  // reads sent to this node as the primary before a failover demoted it (see
  // ClientSession::CheapReadWaiting).
  const bool stalled = !backend_->answering() || backend_->role() == BackendRole::kNone;
  // They go to the primary: only while it takes them (else they wait here, for this replica).
  const Backend* primary = worker_->topology().group(backend_->group())->primary();
  if (primary == nullptr || !primary->serves_writes() || HasUnreadBytes()) return;
  char msg[128];
  std::snprintf(msg, sizeof msg,
                stalled ? "no reply for %.3gs, nor to the health check"
                        : "no reply for %.3gs from a primary replaced since",
                static_cast<double>(quiet) / 1000.0);
  // A reply partly here is arriving (or was cut off mid-way): its request stays.
  const size_t first = std::max<size_t>(cancelled_, in_.empty() ? 0 : 1);
  // Sent at least `quiet` ago: a deadline is the send plus a timeout, or later.
  const uint64_t sent_by = now_ms + worker_->timeout_ms() - quiet;
  uint64_t pass = 0;
  for (size_t i = first; i < pending_.size(); ++i) {
    PendingReply& pr = pending_[i];
    if (pr.client == nullptr || pr.handshake || pr.deadline_ms > sent_by ||
        !pr.client->CheapReadWaiting(pr.seq, stalled)) {
      continue;
    }
    if (pass == 0) pass = worker_->NextTimeoutPass();
    ClientSession* c = pr.client;
    pr.client = nullptr;  // its reply here, if it comes, is dropped (as a cancelled one's)
    c->OnBackendFailure(pr.seq, backend_, msg, true, pass, false, true);
    if (state_ != State::kReady) return;
  }
}

uint64_t BackendConn::HeldBehindSlow(const PendingReply& pr) const {
  const uint64_t now = worker_->now();
  uint64_t charged = slow_held_ms_ - pr.slow_snap + pr.held_before;
  if (read_paused_ && now - paused_at_ms_ >= kSlowPauseMs) charged += now - paused_at_ms_;
  return charged;
}

bool BackendConn::OthersBehind(const ClientSession* head, bool* late) const {
  bool others = false;
  *late = false;
  const uint64_t limit = std::min<uint64_t>(worker_->timeout_ms(), kMaxSlowHeldMs);
  for (size_t i = std::max<size_t>(1, cancelled_); i < pending_.size(); ++i) {
    const PendingReply& pr = pending_[i];
    if (pr.client == nullptr || pr.client == head || pr.client->closed()) continue;
    others = true;
    // Not only the oldest: one sent again from elsewhere brings what it waited there.
    if (HeldBehindSlow(pr) >= limit) {
      *late = true;
      break;
    }
  }
  return others;
}

BackendConn::Reads BackendConn::HeadReads() const {
  if (pending_.empty() || pending_.front().client == nullptr) return Reads::kUnknown;
  const PendingReply& head = pending_.front();
  if (head.client->id() == verdict_client_ && head.seq == verdict_seq_) return verdict_;
  return Reads::kUnknown;  // not judged yet for this reply
}

void BackendConn::SetHeadReads(Reads r) {
  if (pending_.empty() || pending_.front().client == nullptr) return;
  verdict_client_ = pending_.front().client->id();
  verdict_seq_ = pending_.front().seq;
  verdict_ = r;
}

std::vector<BackendConn::Queued> BackendConn::QueuedBehind(const ClientSession* head) const {
  std::vector<Queued> out;
  std::unordered_map<const ClientSession*, size_t> at;
  for (size_t i = std::max<size_t>(1, cancelled_); i < pending_.size(); ++i) {
    const PendingReply& pr = pending_[i];
    if (pr.client == nullptr || pr.client == head || pr.client->closed() || pr.handshake) {
      continue;
    }
    auto [it, fresh] = at.try_emplace(pr.client, out.size());
    if (fresh) out.push_back({pr.client, pr.seq, 0, 0, true});
    Queued& q = out[it->second];
    q.first_seq = std::min(q.first_seq, pr.seq);
    ++q.count;
    q.held_ms = std::max(q.held_ms, HeldBehindSlow(pr));
    q.may_wait = q.may_wait && pr.client->WaitsBehindSlowReader(pr.seq);
  }
  return out;
}

bool BackendConn::MayHoldOthers(const ClientSession* head, bool* send) const {
  // The server's side too: a backend no longer fit for this traffic takes nothing more.
  const bool fit = backend_->is_primary() ? backend_->serves_writes() : backend_->serves_reads();
  *send = false;
  for (const Queued& q : QueuedBehind(head)) {
    if (q.client->MaySendAgain(q.first_seq, q.count)) {
      if (!fit) return false;
      *send = true;
    } else if (!q.may_wait || q.held_ms >= worker_->timeout_ms()) {
      // A write, or a small read that may not go again: read on for it. A large read waits
      // its turn behind readers, but not longer than a timeout in all (a 512 KB GET waited
      // 36 s behind a reader taking 320 KB/s).
      return false;
    }
  }
  return true;
}

void BackendConn::SendOthersAgain(const ClientSession* head) {
  std::unordered_set<const ClientSession*> sent;
  for (const Queued& q : QueuedBehind(head)) {
    if (q.client->SendAgain(q.first_seq, q.count, this, q.held_ms)) sent.insert(q.client);
  }
  if (sent.empty()) return;
  // Their replies here, when they come, are dropped (as a cancelled one's is).
  for (size_t i = std::max<size_t>(1, cancelled_); i < pending_.size(); ++i) {
    PendingReply& pr = pending_[i];
    if (!pr.handshake && sent.count(pr.client) != 0) pr.client = nullptr;
  }
}

void BackendConn::FenceQueued(size_t skip) {
  // Only a primary's connections keep a client's requests in order (a client's reads spread
  // over a replica's connections anyway).
  if (!backend_->is_primary()) return;
  for (size_t i = std::max(skip, cancelled_); i < pending_.size(); ++i) {
    const PendingReply& pr = pending_[i];
    if (pr.client != nullptr && !pr.handshake) pr.client->HoldUntilAnswered(pr.seq);
  }
}

void BackendConn::ResumeStream(bool drained) {
  drain_waiter_ = nullptr;
  if (!read_paused_ || state_ != State::kReady) return;
  read_paused_ = false;
  // The client read its backlog down: it reads (see HeadReads).
  if (drained) SetHeadReads(Reads::kYes);
  const uint64_t paused = worker_->now() - paused_at_ms_;
  if (paused >= kSlowPauseMs) slow_held_ms_ += paused;
  uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), AllocCb, ReadCb);
  // Requests queued behind the paused reply (see StreamPart) waited for its reader, not for
  // the server: their time starts again (else they were failed over as late at once).
  const uint64_t until = worker_->now() + worker_->timeout_ms();
  for (size_t i = 0; i < pending_.size(); ++i) {
    pending_[i].deadline_ms = std::max(pending_[i].deadline_ms, until);
  }
}

void BackendConn::CheckTimeout(uint64_t now_ms) {
  if (state_ == State::kClosing || state_ == State::kIdle) return;
  if (detached_ && read_paused_) {
    // Waiting for the client of the streamed reply, first here (with only its requests
    // behind it, or others' too while clients hold much: see StreamPart),
    // whose deadline moves with each part passed on: a client that stopped reading it ends,
    // without blaming the server. (Reading on, a detached connection is judged as any
    // shared one: other clients' requests may wait behind.)
    if (pending_.empty()) return;
    ClientSession* c = pending_.front().client;
    const bool open = c != nullptr && !c->closed();
    if (open && settle_at_ms_ != 0 && now_ms >= settle_at_ms_) {
      reader_unsent_ = std::min(reader_unsent_, c->UnreceivedBytes());
      judge_unsent_ = reader_unsent_;
      judge_at_ms_ = now_ms + std::min<uint64_t>(kJudgeMs, worker_->timeout_ms() / 4);
      settle_at_ms_ = 0;
    }
    bool late = false;
    const bool others = OthersBehind(c, &late);
    if (others && late) {
      // Others have waited behind slow readers long enough (see StreamPart). Whether this
      // client reads is judged on what it took over kJudgeMs after its kernel settled.
      bool send = false;
      bool read_on = !open || !worker_->ClientBuffersCrowded() || !MayHoldOthers(c, &send);
      if (!read_on && HeadReads() == Reads::kUnknown) {
        if (judged_no_) {
          read_on = true;
        } else {
          // Judged on what it took over kJudgeMs after its kernel settled. (Both come before
          // the head's deadline: a timeout after the pause, settle_at_ms_ half that at most.)
          if (settle_at_ms_ != 0 || now_ms < judge_at_ms_) return;
          const bool reads = c->UnreceivedBytes() + kReadProgressBytes <= judge_unsent_;
          SetHeadReads(reads ? Reads::kYes : Reads::kNo);
          judged_no_ = judged_no_ || !reads;
        }
      }
      if (read_on || HeadReads() == Reads::kNo) {
        if (open) c->ForgetDrainWait(this);
        ResumeStream(false);
        return;
      }
      // Small reads go elsewhere; large ones wait for this reader, as the pause goes on (and
      // as long as it reads: judged below).
      if (send) SendOthersAgain(c);
    }
    if (pending_.front().deadline_ms <= now_ms) {
      // Reading slowly is not "not reading": what the client took since the last look moves
      // the deadline, as a part passed on does. (A client reading 0.5 MB/s was closed: its
      // backlog took longer than the timeout to drain to where the stream resumes.) A few
      // KB less is no evidence (see settle_at_ms_).
      const size_t unsent = open ? c->UnreceivedBytes() : 0;
      if (open && unsent + kReadProgressBytes <= reader_unsent_) {
        reader_unsent_ = unsent;
        pending_.front().deadline_ms = now_ms + worker_->timeout_ms();
        return;
      }
      if (open && others) {
        // Others' requests wait behind it (paused while clients hold much, see StreamPart):
        // the client ends, and the rest of its reply is read and dropped on the way to
        // theirs (Close resumes this connection).
        c->DropForUnreadReply();
        return;
      }
      // That client is closed: half a reply cannot be followed by anything else.
      if (c != nullptr && !c->closed()) {
        worker_->stats().client_drops[static_cast<size_t>(DropReason::kUnreadReply)]++;
      }
      Fail("the client did not read its reply within the timeout", false);
    }
    return;
  }
  if (mode_ == Mode::kShared && state_ == State::kReady && !side_ && !detached_ && !retiring_ &&
      worker_->topology().cluster() && readonly_ == backend_->is_primary() &&
      worker_->RetireSharedConn(this)) {
    // Made to a primary a failover has demoted since (its reads would all be redirected), or
    // with READONLY to a node that is the primary now (made before the slot map named it, or
    // promoted since: demoted again, it would answer reads from unsynced data; see Connect).
    // It leaves the pool for a new connection, answers what it carries, then closes (at once
    // when it carries nothing: no reply would come to close it).
    if (pending_.empty()) Shutdown("its node changed role", true);
    return;
  }
  char msg[96];
  std::snprintf(msg, sizeof msg, "no reply within %.3gs", worker_->timeout_ms() / 1000.0);
  if (mode_ == Mode::kDedicated) {
    uint64_t seen = 0;
    bool moved = WriteProgress(&seen);
    if (deadline_ms_ == 0) return;
    // Judged every tick, as on shared connections: the oldest request still crossing to the
    // server (part of it was not taken at the last look, and the socket took more since), or
    // its reply still arriving, is not late (a 200 MB value in a MULTI on a 100 MB/s link
    // takes 2 s each way). Bytes of later requests moving on do not count for it.
    const uint64_t t = worker_->timeout_ms();
    if (moved && seen < deadline_end_) deadline_ms_ = std::max(deadline_ms_, now_ms + t);
    if (!in_.empty()) deadline_ms_ = std::max(deadline_ms_, last_read_ms_ + t);
    if (deadline_ms_ > now_ms) return;
    // A pinned session's stream cannot skip a reply: the session ends. One slow session is
    // no evidence against the primary, so it is not marked down (the health checker judges).
    Fail(msg, false);
    return;
  }
  if (awaiting_handshake_ && !pending_.empty() && pending_.front().deadline_ms <= now_ms) {
    // The handshake went unanswered for a whole timeout, and what waits behind it was never
    // sent: on a primary answered as such at once (a read on a replica goes to the primary),
    // rather than as late and then sent once the handshake is answered after all.
    std::string reason = std::string(msg) + " to the connection's handshake";
    refused_ = "-ERR kompress: " + std::string(backend_->is_primary() ? "primary " : "replica ") +
               backend_->name() + " did not answer; the command was not sent (" + reason + ")\r\n";
    refused_reason_ = reason;
    refused_until_ms_ = 0;
    answer_refused_ = true;
    Fail(reason, false);
    return;
  }
  if (state_ == State::kReady) {
    ReleaseCheapReads(now_ms);
    if (state_ != State::kReady) return;
  }
  ExtendWhileSending(now_ms);
  if (cancelled_ == 0 && !in_.empty() && !pending_.empty()) {
    // The oldest request's reply is arriving (part of it is here): late only once nothing
    // more of it came for a whole timeout. (Large replies move it on as they are passed on,
    // see StreamPart; this covers the smaller ones on a slow path.)
    uint64_t& d = pending_.front().deadline_ms;
    d = std::max(d, last_read_ms_ + worker_->timeout_ms());
  }
  // Shared connection: each late request is answered on its own (a read fails over, a write
  // gets an error) and its reply, when it comes, is dropped. The connection stays, so a
  // slow command does not take the requests queued behind it down with it.
  // One pass: a client's requests timing out together cost its retry budget once.
  uint64_t pass = worker_->NextTimeoutPass();
  size_t i = cancelled_;
  bool any = false;
  // Stalled means silent: a replica still sending replies for a whole timeout is only busy
  // with what clients queued ahead (a client pipelining large GETs it does not read), and is
  // not blamed for it; the late requests below fail over all the same (within the retry
  // budget). Bytes waiting in the socket count too: this loop may itself have been busy
  // (copying a large reply for a client that does not read) and not read them yet. Asked
  // once, and only when something is late (no FIONREAD on every connection every check).
  int silent_known = -1;
  auto silent = [&] {
    if (silent_known < 0) {
      silent_known = now_ms - last_read_ms_ >= worker_->timeout_ms() && !HasUnreadBytes();
    }
    return silent_known == 1;
  };
  while (i < pending_.size() && pending_[i].deadline_ms <= now_ms) {
    PendingReply& pr = pending_[i];
    ++cancelled_;
    ++i;
    any = true;
    if (pr.client != nullptr) {
      ClientSession* c = pr.client;
      pr.client = nullptr;
      c->OnBackendFailure(pr.seq, backend_, msg, true, pass, false, silent());
    }
    // A callback may have failed this connection (pending_ is then empty).
    if (state_ != State::kReady && state_ != State::kConnecting) return;
  }
  // Replies nobody waits for any more still cost the server their work, and hold up every
  // request queued behind them (Redis answers a connection in order). A client pipelining
  // large GETs faster than they can be sent has its late ones answered by the timeout and,
  // its budget freed, sends more: left alone, the server's queue on this connection grows
  // without bound (a replica building hundreds of 512 KB replies in one go stops sending
  // for as long, and is then blamed for it). Past kMaxLateReplies the connection starts
  // over: closing it makes the server drop what it still owes, and what waits on it is
  // answered as late requests are (reads fail over within the retry budget).
  if (cancelled_ >= kMaxLateReplies && !pending_.empty()) {
    Log().info(
        "{} {}: {} replies owed to requests already answered by the timeout; "
        "connection restarted",
        backend_->is_primary() ? "primary" : "replica", backend_->name(), cancelled_);
    Fail(std::string(msg) + "; connection restarted with too many late replies owed", false);
    return;
  }
  // Nothing late: nothing to judge.
  if (!any && (cancelled_ == 0 || pending_.empty())) return;
  if (any && silent() && !backend_->is_primary()) {
    // Replicas are plentiful and the primary can answer: stop sending reads to a stalled one.
    backend_->MarkDown(msg);
  }
  // A server that stays silent far past the timeout is stuck (or the path to it is): start
  // over on a new connection.
  if (cancelled_ > 0 && !pending_.empty() && silent() &&
      pending_.front().deadline_ms + 3 * worker_->timeout_ms() <= now_ms) {
    fail_stalled_ = true;
    Fail(std::string(msg) + "; connection abandoned", !backend_->is_primary());
  }
}

uint64_t BackendConn::Unwritten() const {
  uint64_t n = out_.size() + hs_out_.size();
  for (const Buffer& b : queued_) n += b.size();
  if (tls_) n += tls_->pending_bytes();
  if (writing_) n += uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&tcp_));
  // And what the kernel holds in the socket's send queue, not yet acknowledged by the peer:
  // several MB on a fast local link, which a slow path drains for seconds.
  uv_os_fd_t fd;
  int queued = 0;
  if (state_ == State::kReady && uv_fileno(reinterpret_cast<const uv_handle_t*>(&tcp_), &fd) == 0 &&
      ioctl(fd, SIOCOUTQ, &queued) == 0 && queued > 0) {
    n += static_cast<uint64_t>(queued);
  }
  return n;
}

bool BackendConn::WriteProgress(uint64_t* seen) {
  *seen = written_seen_;
  // Nothing waits, nor did at the last look: no system call for an idle or keeping-up socket.
  // (A request's bytes are either still queued here at the tick after it was, or already sent.)
  if (!backed_up_ && written_seen_ == queued_total_ && out_.empty() && queued_.empty() &&
      hs_out_.empty() && !writing_) {
    return false;
  }
  // With TLS the queues past the stream hold ciphertext, a little more than the plaintext
  // counted in queued_total_: "written" is then a slight underestimate.
  uint64_t unwritten = state_ == State::kReady ? Unwritten() : queued_total_;
  uint64_t written = unwritten < queued_total_ ? queued_total_ - unwritten : 0;
  bool was_backed_up = backed_up_;
  if (written > written_seen_) write_moved_ms_ = worker_->now();
  written_seen_ = written;
  backed_up_ = unwritten > 0;
  return was_backed_up && written > *seen;
}

void BackendConn::ExtendWhileSending(uint64_t now_ms) {
  // A request's deadline counts from when it was queued here, which for a large value on a
  // slow link is long before the server has it all: a 200 MB SET on a 100 MB/s link needs
  // 2 s just to be sent, and timed out with timeout 1 s although the server was reading it
  // all along. So while the socket keeps taking bytes, a request not yet wholly sent at the
  // last tick gets the timeout again from now: it counts, to within a tick, from its last
  // byte. A socket that takes nothing for a whole timeout (the server stopped reading)
  // extends nothing, and its requests time out as before.
  uint64_t seen = 0;
  if (!WriteProgress(&seen)) return;
  const uint64_t until = now_ms + worker_->timeout_ms();
  // Requests not wholly sent at the last look are the newest ones, and their deadlines only
  // grow towards the back, so the oldest-first order the late check relies on holds.
  for (size_t i = pending_.size(); i > cancelled_; --i) {
    PendingReply& pr = pending_[i - 1];
    if (pr.end <= seen) break;
    if (pr.deadline_ms < until) pr.deadline_ms = until;
  }
}

bool BackendConn::StalledFor(uint64_t now_ms, uint64_t ms) const {
  if (mode_ != Mode::kShared || state_ != State::kReady || detached_ || retiring_ ||
      pending_.empty() || !backend_->is_primary() || awaiting_handshake_) {
    return false;
  }
  // A connection that replaced a stuck one and has heard nothing from the server since is no
  // evidence that yet another would fare better (a paused or stopped server: a new one every
  // second, for nothing).
  if (stall_replacement_) return false;
  // When the oldest request was queued (or last moved on while being sent).
  uint64_t timeout = worker_->timeout_ms();
  const PendingReply& oldest = pending_.front();
  uint64_t since = oldest.deadline_ms > timeout ? oldest.deadline_ms - timeout : 0;
  since = std::max(since, last_read_ms_);
  if (now_ms < since + ms) return false;
  if (backed_up_ && now_ms < write_moved_ms_ + ms) return false;  // still sending a value
  return !HasUnreadBytes();
}

bool BackendConn::HasUnreadBytes() const {
  return state_ == State::kReady && SocketHasUnreadBytes(tcp_);
}

void BackendConn::Fail(const std::string& reason, bool mark_down) {
  const bool stalled = std::exchange(fail_stalled_, false);
  // Nothing reached a server that was never connected to, nor one still in the handshake
  // (no request goes out before the server has accepted all of it): what waits here was not
  // applied, so a write waits for a primary and is sent again, and a read goes after it.
  bool unsent = state_ != State::kReady || awaiting_handshake_;
  fail_soon_ = false;
  if (detached_ || retiring_)
    destroy_on_close_ = true;  // out of the pool: nobody would use it again
  if (drain_waiter_ != nullptr) {
    drain_waiter_->ForgetDrainWait(this);
    drain_waiter_ = nullptr;
  }
  read_paused_ = false;
  settle_at_ms_ = 0;
  if (state_ == State::kResolving && resolve_ != nullptr) {
    resolve_->conn = nullptr;
    resolve_ = nullptr;
    state_ = State::kIdle;
  } else if (state_ == State::kConnecting || state_ == State::kReady) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
    state_ = State::kClosing;
    uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), CloseCb);
  }
  out_.Clear();
  queued_.clear();
  hs_out_.Clear();
  awaiting_handshake_ = false;
  tail_appendable_ = false;
  last_read_ms_ = 0;  // a new connection has heard nothing yet
  in_.Clear();
  tls_.reset();
  tls_in_.Clear();
  framer_.Reset();
  auth_replies_expected_ = 0;
  deadline_ms_ = 0;
  deadline_end_ = 0;
  cancelled_ = 0;
  queued_total_ = 0;
  flushed_total_ = 0;
  read_since_write_ = true;
  written_seen_ = 0;
  backed_up_ = false;
  if (mark_down) {
    Log().debug("{} {}: {}", backend_->is_primary() ? "primary" : "replica", backend_->name(),
                reason);
    backend_->MarkDown(reason);
  }
  if (mode_ == Mode::kDedicated) {
    ClientSession* owner = owner_;
    owner_ = nullptr;
    destroy_on_close_ = true;
    if (owner != nullptr) {
      owner->OnStreamFailure(reason);
    } else {
      worker_->ForgetDedicatedConn(this);
    }
    if (state_ == State::kIdle) Destroy();
    return;
  }
  // Answer every request that was waiting here. Take the queue first: an answer may send the
  // request elsewhere, or even back to this connection, which then reconnects.
  Ring<PendingReply> failed;
  failed.swap(pending_);
  bool timeout = reason.rfind("no reply", 0) == 0;
  // Refused before any of it was sent: a primary's refusal is the answer (see
  // HandshakeRefused); copied, as a callback may refuse again meanwhile.
  std::string answer = answer_refused_ && backend_->is_primary() ? refused_ : std::string();
  if (answer_refused_) unsent = true;
  answer_refused_ = false;
  while (!failed.empty()) {
    PendingReply pr = failed.front();
    failed.pop_front();
    if (pr.client == nullptr) continue;
    if (!answer.empty()) {
      pr.client->OnReply(pr.seq, backend_, answer.data(), answer.size(), true);
    } else {
      pr.client->OnBackendFailure(pr.seq, backend_, reason, timeout, 0, unsent, timeout && stalled);
    }
  }
  if (destroy_on_close_ && state_ == State::kIdle) Destroy();
}

void BackendConn::FailSoon(std::string reason, bool mark_down) {
  // From inside Send()/SendRaw() a failure must not call back into the session that is
  // still in the middle of handing over its request: it is reported on the next flush.
  fail_soon_ = true;
  fail_soon_reason_ = std::move(reason);
  fail_soon_mark_down_ = mark_down;
  worker_->MarkDirty(this);
}

void BackendConn::CloseCb(uv_handle_t* h) {
  static_cast<BackendConn*>(h->data)->OnClosed();
}

void BackendConn::OnClosed() {
  state_ = State::kIdle;
  if (destroy_on_close_) {
    Destroy();
    return;
  }
  // Requests queued while the old socket was closing go out on a new one.
  if (!pending_.empty()) ConnectUnlessRefusing();
}

void BackendConn::ConnectUnlessRefusing() {
  if (refused_.empty() || worker_->now() >= refused_until_ms_) {
    refused_.clear();
    StartConnect();
    return;
  }
  // The server refused this class's handshake a moment ago (see HandshakeRefused): what waits
  // gets that answer without a new connection each (reported a loop turn later: we may be
  // inside Send()).
  answer_refused_ = true;
  FailSoon(refused_reason_, false);
}

void BackendConn::Shutdown(const std::string& reason, bool destroy) {
  if (dead_) return;
  owner_ = nullptr;
  if (destroy) destroy_on_close_ = true;
  State before = state_;
  if (before == State::kClosing) return;  // CloseCb will finish the job
  Fail(reason, false);
  if (destroy && state_ == State::kIdle) Destroy();
}

void BackendConn::Destroy() {
  if (dead_) return;
  dead_ = true;
  if (mode_ == Mode::kDedicated) worker_->ForgetDedicatedConn(this);
  if (detached_ || retiring_) worker_->ForgetDetachedConn(this);
  worker_->Bury(this);
}

}  // namespace kp
