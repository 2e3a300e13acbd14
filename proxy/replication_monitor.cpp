// ReplicationMonitor: INFO replication probes, role confirmation and primary changes, the
// primary's progress for read-your-writes, and each replica's read verdict.
#include "proxy/replication_monitor.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/logging.h"
#include "proxy/descriptors.h"

namespace kp {

namespace {

// Whether a replica's "master_host:master_port" names this node.
bool Names(const Endpoint& ep, const std::string& host, int port) {
  if (ep.port != port) return false;
  return ep.host == host || (IsLoopbackHost(ep.host) && IsLoopbackHost(host));
}

}  // namespace

ReplicationMonitor::ReplicationMonitor(uv_loop_t* loop, std::shared_ptr<const Config> config,
                                       BackendGroup& group)
    : loop_(loop), group_(group) {
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
  uv_timer_init(loop_, &promotion_timer_);
  promotion_timer_.data = this;
  SetConfig(std::move(config));
  static_primary_ = group_.primary();
  SyncProbes();
}

void ReplicationMonitor::SetConfig(std::shared_ptr<const Config> config) {
  owned_config_ = std::move(config);
  config_ = owned_config_.get();
  timeout_ms_ = std::max<uint64_t>(1, static_cast<uint64_t>(config_->timeout_s * 1000.0 + 0.5));
  interval_ms_ =
      std::max<uint64_t>(1, static_cast<uint64_t>(config_->health_check_interval_s * 1000.0 + 0.5));
  unanswered_ms_ = UnansweredAfterMs(*config_);
}

void ReplicationMonitor::SetTls(std::shared_ptr<const TlsContext> tls) {
  tls_ = std::move(tls);
  for (auto& p : probes_) p->conn->SetTls(tls_, config_->backend_tls_server_name);
}

void ReplicationMonitor::Reconfigure(std::shared_ptr<const Config> config) {
  bool topology = config->primary != config_->primary || config->replicas != config_->replicas;
  bool credentials = config->backend_username != config_->backend_username ||
                     config->backend_password != config_->backend_password;
  uint64_t old_interval = interval_ms_;
  SetConfig(std::move(config));
  if (credentials) {
    // New probe connections AUTH with the new credentials; the open ones keep working.
    for (auto& p : probes_) {
      p->conn->SetCredentials(config_->backend_username, config_->backend_password);
    }
  }
  if (running_ && interval_ms_ != old_interval) {
    uv_timer_start(
        &timer_, [](uv_timer_t* t) { static_cast<ReplicationMonitor*>(t->data)->OnTick(); },
        interval_ms_, interval_ms_);
  }
  if (topology && !config_->external_topology())
    ApplyStaticView(config_->primary, config_->replicas);
}

Backend* ReplicationMonitor::ApplyView(const Endpoint& primary,
                                       const std::vector<Endpoint>& replicas, const char* source) {
  // Every topology source (the configuration, the Sentinels) comes through here: nodes are
  // added, those no longer listed get no requests, and the named primary takes the writes
  // only once it confirms the role (SwitchOrAsk).
  Backend* p = group_.FindOrAdd(primary);
  if (p == nullptr) {
    Log().error("more nodes than the proxy tracks ({}); ignoring {}", BackendGroup::kMaxNodes,
                primary.ToString());
    return nullptr;
  }
  Backend* current = group_.primary();
  std::vector<bool> listed(BackendGroup::kMaxNodes, false);
  listed[p->position()] = true;
  for (const Endpoint& r : replicas) {
    Backend* b = group_.FindOrAdd(r);
    if (b == nullptr) continue;
    listed[b->position()] = true;
    if (b != current && b->role() != BackendRole::kReplica) {
      b->Disqualify();  // judged before it serves
      b->set_role(BackendRole::kReplica);
      Log().info("replica {} added", b->name());
    }
  }
  if (p != current && p->role() == BackendRole::kNone) p->set_role(BackendRole::kReplica);
  for (size_t i = 0; i < group_.size(); ++i) {
    Backend* b = group_.node(i);
    if (!listed[i] && b != current && b->role() != BackendRole::kNone) {
      Log().info("{} is no longer {}; it gets no requests", b->name(), source);
      b->Disqualify();
      b->set_role(BackendRole::kNone);
    }
  }
  SyncProbes();
  return p;
}

void ReplicationMonitor::SwitchOrAsk(Backend* p, const char* why) {
  if (p == group_.primary()) return;
  if (Reports(p, true)) {
    SwitchPrimary(ProbeOf(p), why);
    return;
  }
  Probe& pp = ProbeOf(p);
  if (!pp.conn->open()) pp.conn->Connect();
  if (!pp.awaiting) SendProbe(pp);  // ask it now rather than at the next tick
}

void ReplicationMonitor::ApplyStaticView(const Endpoint& primary,
                                         const std::vector<Endpoint>& replicas) {
  Backend* p = ApplyView(primary, replicas, "configured");
  if (p == nullptr) return;
  static_primary_ = p;
  SwitchOrAsk(p, "configured as the primary");
}

ReplicationMonitor::~ReplicationMonitor() = default;

void ReplicationMonitor::Start() {
  running_ = true;
  uv_timer_start(
      &timer_, [](uv_timer_t* t) { static_cast<ReplicationMonitor*>(t->data)->OnTick(); }, 0,
      interval_ms_);
}

void ReplicationMonitor::Stop() {
  running_ = false;
  uv_timer_stop(&timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
  uv_timer_stop(&promotion_timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&promotion_timer_), nullptr);
  for (auto& p : probes_) p->conn->Close();
}

void ReplicationMonitor::SyncProbes() {
  for (size_t i = probes_.size(); i < group_.size(); ++i) {
    auto p = std::make_unique<Probe>();
    Probe* raw = p.get();
    p->owner = this;
    p->backend = group_.node(i);
    p->conn = std::make_unique<ControlConn>(
        loop_, p->backend->endpoint(), config_->backend_username, config_->backend_password,
        [raw](const std::string& why) { raw->owner->OnLost(*raw, why); });
    p->conn->SetTls(tls_, config_->backend_tls_server_name);
    probes_.push_back(std::move(p));
  }
}

void ReplicationMonitor::OnLost(Probe& p, const std::string& why) {
  p.awaiting = false;
  p.facts_asked = false;
  if (p.conn->lost_to_shortage()) {
    // Out of descriptors here says nothing about the node: its state stays as last seen
    // and the next tick asks again.
    NoteDescriptorShortage("health check");
    p.reconnecting = false;
    return;
  }
  if (p.conn->lost_established() && !p.reconnecting && running_) {
    // A server that closes a connection is not thereby down: Sentinel kills clients when it
    // reconfigures a node, an operator may CLIENT KILL. Ask again on a fresh connection at
    // once; only if that fails is the node down. Meanwhile a replica serves no reads: the
    // server behind the address may be a new one (restarted empty).
    p.reconnecting = true;
    p.backend->Disqualify();
    p.conn->Connect();
    SendProbe(p);
    return;
  }
  p.reconnecting = false;
  p.backend->MarkDown("health check: " + why);
  if (p.backend == group_.primary() && primary_known_) NotePrimaryState();
}

void ReplicationMonitor::OnTick() {
  SyncProbes();
  if (primary_known_) NotePrimaryState();
  uint64_t now = uv_now(loop_);
  // Other nodes are asked right after the primary answers (PollReplicas). If the primary
  // cannot answer this round, they are asked now instead, so their health is still checked.
  Backend* primary = group_.primary();
  Probe* pp = primary != nullptr ? &ProbeOf(primary) : nullptr;
  bool chained = pp != nullptr && pp->conn->established() && !pp->awaiting;
  for (auto& owned : probes_) {
    Probe& p = *owned;
    if (p.backend->role() == BackendRole::kNone) {
      p.conn->Close();  // not in the topology: not watched
      p.awaiting = false;
      continue;
    }
    p.conn->Check(now, unanswered_ms_);
    if (!p.conn->open()) {
      p.conn->Connect();
      SendProbe(p);  // queued until the connection is made (IP addresses at once)
      continue;
    }
    if (p.awaiting) {
      if (now - p.sent_ms >= timeout_ms_) {
        p.conn->Fail("no reply to INFO within the timeout");
      } else if (now - p.sent_ms >= unanswered_ms_) {
        NoteUnanswered(p, now - p.sent_ms);
      }
      if (p.conn->open()) NoteSilentLag(p, now);
      continue;
    }
    if (!p.conn->established()) continue;
    if (&p == pp || !chained) SendProbe(p);
  }
}

void ReplicationMonitor::NoteSilentLag(Probe& p, uint64_t now_ms) {
  // What it served while silent is as old as its data: a stopped replica applies nothing, and
  // the reads it runs once it goes on see what it had at the stop. Reads sent within
  // max_replica_lag of that are within the bound; later ones must go elsewhere.
  Backend& b = *p.backend;
  if (!b.is_replica() || !p.has_info || !primary_known_ || primary_lost_ms_ != 0 ||
      p.info.replid != primary_replid_ || p.info.replica_offset < 0 ||
      p.backend->role() != BackendRole::kReplica) {
    return;
  }
  const double lag = history_.LagSeconds(now_ms, p.info.replica_offset);
  b.lag_seconds = std::max(b.lag_seconds, lag);  // the gauge shows it growing
  const double max_lag = config_->max_replica_lag_s;
  if (max_lag <= 0 || lag <= max_lag || !b.serves_reads() || p.conn->HasUnreadBytes()) return;
  b.Disqualify();
  char why[160];
  std::snprintf(why, sizeof why,
                "no answer for %llu ms: at least %.3fs behind the primary (max_replica_lag "
                "%.3fs)",
                static_cast<unsigned long long>(now_ms - p.sent_ms), lag, max_lag);
  b.not_serving_reason = why;
  LogFields f{{"backend", b.name()}, {"role", "replica"}};
  LogFields e{{"event", "replica_no_reads"}, {"reason", why}};
  Log().warn("replica {} gets no reads: {}", b.name(), why);
}

void ReplicationMonitor::NoteUnanswered(Probe& p, uint64_t waited_ms) {
  // Reads sent to a replica that answers nothing wait as long as it does: up to the timeout
  // (5 s by default), when a stopped one is marked down, longer than many clients wait (a
  // 2 s socket timeout saw errors for all of it). So the cheap reads of clients whose replies
  // may not be large go elsewhere until it answers again (ClientSession::Steered), and the
  // workers hand those of clients with small replies already waiting on it to the primary
  // (BackendConn::ReleaseCheapReads).
  // Not marked down: one busy with a slow command, or building large replies, is alive, and
  // those stay on it (moved to the primary, never-readers' first GETs of 16 MB kept a
  // well-behaved client's SET waiting 2.7 s there).
  Backend& b = *p.backend;
  if (!b.is_replica()) return;
  // Only while something else can take them: with no primary serving and no other replica,
  // they wait for it (a fork on a large data set stalls a server that long). Looked at on
  // every tick: the others may go while this one is still silent.
  const Backend* primary = group_.primary();
  bool others = primary != nullptr && primary->serves_writes();
  for (size_t i = 0; i < group_.size() && !others; ++i) {
    const Backend* n = group_.node(i);
    others = n != &b && n->serves_reads() && n->answering();
  }
  if (!b.answering()) {
    if (!others && b.SetAnswering(true)) NoteAnswering(p, "nothing else can take its reads");
    return;
  }
  // Its answer may be in the socket already, this loop having been busy for as long.
  if (!others || !b.serves_reads() || p.conn->HasUnreadBytes() || !b.SetAnswering(false)) {
    return;
  }
  // A replica whose answers take about this long would log every second: once per
  // kAnsweringLogMs at warning, the rest at debug.
  const uint64_t now = uv_now(loop_);
  p.answering_logged = p.answering_log_ms == 0 || now - p.answering_log_ms >= kAnsweringLogMs;
  if (p.answering_logged) p.answering_log_ms = now;
  LogFields f{{"backend", b.name()}, {"role", "replica"}};
  LogFields e{{"event", "replica_not_answering"},
              {"reason", "no answer to INFO replication for " + std::to_string(waited_ms) + " ms"}};
  Log().log(p.answering_logged ? spdlog::level::warn : spdlog::level::debug,
            "replica {} is not answering (no answer to INFO replication for {} ms): cheap reads "
            "go elsewhere",
            b.name(), waited_ms);
}

void ReplicationMonitor::NoteAnswering(Probe& p, const std::string& why) {
  LogFields f{{"backend", p.backend->name()}, {"role", "replica"}};
  LogFields e{{"event", "replica_answering"}};
  Log().log(p.answering_logged ? spdlog::level::info : spdlog::level::debug,
            "replica {} answers again ({}): it takes all its reads", p.backend->name(), why);
}

void ReplicationMonitor::PollReplicas() {
  Backend* primary = group_.primary();
  for (auto& owned : probes_) {
    Probe& p = *owned;
    if (p.backend == primary || p.backend->role() == BackendRole::kNone) continue;
    if (p.conn->established() && !p.awaiting) SendProbe(p);
  }
}

void ReplicationMonitor::SendProbe(Probe& p) {
  if (!p.conn->open()) return;
  uint64_t poll_epoch = 0;
  if (p.backend == group_.primary()) {
    // Bumped before the command can reach the socket: a write answered before this bump is
    // contained in the offset this probe returns (see PrimaryProgress).
    poll_epoch = group_.progress().poll_epoch.fetch_add(1, std::memory_order_seq_cst) + 1;
  }
  if (!p.facts_asked) AskFacts(p);
  if (!p.conn->Command(OnInfo, &p, "INFO replication")) return;
  p.awaiting = true;
  p.sent_ms = uv_now(loop_);
  p.epoch = p.backend->down_epoch();
  p.poll_epoch = poll_epoch;
}

void ReplicationMonitor::AskFacts(Probe& p) {
  // Asked again on the next probe if the connection could not take it yet (resolving).
  p.facts_asked = p.conn->Command(
      [](ControlConn*, redisReply* r, void* privdata) {
        auto* b = static_cast<Backend*>(privdata);
        if (r->type != REDIS_REPLY_STRING) return;
        std::string_view text(r->str, r->len);
        size_t at = text.find("redis_version:");
        if (at == std::string_view::npos) return;
        text.remove_prefix(at + 14);
        b->set_server_version(std::string(text.substr(0, text.find_first_of("\r\n"))));
      },
      p.backend, "INFO server");
  // Refused where CONFIG is renamed or denied by ACL: Redis's default (16) stays.
  p.conn->Command(
      [](ControlConn*, redisReply* r, void* privdata) {
        auto* b = static_cast<Backend*>(privdata);
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) return;
        const redisReply* v = r->element[1];
        if (v->type != REDIS_REPLY_STRING) return;
        uint64_t n = std::strtoull(v->str, nullptr, 10);
        if (n > 0 && n <= 1u << 20) b->set_databases(static_cast<uint32_t>(n));
      },
      p.backend, "CONFIG GET databases");
}

