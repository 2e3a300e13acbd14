// HealthChecker: background PING probes with hiredis's libuv adapter.
#include "proxy/health_checker.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <string>

#include "common/logging.h"

namespace kp {

HealthChecker::HealthChecker(uv_loop_t* loop, const Config& config, const BackendSet& backends)
    : loop_(loop), config_(config) {
  timeout_ms_ = static_cast<uint64_t>(config.timeout_s * 1000.0 + 0.5);
  if (timeout_ms_ == 0) timeout_ms_ = 1;
  for (const auto& b : backends.all) {
    auto p = std::make_unique<Probe>();
    p->owner = this;
    p->backend = b.get();
    probes_.push_back(std::move(p));
  }
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
}

HealthChecker::~HealthChecker() = default;

void HealthChecker::Start() {
  running_ = true;
  uint64_t every = static_cast<uint64_t>(config_.health_check_interval_s * 1000.0 + 0.5);
  if (every == 0) every = 1;
  uv_timer_start(
      &timer_, [](uv_timer_t* t) { static_cast<HealthChecker*>(t->data)->OnTick(); }, 0, every);
}

void HealthChecker::Stop() {
  running_ = false;
  uv_timer_stop(&timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
  for (auto& p : probes_) {
    if (p->ctx != nullptr) {
      redisAsyncContext* c = p->ctx;
      p->ctx = nullptr;
      redisAsyncFree(c);
    }
  }
}

void HealthChecker::Drop(Probe& p, const char* why) {
  p.backend->MarkDown(std::string("health check: ") + why);
  redisAsyncContext* c = p.ctx;
  p.ctx = nullptr;
  p.awaiting = false;
  // Callbacks fired by the free see ctx != c and ignore themselves.
  if (c != nullptr) redisAsyncFree(c);
}

void HealthChecker::OnTick() {
  uint64_t now = uv_now(loop_);
  for (auto& pp : probes_) {
    Probe& p = *pp;
    if (p.ctx != nullptr && p.awaiting) {
      if (now - p.sent_ms >= timeout_ms_) Drop(p, "no reply to PING within the timeout");
      continue;
    }
    if (p.resolving) continue;
    if (p.ctx == nullptr) {
      StartResolve(p);
      continue;
    }
    SendProbe(p);
  }
}

void HealthChecker::StartResolve(Probe& p) {
  const Endpoint& ep = p.backend->endpoint();
  std::string host = ep.host;
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  sockaddr_in a4;
  sockaddr_in6 a6;
  if (uv_ip4_addr(host.c_str(), ep.port, &a4) == 0 ||
      uv_ip6_addr(host.c_str(), ep.port, &a6) == 0) {
    Connect(p, host);
    return;
  }
  p.resolving = true;
  p.resolve_req.data = &p;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(
      loop_, &p.resolve_req,
      [](uv_getaddrinfo_t* req, int status, addrinfo* res) {
        auto* probe = static_cast<Probe*>(req->data);
        probe->resolving = false;
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
        if (!probe->owner->running_) return;
        if (ip.empty()) {
          probe->backend->MarkDown(std::string("health check: cannot resolve host: ") +
                                   uv_strerror(status));
          return;
        }
        probe->owner->Connect(*probe, ip);
      },
      host.c_str(), nullptr, &hints);
  if (rc != 0) {
    p.resolving = false;
    p.backend->MarkDown(std::string("health check: cannot resolve host: ") + uv_strerror(rc));
  }
}

void HealthChecker::Connect(Probe& p, const std::string& ip) {
  redisAsyncContext* c = redisAsyncConnect(ip.c_str(), p.backend->endpoint().port);
  if (c == nullptr) return;
  if (c->err) {
    std::string why = std::string("connect: ") + c->errstr;
    redisAsyncFree(c);
    p.backend->MarkDown("health check: " + why);
    return;
  }
  c->data = &p;
  if (redisLibuvAttach(c, loop_) != REDIS_OK) {
    redisAsyncFree(c);
    return;
  }
  redisAsyncSetConnectCallback(c, OnConnect);
  redisAsyncSetDisconnectCallback(c, OnDisconnect);
  p.ctx = c;
  if (!config_.backend_password.empty()) {
    if (config_.backend_username.empty()) {
      redisAsyncCommand(c, OnAuth, &p, "AUTH %b", config_.backend_password.data(),
                        config_.backend_password.size());
    } else {
      redisAsyncCommand(c, OnAuth, &p, "AUTH %b %b", config_.backend_username.data(),
                        config_.backend_username.size(), config_.backend_password.data(),
                        config_.backend_password.size());
    }
  }
  SendProbe(p);
}

void HealthChecker::SendProbe(Probe& p) {
  p.awaiting = true;
  p.sent_ms = uv_now(loop_);
  p.epoch = p.backend->down_epoch();
  redisAsyncCommand(p.ctx, OnPong, &p, "PING");
}

void HealthChecker::OnConnect(const redisAsyncContext* c, int status) {
  auto* p = static_cast<Probe*>(c->data);
  if (p == nullptr || p->ctx != c) return;
  if (status != REDIS_OK) {
    // hiredis frees the context after this callback.
    p->ctx = nullptr;
    p->awaiting = false;
    p->backend->MarkDown(std::string("health check: connect: ") + c->errstr);
  }
}

void HealthChecker::OnDisconnect(const redisAsyncContext* c, int status) {
  auto* p = static_cast<Probe*>(c->data);
  if (p == nullptr || p->ctx != c) return;
  p->ctx = nullptr;
  p->awaiting = false;
  if (status != REDIS_OK) {
    p->backend->MarkDown(std::string("health check: connection lost: ") + c->errstr);
  }
}

void HealthChecker::OnAuth(redisAsyncContext* c, void* reply, void* privdata) {
  auto* p = static_cast<Probe*>(privdata);
  auto* r = static_cast<redisReply*>(reply);
  if (p->ctx != c || r == nullptr) return;
  if (r->type == REDIS_REPLY_ERROR) {
    p->backend->MarkDown(std::string("health check: AUTH rejected: ") + r->str);
  }
}

void HealthChecker::OnPong(redisAsyncContext* c, void* reply, void* privdata) {
  auto* p = static_cast<Probe*>(privdata);
  auto* r = static_cast<redisReply*>(reply);
  if (p->ctx != c || r == nullptr) return;
  p->awaiting = false;
  if (r->type == REDIS_REPLY_STATUS && std::string(r->str, r->len) == "PONG") {
    p->backend->MarkUp(p->epoch);
  } else if (r->type == REDIS_REPLY_ERROR) {
    // LOADING, MASTERDOWN, NOAUTH...: alive but not able to serve.
    p->backend->MarkDown(std::string("health check: ") + std::string(r->str, r->len));
  }
}

}  // namespace kp
