// ControlConn: resolve, connect (TLS when configured), AUTH, framing replies with hiredis's
// reader, and failure detection for control-plane connections.
#include "proxy/control_conn.h"

#include <hiredis/hiredis.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>

#include "proxy/descriptors.h"
#include "proxy/unread_bytes.h"

namespace kp {

struct ControlConn::Resolve {
  uv_getaddrinfo_t req;
  ControlConn* conn;
};

// One TCP connection. It outlives a Drop() until libuv has closed its handle: `owner` is
// cleared then, so late callbacks only clean up.
struct ControlConn::Link {
  ControlConn* owner = nullptr;
  uv_tcp_t tcp;
  uv_connect_t connect_req;
  uv_write_t write_req;
  bool writing = false;
  Buffer out;     // plaintext queued
  Buffer wbuf;    // bytes being written
  Buffer in;      // plaintext read
  Buffer tls_in;  // ciphertext read
  std::unique_ptr<TlsStream> tls;
  redisReader* reader = nullptr;
};

bool ControlConn::HasUnreadBytes() const {
  return link_ != nullptr && SocketHasUnreadBytes(link_->tcp);
}

ControlConn::ControlConn(uv_loop_t* loop, Endpoint endpoint, std::string username,
                         std::string password, LostFn on_lost)
    : loop_(loop),
      endpoint_(std::move(endpoint)),
      username_(std::move(username)),
      password_(std::move(password)),
      on_lost_(std::move(on_lost)) {}

ControlConn::~ControlConn() {
  Close();
}

void ControlConn::Connect() {
  if (open()) return;
  StartResolve();
}

void ControlConn::StartResolve() {
  std::string host = endpoint_.host;
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  sockaddr_in a4;
  sockaddr_in6 a6;
  if (uv_ip4_addr(host.c_str(), endpoint_.port, &a4) == 0 ||
      uv_ip6_addr(host.c_str(), endpoint_.port, &a6) == 0) {
    ConnectTo(host);
    return;
  }
  // getaddrinfo would block the loop: resolve on libuv's thread pool.
  resolving_ = true;
  resolve_ = new Resolve{{}, this};
  resolve_->req.data = resolve_;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(
      loop_, &resolve_->req,
      [](uv_getaddrinfo_t* req, int status, addrinfo* res) {
        auto* r = static_cast<Resolve*>(req->data);
        ControlConn* self = r->conn;
        delete r;
        std::string ip;
        if (status == 0 && res != nullptr) {
          // Prefer IPv4, as the data plane does.
          const addrinfo* pick = res;
          for (const addrinfo* ai = res; ai; ai = ai->ai_next) {
            if (ai->ai_family == AF_INET) {
              pick = ai;
              break;
            }
          }
          char buf[INET6_ADDRSTRLEN] = {0};
          if (pick->ai_family == AF_INET) {
            uv_ip4_name(reinterpret_cast<const sockaddr_in*>(pick->ai_addr), buf, sizeof buf);
          } else {
            uv_ip6_name(reinterpret_cast<const sockaddr_in6*>(pick->ai_addr), buf, sizeof buf);
          }
          ip = buf;
        }
        uv_freeaddrinfo(res);
        if (self == nullptr) return;  // closed meanwhile
        self->resolve_ = nullptr;
        self->resolving_ = false;
        self->lost_established_ = false;
        if (ip.empty()) {
          self->on_lost_(std::string("cannot resolve host: ") + uv_strerror(status));
          return;
        }
        self->ConnectTo(ip);
      },
      host.c_str(), nullptr, &hints);
  if (rc != 0) {
    delete resolve_;
    resolve_ = nullptr;
    resolving_ = false;
    lost_established_ = false;
    on_lost_(std::string("cannot resolve host: ") + uv_strerror(rc));
  }
}

void ControlConn::ConnectTo(const std::string& ip) {
  lost_established_ = false;
  lost_to_shortage_ = false;
  sockaddr_storage addr{};
  if (uv_ip4_addr(ip.c_str(), endpoint_.port, reinterpret_cast<sockaddr_in*>(&addr)) != 0 &&
      uv_ip6_addr(ip.c_str(), endpoint_.port, reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
    on_lost_("connect: bad address " + ip);
    return;
  }
  auto* l = new Link;
  l->owner = this;
  l->reader = redisReaderCreate();
  l->tcp.data = l;
  l->connect_req.data = l;
  l->write_req.data = l;
  uv_tcp_init(loop_, &l->tcp);
  link_ = l;
  connected_ = false;
  connect_started_ms_ = uv_now(loop_);
  if (!password_.empty()) {
    // Queued first, so it is the first thing the server reads.
    if (username_.empty()) {
      Queue(Pending{nullptr, nullptr, Pending::kAuth}, "AUTH %b", password_.data(),
            password_.size());
    } else {
      Queue(Pending{nullptr, nullptr, Pending::kAuth}, "AUTH %b %b", username_.data(),
            username_.size(), password_.data(), password_.size());
    }
  }
  int rc =
      uv_tcp_connect(&l->connect_req, &l->tcp, reinterpret_cast<const sockaddr*>(&addr), OnConnect);
  if (rc != 0) {
    lost_to_shortage_ = IsDescriptorShortage(rc);
    Drop(std::string("connect: ") + uv_strerror(rc), true);
  }
}

void ControlConn::OnConnect(uv_connect_t* req, int status) {
  auto* l = static_cast<Link*>(req->data);
  ControlConn* self = l->owner;
  if (self == nullptr) return;  // dropped meanwhile (its handle is closing)
  if (status != 0) {
    self->Drop(std::string("connect: ") + uv_strerror(status), true);
    return;
  }
  self->connected_ = true;
  uv_tcp_nodelay(&l->tcp, 1);
  if (self->tls_ != nullptr) {
    l->tls = std::make_unique<TlsStream>(
        self->tls_, self->tls_name_.empty() ? self->endpoint_.host : self->tls_name_);
    if (l->tls->Start() != TlsStream::Status::kOk) {
      self->Fail("TLS: " + l->tls->error());
      return;
    }
  }
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(&l->tcp),
      [](uv_handle_t* h, size_t, uv_buf_t* buf) {
        auto* link = static_cast<Link*>(h->data);
        Buffer& into = link->tls ? link->tls_in : link->in;
        char* p = into.PrepareWrite(16 * 1024);
        *buf = uv_buf_init(p, static_cast<unsigned>(into.writable()));
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t*) {
        auto* link = static_cast<Link*>(s->data);
        if (link->owner != nullptr) link->owner->OnRead(n);
      });
  self->Flush();
}

void ControlConn::OnRead(ssize_t n) {
  Link* l = link_;
  if (n > 0 && l->tls) {
    l->tls_in.Commit(static_cast<size_t>(n));
    TlsStream::Status st = l->tls->Feed(l->tls_in.data(), l->tls_in.size(), &l->in);
    l->tls_in.Clear();
    if (st == TlsStream::Status::kError) return Fail("TLS: " + l->tls->error());
    if (l->tls->has_output()) {
      Flush();
      if (link_ != l) return;  // the write failed and dropped the connection
    }
    if (st == TlsStream::Status::kClosed) n = UV_EOF;
  } else if (n > 0) {
    l->in.Commit(static_cast<size_t>(n));
  }
  if (n < 0) {
    return Fail(n == UV_EOF ? std::string("connection closed")
                            : std::string("connection lost: ") + uv_strerror(static_cast<int>(n)));
  }
  if (l->in.empty()) return;
  if (redisReaderFeed(l->reader, l->in.data(), l->in.size()) != REDIS_OK) {
    return Fail(std::string("protocol error: ") + l->reader->errstr);
  }
  l->in.Clear();
  for (;;) {
    void* reply = nullptr;
    if (redisReaderGetReply(l->reader, &reply) != REDIS_OK) {
      return Fail(std::string("protocol error: ") + l->reader->errstr);
    }
    if (reply == nullptr) return;
    Dispatch(static_cast<redisReply*>(reply));
    freeReplyObject(reply);
    if (link_ != l) return;  // a callback dropped the connection
  }
}

void ControlConn::Dispatch(redisReply* r) {
  if (subscribed_) {
    if (sub_.fn != nullptr) sub_.fn(this, r, sub_.privdata);
    return;
  }
  if (pending_.empty()) return Fail("reply with no command outstanding");
  Pending p = pending_.front();
  pending_.pop_front();
  if (p.kind == Pending::kAuth) {
    if (r->type == REDIS_REPLY_ERROR) Fail(std::string("AUTH rejected: ") + r->str);
    return;
  }
  if (p.kind == Pending::kSubscribe) {
    // From here every frame is the subscription's (confirmations, then messages).
    subscribed_ = true;
    sub_ = p;
  }
  if (p.fn != nullptr) p.fn(this, r, p.privdata);
}

void ControlConn::Flush() {
  Link* l = link_;
  if (l == nullptr || !connected_ || l->writing) return;
  if (l->tls) {
    if (!l->out.empty()) {
      if (l->tls->Write(l->out.data(), l->out.size()) != TlsStream::Status::kOk) {
        return Fail("TLS: " + l->tls->error());
      }
      l->out.Clear();
    }
    l->tls->TakeOutput(&l->wbuf);
  } else {
    std::swap(l->out, l->wbuf);
  }
  if (l->wbuf.empty()) return;
  uv_buf_t b = uv_buf_init(l->wbuf.data(), static_cast<unsigned>(l->wbuf.size()));
  int rc = uv_write(&l->write_req, reinterpret_cast<uv_stream_t*>(&l->tcp), &b, 1,
                    [](uv_write_t* req, int status) {
                      auto* link = static_cast<Link*>(req->data);
                      link->writing = false;
                      link->wbuf.Clear();
                      ControlConn* owner = link->owner;
                      if (owner == nullptr || status == UV_ECANCELED) return;
                      if (status < 0) {
                        return owner->Fail(std::string("connection lost: ") + uv_strerror(status));
                      }
                      owner->Flush();
                    });
  if (rc != 0) {
    l->wbuf.Clear();
    return Fail(std::string("connection lost: ") + uv_strerror(rc));
  }
  l->writing = true;
}

bool ControlConn::established() const {
  return link_ != nullptr && connected_ && (!link_->tls || link_->tls->handshake_done());
}

void ControlConn::Check(uint64_t now_ms, uint64_t connect_timeout_ms) {
  // A connection (and its TLS handshake) not done in time is given up on.
  if (link_ != nullptr && !established() && now_ms - connect_started_ms_ >= connect_timeout_ms) {
    Fail("connect: no answer");
  }
}

void ControlConn::Fail(const std::string& why) {
  Drop(why, true);
}

void ControlConn::Close() {
  if (resolve_ != nullptr) {
    resolve_->conn = nullptr;
    resolve_ = nullptr;
    resolving_ = false;
  }
  Drop("", false);
}

void ControlConn::Drop(const std::string& why, bool report) {
  lost_established_ = connected_;
  Link* l = link_;
  link_ = nullptr;
  connected_ = false;
  subscribed_ = false;
  sub_ = Pending{};
  pending_.clear();  // their callbacks are not called: the owner hears of it through on_lost
  if (l != nullptr) {
    l->owner = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(&l->tcp), [](uv_handle_t* h) {
      auto* link = static_cast<Link*>(h->data);
      redisReaderFree(link->reader);
      delete link;
    });
  }
  if (report && on_lost_) on_lost_(why);
}

bool ControlConn::Queue(Pending p, const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  bool ok = QueueV(p, format, ap);
  va_end(ap);
  return ok;
}

bool ControlConn::QueueV(Pending p, const char* format, va_list ap) {
  if (link_ == nullptr) return false;
  char* cmd = nullptr;
  int len = redisvFormatCommand(&cmd, format, ap);
  if (len < 0 || cmd == nullptr) return false;
  link_->out.Append(cmd, static_cast<size_t>(len));
  redisFreeCommand(cmd);
  pending_.push_back(p);
  Flush();
  return true;
}

bool ControlConn::Command(ReplyFn fn, void* privdata, const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  bool ok = QueueV(Pending{fn, privdata, Pending::kCommand}, format, ap);
  va_end(ap);
  return ok;
}

bool ControlConn::Subscribe(ReplyFn fn, void* privdata, const char* format, ...) {
  va_list ap;
  va_start(ap, format);
  bool ok = QueueV(Pending{fn, privdata, Pending::kSubscribe}, format, ap);
  va_end(ap);
  return ok;
}

}  // namespace kp