void ReplicationMonitor::OnInfo(ControlConn*, redisReply* r, void* privdata) {
  auto* p = static_cast<Probe*>(privdata);
  p->awaiting = false;
  bool is_error = r->type == REDIS_REPLY_ERROR;
  bool is_text = r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || is_error;
  if (!is_text) {
    p->backend->MarkDown("health check: unexpected reply type to INFO");
    if (p->backend == p->owner->group_.primary()) p->owner->PollReplicas();
    return;
  }
  p->owner->OnAnswer(*p, r->str, r->len, is_error);
}

void ReplicationMonitor::OnAnswer(Probe& p, const char* data, size_t len, bool is_error) {
  std::string_view text(data, len);
  bool is_primary = p.backend == group_.primary();
  if (is_error) {
    if (text.substr(0, 4) != "BUSY") {
      // LOADING, MASTERDOWN, NOAUTH...: alive but not able to serve.
      p.backend->MarkDown("health check: " + std::string(text));
    }
    // BUSY: alive, running a slow script or function; clients get BUSY from Redis itself.
    // The state it had stays; it is not marked down for being busy.
    if (is_primary) PollReplicas();
    return;
  }
  ReplicationInfo info;
  if (!ParseReplicationInfo(text, &info)) {
    p.backend->MarkDown("health check: INFO replication reply without a role line");
    if (is_primary) PollReplicas();
    return;
  }
  if (p.backend->SetAnswering(true)) {
    NoteAnswering(p, std::to_string(uv_now(loop_) - p.sent_ms) + " ms after it was asked");
  }
  p.reconnecting = false;
  p.info = std::move(info);
  p.has_info = true;
  p.info_sent_ms = p.sent_ms;
  p.info_answered_ms = uv_now(loop_);
  p.info_epoch = p.epoch;
  if (!p.info.is_replica) {
    OnPrimaryAnswer(p);
    return;
  }
  p.backend->MarkUp(p.epoch);
  if (is_primary) {
    // The primary says it is a replica: no writes go to it. A switchover is followed if the
    // node it now replicates (or the Sentinels' choice) is a primary.
    bool changed = p.backend->SetReplicationState(p.epoch, false, -1);
    std::string why = "it reports itself as a replica of " + p.info.master_host + ":" +
                      std::to_string(p.info.master_port);
    p.backend->set_last_error(why);
    if (changed) {
      LogFields f{{"event", "primary_no_writes"}, {"backend", p.backend->name()}, {"reason", why}};
      Log().warn("primary {} gets no writes: {}", p.backend->name(), why);
    }
    Backend* d = Desired();
    if (d != nullptr && d != p.backend && Reports(d, true)) {
      SwitchPrimary(ProbeOf(d), "the old primary now replicates it");
      return;
    }
    PollReplicas();
    return;
  }
  OnReplicaInfo(p);
}

