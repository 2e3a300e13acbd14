// ControlConn: resolve, connect, AUTH and failure detection for control-plane connections.
#include "proxy/control_conn.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>

#include "proxy/descriptors.h"

namespace kp {

struct ControlConn::Resolve {
  uv_getaddrinfo_t req;
  ControlConn* conn;
};

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
  // hiredis would block the loop in getaddrinfo: resolve on libuv's thread pool.
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
  int saved_errno = errno;
  errno = 0;
  redisAsyncContext* c = redisAsyncConnect(ip.c_str(), endpoint_.port);
  int err = errno;
  errno = saved_errno;
  lost_established_ = false;
  lost_to_shortage_ = false;
  if (c == nullptr) {
    lost_to_shortage_ = true;
    on_lost_("connect: out of memory");
    return;
  }
  if (c->err) {
    // hiredis keeps the errno text; the socket() failure is what matters here.
    lost_to_shortage_ = IsDescriptorShortage(err) ||
                        std::strstr(c->errstr, std::strerror(EMFILE)) != nullptr ||
                        std::strstr(c->errstr, std::strerror(ENFILE)) != nullptr;
    std::string why = std::string("connect: ") + c->errstr;
    redisAsyncFree(c);
    on_lost_(why);
    return;
  }
  c->data = this;
  if (redisLibuvAttach(c, loop_) != REDIS_OK) {
    redisAsyncFree(c);
    on_lost_("connect: cannot attach to the event loop");
    return;
  }
  redisAsyncSetConnectCallback(c, OnConnect);
  redisAsyncSetDisconnectCallback(c, OnDisconnect);
  ctx_ = c;
  connected_ = false;
  connect_started_ms_ = uv_now(loop_);
  if (!password_.empty()) {
    // Queued first, so it is the first thing the server reads.
    if (username_.empty()) {
      redisAsyncCommand(c, OnAuth, this, "AUTH %b", password_.data(), password_.size());
    } else {
      redisAsyncCommand(c, OnAuth, this, "AUTH %b %b", username_.data(), username_.size(),
                        password_.data(), password_.size());
    }
  }
}

void ControlConn::Check(uint64_t now_ms, uint64_t connect_timeout_ms) {
  if (ctx_ == nullptr) return;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(ctx_->c.fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) {
    Fail(std::string(connected_ ? "connection lost: " : "connect: ") + std::strerror(err));
    return;
  }
  if (!connected_ && now_ms - connect_started_ms_ >= connect_timeout_ms) {
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
  redisAsyncContext* c = ctx_;
  ctx_ = nullptr;
  connected_ = false;
  // Callbacks fired by the free see no reply (or a context that is not ours) and stay quiet.
  if (c != nullptr) redisAsyncFree(c);
  if (report && on_lost_) on_lost_(why);
}

bool ControlConn::Command(ReplyFn fn, void* privdata, const char* format, ...) {
  if (ctx_ == nullptr) return false;
  // Freed when hiredis calls back, with a reply or with none (the connection went away).
  auto* p = new Pending{this, fn, privdata};
  va_list ap;
  va_start(ap, format);
  int rc = redisvAsyncCommand(ctx_, OnReply, p, format, ap);
  va_end(ap);
  if (rc != REDIS_OK) {
    delete p;
    return false;
  }
  return true;
}

bool ControlConn::Subscribe(ReplyFn fn, void* privdata, const char* format, ...) {
  if (ctx_ == nullptr) return false;
  // hiredis keeps a subscription's callback for every message (and calls it once per channel
  // with no reply when the connection goes): one Pending per connection, owned by it.
  sub_ = Pending{this, fn, privdata};
  va_list ap;
  va_start(ap, format);
  int rc = redisvAsyncCommand(ctx_, OnSubscription, &sub_, format, ap);
  va_end(ap);
  return rc == REDIS_OK;
}

void ControlConn::OnConnect(const redisAsyncContext* c, int status) {
  auto* self = static_cast<ControlConn*>(c->data);
  if (self == nullptr || self->ctx_ != c) return;
  if (status == REDIS_OK) {
    self->connected_ = true;
    return;
  }
  // hiredis frees the context after this callback.
  self->ctx_ = nullptr;
  self->connected_ = false;
  self->lost_established_ = false;
  self->on_lost_(std::string("connect: ") + c->errstr);
}

void ControlConn::OnDisconnect(const redisAsyncContext* c, int status) {
  auto* self = static_cast<ControlConn*>(c->data);
  if (self == nullptr || self->ctx_ != c) return;
  self->lost_established_ = self->connected_;
  self->ctx_ = nullptr;
  self->connected_ = false;
  self->on_lost_(status == REDIS_OK ? std::string("connection closed")
                                    : std::string("connection lost: ") + c->errstr);
}

void ControlConn::OnReply(redisAsyncContext* c, void* reply, void* privdata) {
  auto* p = static_cast<Pending*>(privdata);
  ControlConn* self = p->conn;
  ReplyFn fn = p->fn;
  void* priv = p->privdata;
  delete p;
  if (reply == nullptr || self->ctx_ != c) return;
  fn(self, static_cast<redisReply*>(reply), priv);
}

void ControlConn::OnSubscription(redisAsyncContext* c, void* reply, void* privdata) {
  auto* p = static_cast<Pending*>(privdata);
  if (reply == nullptr || p->conn->ctx_ != c) return;
  p->fn(p->conn, static_cast<redisReply*>(reply), p->privdata);
}

void ControlConn::OnAuth(redisAsyncContext* c, void* reply, void* privdata) {
  auto* self = static_cast<ControlConn*>(privdata);
  auto* r = static_cast<redisReply*>(reply);
  if (r == nullptr || self->ctx_ != c) return;
  if (r->type == REDIS_REPLY_ERROR) self->Fail(std::string("AUTH rejected: ") + r->str);
}

}  // namespace kp
