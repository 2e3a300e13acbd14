// ReplicationMonitor: INFO replication probes with hiredis's libuv adapter, the primary's
// progress for read-your-writes, and each replica's read verdict.
#include "proxy/replication_monitor.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "common/logging.h"

namespace kp {

ReplicationMonitor::ReplicationMonitor(uv_loop_t* loop, const Config& config,
                                       const BackendGroup& group)
    : loop_(loop), config_(config), group_(group) {
  timeout_ms_ = static_cast<uint64_t>(config.timeout_s * 1000.0 + 0.5);
  if (timeout_ms_ == 0) timeout_ms_ = 1;
  uint64_t interval_ms = static_cast<uint64_t>(config.health_check_interval_s * 1000.0 + 0.5);
  connect_timeout_ms_ = std::min(timeout_ms_, std::max<uint64_t>(4 * interval_ms, 250));
  for (const auto& b : group.all) {
    auto p = std::make_unique<Probe>();
    p->owner = this;
    p->backend = b.get();
    probes_.push_back(std::move(p));
  }
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
}

ReplicationMonitor::~ReplicationMonitor() = default;

void ReplicationMonitor::Start() {
  running_ = true;
  uint64_t every = static_cast<uint64_t>(config_.health_check_interval_s * 1000.0 + 0.5);
  if (every == 0) every = 1;
  uv_timer_start(
      &timer_, [](uv_timer_t* t) { static_cast<ReplicationMonitor*>(t->data)->OnTick(); }, 0,
      every);
}

void ReplicationMonitor::Stop() {
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

void ReplicationMonitor::Drop(Probe& p, const char* why) {
  p.backend->MarkDown(std::string("health check: ") + why);
  redisAsyncContext* c = p.ctx;
  p.ctx = nullptr;
  p.awaiting = false;
  // Callbacks fired by the free see ctx != c and ignore themselves.
  if (c != nullptr) redisAsyncFree(c);
  if (p.backend->is_primary() && primary_known_) NotePrimaryState();
}

void ReplicationMonitor::OnTick() {
  if (primary_known_) NotePrimaryState();
  uint64_t now = uv_now(loop_);
  // Replicas are asked right after the primary answers (PollReplicas). If the primary cannot
  // answer this round, they are asked now instead, so their health is still checked.
  Probe& primary = *probes_.front();
  bool chained = primary.ctx != nullptr && !primary.awaiting && !primary.resolving;
  for (auto& pp : probes_) {
    Probe& p = *pp;
    if (p.ctx != nullptr && SocketFailed(p)) continue;
    if (p.ctx != nullptr && !p.connected) {
      if (now - p.connect_ms >= connect_timeout_ms_) Drop(p, "connect: no answer");
      continue;
    }
    if (p.ctx != nullptr && p.awaiting) {
      if (now - p.sent_ms >= timeout_ms_) Drop(p, "no reply to INFO within the timeout");
      continue;
    }
    if (p.resolving) continue;
    if (p.ctx == nullptr) {
      StartResolve(p);
      continue;
    }
    if (&p == &primary || !chained) SendProbe(p);
  }
}

bool ReplicationMonitor::SocketFailed(Probe& p) {
  // hiredis's libuv adapter ignores poll errors (a refused connect, a reset after the server
  // died), leaving the context waiting forever; the socket's pending error tells.
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(p.ctx->c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err == 0) return false;
  std::string why = std::string(p.connected ? "connection lost: " : "connect: ") + strerror(err);
  Drop(p, why.c_str());
  return true;
}

void ReplicationMonitor::PollReplicas() {
  for (size_t i = 1; i < probes_.size(); ++i) {
    Probe& p = *probes_[i];
    if (p.ctx != nullptr && !p.awaiting && !p.resolving) SendProbe(p);
  }
}

void ReplicationMonitor::StartResolve(Probe& p) {
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

void ReplicationMonitor::Connect(Probe& p, const std::string& ip) {
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
  p.connected = false;
  p.connect_ms = uv_now(loop_);
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

void ReplicationMonitor::SendProbe(Probe& p) {
  p.awaiting = true;
  p.sent_ms = uv_now(loop_);
  p.epoch = p.backend->down_epoch();
  if (p.backend->is_primary()) {
    // Bumped before the command can reach the socket: a write answered before this bump is
    // contained in the offset this probe returns (see PrimaryProgress).
    p.poll_epoch = group_.progress->poll_epoch.fetch_add(1, std::memory_order_seq_cst) + 1;
  }
  redisAsyncCommand(p.ctx, OnInfo, &p, "INFO replication");
}

void ReplicationMonitor::OnConnect(const redisAsyncContext* c, int status) {
  auto* p = static_cast<Probe*>(c->data);
  if (p == nullptr || p->ctx != c) return;
  p->connected = status == REDIS_OK;
  if (status != REDIS_OK) {
    // hiredis frees the context after this callback.
    p->ctx = nullptr;
    p->awaiting = false;
    p->backend->MarkDown(std::string("health check: connect: ") + c->errstr);
  }
}

void ReplicationMonitor::OnDisconnect(const redisAsyncContext* c, int status) {
  auto* p = static_cast<Probe*>(c->data);
  if (p == nullptr || p->ctx != c) return;
  p->ctx = nullptr;
  p->awaiting = false;
  if (status != REDIS_OK) {
    p->backend->MarkDown(std::string("health check: connection lost: ") + c->errstr);
    if (p->backend->is_primary() && p->owner->primary_known_) p->owner->NotePrimaryState();
  }
}

void ReplicationMonitor::OnAuth(redisAsyncContext* c, void* reply, void* privdata) {
  auto* p = static_cast<Probe*>(privdata);
  auto* r = static_cast<redisReply*>(reply);
  if (p->ctx != c || r == nullptr) return;
  if (r->type == REDIS_REPLY_ERROR) {
    p->backend->MarkDown(std::string("health check: AUTH rejected: ") + r->str);
  }
}

void ReplicationMonitor::OnInfo(redisAsyncContext* c, void* reply, void* privdata) {
  auto* p = static_cast<Probe*>(privdata);
  auto* r = static_cast<redisReply*>(reply);
  if (p->ctx != c || r == nullptr) return;
  p->awaiting = false;
  bool is_error = r->type == REDIS_REPLY_ERROR;
  bool is_text = r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || is_error;
  if (!is_text) {
    p->backend->MarkDown("health check: unexpected reply type to INFO");
    if (p->backend->is_primary()) p->owner->PollReplicas();
    return;
  }
  p->owner->OnAnswer(*p, r->str, r->len, is_error);
}

void ReplicationMonitor::OnAnswer(Probe& p, const char* data, size_t len, bool is_error) {
  std::string_view text(data, len);
  if (is_error) {
    if (text.substr(0, 4) == "BUSY") {
      // Alive, running a slow script or function: clients get BUSY from Redis itself. The
      // state it had stays; it is not marked down for being busy.
      if (p.backend->is_primary()) PollReplicas();
      return;
    }
    // LOADING, MASTERDOWN, NOAUTH...: alive but not able to serve.
    p.backend->MarkDown("health check: " + std::string(text));
    if (p.backend->is_primary()) PollReplicas();
    return;
  }
  ReplicationInfo info;
  if (!ParseReplicationInfo(text, &info)) {
    p.backend->MarkDown("health check: INFO replication reply without a role line");
    if (p.backend->is_primary()) PollReplicas();
    return;
  }
  p.backend->MarkUp(p.epoch);
  if (p.backend->is_primary()) {
    OnPrimaryInfo(p, info);
  } else {
    OnReplicaInfo(p, info);
  }
}

void ReplicationMonitor::OnPrimaryInfo(Probe& p, const ReplicationInfo& info) {
  if (info.is_replica && !primary_is_replica_logged_) {
    Log().warn("primary {} reports itself as a replica of {}:{}; writes will fail with READONLY",
               p.backend->name(), info.master_host, info.master_port);
  }
  primary_is_replica_logged_ = info.is_replica;
  int64_t offset = info.master_repl_offset;
  PrimaryProgress& progress = *group_.progress;
  if (primary_known_ && info.replid != primary_replid_) {
    // After a failover (PSYNC2) the new history continues the old one and offsets stay
    // comparable; anything else (restarted without its data, another server) starts over.
    bool continues = info.replid2 == primary_replid_ && offset >= primary_offset_;
    if (!continues) {
      progress.history.fetch_add(1, std::memory_order_acq_rel);
      history_.Clear();
      Log().info(
          "primary {} has a new replication history (id {}, offset {}); replicas must "
          "resync before they serve reads",
          p.backend->name(), info.replid, offset);
    }
  }
  primary_known_ = true;
  primary_replid_ = info.replid;
  primary_offset_ = offset;
  history_.Add(p.sent_ms, offset);
  progress.offset.store(offset, std::memory_order_release);
  progress.sampled_epoch.store(p.poll_epoch, std::memory_order_release);
  PollReplicas();
}

void ReplicationMonitor::OnReplicaInfo(Probe& p, const ReplicationInfo& info) {
  p.info = info;
  p.has_info = true;
  p.info_sent_ms = p.sent_ms;
  p.info_epoch = p.epoch;
  // At start-up a replica may answer before the primary: it is judged once the primary has
  // answered (which polls it again).
  if (!primary_known_) return;
  NotePrimaryState();
  if (primary_lost_ms_ == 0) {
    Judge(p);
    return;
  }
  // Primary gone: which replicas serve depends on what all of them hold, so each answer
  // re-judges every replica.
  for (size_t i = 1; i < probes_.size(); ++i) {
    if (probes_[i]->has_info) Judge(*probes_[i]);
  }
}

void ReplicationMonitor::NotePrimaryState() {
  if (group_.primary()->up()) {
    primary_lost_ms_ = 0;
    return;
  }
  if (primary_lost_ms_ != 0) return;
  // Just lost: ask the replicas at once what they hold rather than at the next tick, so the
  // ones that are behind stop serving within a round trip.
  primary_lost_ms_ = uv_now(loop_);
  PollReplicas();
}

void ReplicationMonitor::Judge(Probe& p) {
  Backend& b = *p.backend;
  const ReplicationInfo& info = p.info;
  PrimaryView view;
  view.known = primary_known_;
  view.reachable = primary_lost_ms_ == 0;
  view.replid = primary_replid_;
  view.offset = primary_offset_;
  view.history = &history_;
  if (!view.reachable) {
    // Only answers asked for after the primary was lost say what data still exists.
    view.replicas_reported = true;
    for (size_t i = 1; i < probes_.size(); ++i) {
      const Probe& q = *probes_[i];
      if (!q.backend->up()) continue;
      if (!q.has_info || q.info_sent_ms < primary_lost_ms_) {
        view.replicas_reported = false;
      } else if (q.info.replid == primary_replid_) {
        view.freshest_replica_offset =
            std::max(view.freshest_replica_offset, q.info.replica_offset);
      }
    }
  }
  LagLimits limits{config_.max_replica_lag_s, config_.max_replica_lag_bytes};
  ReplicaVerdict v = JudgeReplica(info, view, limits, p.info_sent_ms, b.qualified());
  b.lag_bytes = v.lag_bytes;
  b.lag_seconds = v.lag_seconds;
  bool changed = b.SetReplicationState(p.info_epoch, v.qualified, info.replica_offset);
  if (changed && v.qualified) {
    Log().info("replica {} serves reads (offset {}, {} bytes and {:.3g}s behind the primary)",
               b.name(), info.replica_offset, v.lag_bytes < 0 ? 0 : v.lag_bytes,
               v.lag_seconds < 0 ? 0.0 : v.lag_seconds);
  } else if (changed ||
             (!v.qualified && v.reason != b.not_serving_reason && b.not_serving_reason.empty())) {
    Log().warn("replica {} gets no reads: {}", b.name(), v.reason);
  } else if (!v.qualified && v.reason != b.not_serving_reason) {
    Log().debug("replica {} still gets no reads: {}", b.name(), v.reason);
  }
  b.not_serving_reason = v.reason;
}

}  // namespace kp