bool ReplicationMonitor::Reports(const Backend* b, bool primary) const {
  const Probe& p = *probes_[b->position()];
  return p.has_info && b->up() && p.info.is_replica != primary;
}

Backend* ReplicationMonitor::Desired() const {
  if (config_->external_topology()) return sentinel_master_;
  Backend* cur = group_.primary();
  if (cur == nullptr) return nullptr;
  // The operator configured another primary (reload): it takes over once it says so itself.
  if (static_primary_ != nullptr && static_primary_ != cur && Reports(static_primary_, true)) {
    return static_primary_;
  }
  // A static topology moves only on evidence: the primary itself says it is a replica now.
  if (!Reports(cur, false)) return cur;
  const ReplicationInfo& ci = probes_[cur->position()]->info;
  Backend* only = nullptr;
  size_t primaries = 0;
  for (size_t i = 0; i < group_.size(); ++i) {
    Backend* b = group_.node(i);
    if (b == cur || b->role() == BackendRole::kNone || !Reports(b, true)) continue;
    if (Names(b->endpoint(), ci.master_host, ci.master_port)) return b;
    only = b;
    ++primaries;
  }
  return primaries == 1 ? only : cur;
}

Backend* ReplicationMonitor::RivalPrimary() const {
  if (config_->sentinels.empty() || !primary_known_) return nullptr;
  const Backend* cur = group_.primary();
  for (size_t i = 0; i < group_.size(); ++i) {
    Backend* b = group_.node(i);
    if (b == cur || b == sentinel_master_ || !Reports(b, true)) continue;
    // Promoted from the current primary: its previous history is the primary's. (The old
    // primary still answering as one after a switch is not: its history is another.)
    if (probes_[b->position()]->info.replid2 == primary_replid_) return b;
  }
  return nullptr;
}

bool ReplicationMonitor::FenceForRival(Backend& primary) {
  // Sentinel promotes a replica first and announces it (+switch-master) about a second
  // later; meanwhile the old primary still takes writes that are thrown away when it is
  // made a replica of the new one. They wait instead (as during any failover, up to the
  // timeout) and go to the new primary once the Sentinels name it.
  Backend* rival = RivalPrimary();
  if (rival == nullptr) {
    rival_since_ms_ = 0;
    return false;
  }
  // Bounded: a node promoted by hand that the Sentinels do not act on must not stop writes
  // for good. A failover names its primary within seconds.
  const uint64_t now = MonotonicMs();
  const uint64_t limit = FenceLimitMs();
  if (rival_since_ms_ == 0) rival_since_ms_ = now;
  if (now - rival_since_ms_ > limit) {
    if (rival_since_ms_ + limit + interval_ms_ >= now) {
      Log().warn(
          "replica {} still answers as a primary after {} ms while {} names {}: writes "
          "go to {} again",
          rival->name(), limit, Source(), primary.name(), primary.name());
    }
    return false;
  }
  NoWrites(primary, "replica " + rival->name() +
                        " reports itself promoted from it; writes wait for the Sentinels to "
                        "name the primary");
  return true;
}

void ReplicationMonitor::NoWrites(Backend& primary, const std::string& why) {
  bool changed = primary.SetReplicationState(primary.down_epoch(), false, -1);
  primary.set_last_error(why);
  if (changed) {
    LogFields f{{"event", "primary_no_writes"}, {"backend", primary.name()}, {"reason", why}};
    Log().warn("primary {} gets no writes: {}", primary.name(), why);
  }
}

bool ReplicationMonitor::FenceForPromotion(Backend& primary) {
  if (promoting_since_ms_ == 0) return false;
  if (RivalPrimary() != nullptr) {
    // The promotion came: FenceForRival holds writes from now on, on that evidence.
    promoting_since_ms_ = 0;
    return false;
  }
  if (MonotonicMs() - promoting_since_ms_ > PromotionFenceMs()) {
    // The promotion did not come (or its probe answer did not): writes go on until there is
    // evidence of one (FenceForRival). An abort event may never come.
    Log().warn(
        "replica {} chosen by a Sentinel for promotion does not answer as a primary "
        "after {} ms: writes go to {} again",
        promoting_, PromotionFenceMs(), primary.name());
    promoting_since_ms_ = 0;
    promoting_ended_ms_ = MonotonicMs();
    return false;
  }
  NoWrites(primary, "a Sentinel is promoting replica " + promoting_ +
                        " in its place; writes wait for the Sentinels to name the primary");
  return true;
}

void ReplicationMonitor::FailoverStarting(const Endpoint& master, const Endpoint& replica) {
  Backend* cur = group_.primary();
  if (cur == nullptr || !Names(cur->endpoint(), master.host, master.port)) return;
  const uint64_t now = MonotonicMs();
  if (replica.ToString() == promoting_ &&
      (promoting_since_ms_ != 0 || now - promoting_ended_ms_ < kPromotionQuietMs)) {
    // The same choice again (several Sentinels relaying it, or a repeated event): the fence
    // is not extended, nor raised again soon after it ended without a promotion.
    return;
  }
  promoting_since_ms_ = now;
  promoting_ = replica.ToString();
  promoting_node_ = group_.Find(replica);
  if (promoting_node_ == cur) promoting_node_ = nullptr;
  if (promoting_node_ != nullptr && running_) {
    uv_timer_start(
        &promotion_timer_,
        [](uv_timer_t* t) { static_cast<ReplicationMonitor*>(t->data)->OnPromotionTick(); },
        kPromotionProbeMs, kPromotionProbeMs);
  }
  FenceForPromotion(*cur);
}

void ReplicationMonitor::OnPromotionTick() {
  Backend* cur = group_.primary();
  if (promoting_since_ms_ == 0 || promoting_node_ == nullptr || cur == nullptr) {
    uv_timer_stop(&promotion_timer_);
    return;
  }
  if (MonotonicMs() - promoting_since_ms_ > PromotionFenceMs()) {
    // FenceForPromotion ends the fence on the primary's answer.
    Probe& pp = ProbeOf(cur);
    if (pp.conn->established() && !pp.awaiting) SendProbe(pp);
    uv_timer_stop(&promotion_timer_);
    return;
  }
  Probe& p = ProbeOf(promoting_node_);
  if (!p.conn->open()) {
    p.conn->Connect();
    SendProbe(p);  // queued until the connection is made
  } else if (p.conn->established() && !p.awaiting) {
    SendProbe(p);
  }
}

void ReplicationMonitor::FailoverAborted(const Endpoint& master) {
  Backend* cur = group_.primary();
  if (promoting_since_ms_ == 0 || cur == nullptr ||
      !Names(cur->endpoint(), master.host, master.port)) {
    return;
  }
  promoting_since_ms_ = 0;
  promoting_.clear();  // a new choice after an abort is a new failover attempt
  Log().info("the Sentinels aborted the failover of {}: writes go to it again once it confirms",
             cur->name());
  Probe& pp = ProbeOf(cur);  // asked now, not at the next probe
  if (pp.conn->established() && !pp.awaiting) SendProbe(pp);
}

void ReplicationMonitor::OnPrimaryAnswer(Probe& p) {
  Backend& b = *p.backend;
  if (&b != group_.primary()) {
    b.MarkUp(p.epoch);
    if (Desired() == &b) {
      SwitchPrimary(p, config_->external_topology() ? Named()
                       : &b == static_primary_      ? "configured as the primary"
                                                    : "the old primary now replicates it");
      return;
    }
    if (Backend* cur = group_.primary(); cur != nullptr && cur != &b) FenceForRival(*cur);
    // A second primary listed as a replica (or one the Sentinels do not name): no reads.
    if (b.role() == BackendRole::kReplica) OnReplicaInfo(p);
    return;
  }
  if (sentinel_master_ != nullptr && sentinel_master_ != &b) {
    // Still a primary, but the Sentinels have promoted another node: nothing more is
    // written here (it is about to be turned into a replica, or is cut off).
    b.SetReplicationState(p.epoch, false, -1);
    b.MarkUp(p.epoch);
    b.set_last_error(SourceNames() + " " + sentinel_master_->name() + " as the primary");
    if (Reports(sentinel_master_, true)) {
      SwitchPrimary(ProbeOf(sentinel_master_), Named());
      return;
    }
    PollReplicas();
    return;
  }
  bool fenced = FenceForRival(b);
  if (FenceForPromotion(b) || fenced) {
    b.MarkUp(p.epoch);
    PollReplicas();
    return;
  }
  // Confirmed first, then up: a worker never sees it up but unconfirmed in between.
  bool changed = b.SetReplicationState(p.epoch, true, p.info.master_repl_offset);
  b.MarkUp(p.epoch);
  if (changed) b.set_last_error("");
  OnConfirmedPrimary(p);
}

void ReplicationMonitor::SwitchPrimary(Probe& to, const std::string& why) {
  Backend* old = group_.primary();
  group_.SetPrimary(to.backend);
  promoting_since_ms_ = 0;
  LogFields f{{"event", "primary_changed"}, {"backend", to.backend->name()}, {"reason", why}};
  if (old == nullptr) {
    Log().info("primary is {}: {}", to.backend->name(), why);
  } else {
    LogFields was{{"previous", old->name()}};
    Log().warn("primary is now {} (was {}): {}", to.backend->name(), old->name(), why);
  }
  // Its last answer confirmed the role.
  to.backend->SetReplicationState(to.info_epoch, true, to.info.master_repl_offset);
  to.backend->set_last_error("");
  // That answer was not asked for as the primary's, so it does not resolve read-your-writes
  // requirements (poll_epoch 0); the next probe does.
  to.poll_epoch = 0;
  OnConfirmedPrimary(to);
  NotePrimaryState();
}

void ReplicationMonitor::OnConfirmedPrimary(Probe& p) {
  const ReplicationInfo& info = p.info;
  int64_t offset = info.master_repl_offset;
  PrimaryProgress& progress = group_.progress();
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
  history_.Add(p.info_sent_ms, offset);
  progress.offset.store(offset, std::memory_order_release);
  if (p.poll_epoch != 0) progress.sampled_epoch.store(p.poll_epoch, std::memory_order_release);
  PollReplicas();
}

void ReplicationMonitor::OnReplicaInfo(Probe& p) {
  // At start-up a replica may answer before the primary: it is judged once the primary has
  // answered (which polls it again).
  if (!primary_known_ || p.backend->role() != BackendRole::kReplica) return;
  NotePrimaryState();
  if (primary_lost_ms_ == 0) {
    Judge(p);
    return;
  }
  // Primary gone: which replicas serve depends on what all of them hold, so each answer
  // re-judges every replica.
  for (auto& q : probes_) {
    if (q->has_info && q->backend->role() == BackendRole::kReplica) Judge(*q);
  }
}

void ReplicationMonitor::NotePrimaryState() {
  Backend* primary = group_.primary();
  if (primary != nullptr && primary->up()) {
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
  // An answer from before the replica was disqualified (NoteSilentLag, a lost connection)
  // says nothing of it now: its verdict would be ignored, and its lag and reason would
  // overwrite the current ones.
  if (p.info_epoch != b.down_epoch()) return;
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
    for (auto& owned : probes_) {
      const Probe& q = *owned;
      if (q.backend->role() != BackendRole::kReplica || !q.backend->up()) continue;
      if (!q.has_info || q.info_sent_ms < primary_lost_ms_) {
        view.replicas_reported = false;
      } else if (q.info.replid == primary_replid_) {
        view.freshest_replica_offset =
            std::max(view.freshest_replica_offset, q.info.replica_offset);
      }
    }
  }
  LagLimits limits{config_->max_replica_lag_s, config_->max_replica_lag_bytes};
  // Lag as of the answer, not of the question: a replica stopped for 5 s answered the INFO
  // asked just before the stop with the offset it had then, and judged as of the question it
  // looked current; it served reads 1.6-4.6 s old while it worked through its backlog.
  ReplicaVerdict v = JudgeReplica(info, view, limits, p.info_answered_ms, b.qualified());
  b.lag_bytes = v.lag_bytes;
  b.lag_seconds = v.lag_seconds;
  bool changed = b.SetReplicationState(p.info_epoch, v.qualified, info.replica_offset);
  LogFields f{{"backend", b.name()}, {"role", "replica"}};
  if (changed && v.qualified) {
    LogFields e{{"event", "replica_serves_reads"}};
    Log().info("replica {} serves reads (offset {}, {} bytes and {:.3g}s behind the primary)",
               b.name(), info.replica_offset, v.lag_bytes < 0 ? 0 : v.lag_bytes,
               v.lag_seconds < 0 ? 0.0 : v.lag_seconds);
  } else if (changed ||
             (!v.qualified && v.reason != b.not_serving_reason && b.not_serving_reason.empty())) {
    LogFields e{{"event", "replica_no_reads"}, {"reason", v.reason}};
    Log().warn("replica {} gets no reads: {}", b.name(), v.reason);
  } else if (!v.qualified && v.reason != b.not_serving_reason) {
    Log().debug("replica {} still gets no reads: {}", b.name(), v.reason);
  }
  b.not_serving_reason = v.reason;
}

void ReplicationMonitor::ApplySentinelView(const Endpoint& master,
                                           const std::vector<Endpoint>& replicas) {
  std::string listed = "listed by " + Source();
  Backend* m = ApplyView(master, replicas, listed.c_str());
  if (m == nullptr) return;
  if (m != sentinel_master_) {
    Log().info("{} {} as the primary", SourceNames(), m->name());
    sentinel_master_ = m;
  }
  Backend* primary = group_.primary();
  if (primary != nullptr && primary != m && primary->qualified()) {
    // Writes stop at once: the Sentinels (or the cluster) have promoted another node.
    primary->Disqualify();
    primary->set_last_error(SourceNames() + " " + m->name() + " as the primary");
    Log().warn("primary {} gets no writes: {} names {}", primary->name(), Source(), m->name());
  }
  SwitchOrAsk(m, Named().c_str());
}

}  // namespace kp
