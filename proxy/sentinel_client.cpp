// SentinelClient: discovery queries, event subscriptions and Sentinel reachability.
#include "proxy/sentinel_client.h"

#include <arpa/inet.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <cstdlib>

#include "common/logging.h"
#include "proxy/hiredis_reply.h"
#include "proxy/replication_monitor.h"

namespace kp {

namespace {

constexpr uint64_t kTickMs = 100;
// How often the master and replicas are asked for when no event says something changed.
constexpr uint64_t kRefreshMs = 1000;
// A discovered Sentinel nobody has named for this long is dropped: SENTINEL RESET, or a
// Sentinel moved elsewhere.
constexpr uint64_t kForgetMs = 60000;
// A discovered Sentinel that cannot be reached is tried again at most this often (one that
// is down stays listed by the others until they are reset).
constexpr uint64_t kRetryMs = 1000;

bool IsIpLiteral(const std::string& host) {
  unsigned char addr[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host.c_str(), addr) == 1 ||
         inet_pton(AF_INET6, host.c_str(), addr) == 1;
}

bool SameSentinel(const Endpoint& a, const Endpoint& b) {
  return a.port == b.port &&
         (a.host == b.host || (IsLoopbackHost(a.host) && IsLoopbackHost(b.host)));
}

bool ToPort(std::string_view s, uint16_t* port) {
  if (s.empty() || s.size() > 5) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v == 0 || v > 65535) return false;
  *port = static_cast<uint16_t>(v);
  return true;
}

// The words of an event's payload, split at single spaces.
std::vector<std::string_view> Words(std::string_view payload) {
  std::vector<std::string_view> f;
  size_t pos = 0;
  while (pos <= payload.size()) {
    size_t sp = payload.find(' ', pos);
    if (sp == std::string_view::npos) sp = payload.size();
    f.push_back(payload.substr(pos, sp - pos));
    pos = sp + 1;
  }
  return f;
}

// Whether `text` holds `word` delimited by spaces (or the ends).
bool HasWord(std::string_view text, std::string_view word) {
  size_t pos = 0;
  while ((pos = text.find(word, pos)) != std::string_view::npos) {
    bool start = pos == 0 || text[pos - 1] == ' ';
    bool end = pos + word.size() == text.size() || text[pos + word.size()] == ' ';
    if (start && end) return true;
    pos += word.size();
  }
  return false;
}

}  // namespace

SentinelClient::SentinelClient(uv_loop_t* loop, std::shared_ptr<const Config> config,
                               ReplicationMonitor& monitor)
    : loop_(loop), monitor_(monitor) {
  query_.owner = this;
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
  SetConfig(std::move(config));
}

void SentinelClient::SetConfig(std::shared_ptr<const Config> config) {
  owned_config_ = std::move(config);
  config_ = owned_config_.get();
  uint64_t timeout_ms = static_cast<uint64_t>(config_->timeout_s * 1000.0 + 0.5);
  connect_timeout_ms_ = std::max<uint64_t>(std::min<uint64_t>(timeout_ms, 1000), 100);
  for (auto& s : sentinels_) {
    if (s->cmd) s->cmd->Close();
    s->sub->Close();
  }
  sentinels_.clear();
  asking_ = false;
  next_ = 0;
  links_made_ms_ = uv_now(loop_);
  for (const Endpoint& ep : config_->sentinels) AddSentinel(ep, false, "");
}

SentinelClient::Sentinel& SentinelClient::AddSentinel(const Endpoint& ep, bool discovered,
                                                      std::string runid) {
  auto s = std::make_unique<Sentinel>();
  Sentinel* raw = s.get();
  s->owner = this;
  s->endpoint = ep;
  s->discovered = discovered;
  s->runid = std::move(runid);
  s->seen_ms = uv_now(loop_);
  if (!discovered) {
    s->cmd = std::make_unique<ControlConn>(
        loop_, ep, config_->sentinel_username, config_->sentinel_password,
        [raw](const std::string& why) { raw->owner->OnLost(*raw, false, why); });
    s->cmd->SetTls(tls_, config_->backend_tls_server_name);
  }
  MakeSub(*raw);
  sentinels_.push_back(std::move(s));
  return *raw;
}

void SentinelClient::MakeSub(Sentinel& s) {
  Sentinel* raw = &s;
  if (s.sub) s.sub->Close();
  s.sub = std::make_unique<ControlConn>(
      loop_, s.endpoint, config_->sentinel_username, config_->sentinel_password,
      [raw](const std::string& why) { raw->owner->OnLost(*raw, true, why); });
  s.sub->SetTls(tls_, config_->backend_tls_server_name);
  s.subscribed = false;
  s.verifying = false;
  s.impostor = false;
  s.next_connect_ms = 0;
}

SentinelClient::Sentinel* SentinelClient::FindSentinel(const Endpoint& ep,
                                                       std::string_view runid) const {
  for (const auto& s : sentinels_) {
    if (SameSentinel(s->endpoint, ep) || (!runid.empty() && s->runid == runid)) return s.get();
  }
  return nullptr;
}

void SentinelClient::ForgetStale(uint64_t now) {
  // Only discovered ones (after the configured ones) go: query_ and next_ are not theirs.
  for (size_t i = configured(); i < sentinels_.size();) {
    Sentinel& s = *sentinels_[i];
    bool configured_twice = false;  // a configured one, named by its host name there
    for (size_t k = 0; k < configured() && !configured_twice; ++k) {
      configured_twice = !s.runid.empty() && sentinels_[k]->runid == s.runid;
    }
    if (!configured_twice && now - s.seen_ms < kForgetMs) {
      ++i;
      continue;
    }
    if (!configured_twice) {
      Log().info("Sentinel {} is no longer named by the Sentinels; not followed any more",
                 s.endpoint.ToString());
    }
    s.sub->Close();
    sentinels_.erase(sentinels_.begin() + static_cast<std::ptrdiff_t>(i));
  }
}

bool SentinelClient::SubscribeEvents(Sentinel& s) {
  // Every event that can mean a new master or a replica coming or going.
  return s.sub->Subscribe(OnEvent, &s,
                          "SUBSCRIBE +switch-master +sdown -sdown +odown -odown +slave "
                          "+role-change +convert-to-slave +failover-end +reboot +selected-slave "
                          "-failover-abort-slave-timeout");
}

void SentinelClient::SetTls(std::shared_ptr<const TlsContext> tls) {
  tls_ = std::move(tls);
  for (auto& s : sentinels_) {
    if (s->cmd) s->cmd->SetTls(tls_, config_->backend_tls_server_name);
    s->sub->SetTls(tls_, config_->backend_tls_server_name);
  }
}

void SentinelClient::Reconfigure(std::shared_ptr<const Config> config) {
  const Config& c = *config;
  bool links = c.sentinels != config_->sentinels || c.sentinel_master != config_->sentinel_master ||
               c.sentinel_username != config_->sentinel_username ||
               c.sentinel_password != config_->sentinel_password;
  if (!links) {
    owned_config_ = std::move(config);
    config_ = owned_config_.get();
    return;
  }
  // New Sentinels (or master name, or credentials): new links; the topology known so far
  // stays in force until they answer.
  SetConfig(std::move(config));
  ask_again_ = true;
}

SentinelClient::~SentinelClient() = default;

void SentinelClient::Start() {
  uv_timer_start(
      &timer_, [](uv_timer_t* t) { static_cast<SentinelClient*>(t->data)->OnTick(); }, 0, kTickMs);
}

void SentinelClient::Stop() {
  uv_timer_stop(&timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
  for (auto& s : sentinels_) {
    if (s->cmd) s->cmd->Close();
    s->sub->Close();
  }
}

void SentinelClient::OnTick() {
  uint64_t now = uv_now(loop_);
  // Discovered Sentinels named by host name are looked up one at a time: a lookup holds one
  // of libuv's few resolver threads until DNS answers, and backends' lookups share them.
  bool looking_up = false;
  for (size_t i = configured(); i < sentinels_.size(); ++i) {
    const Sentinel& d = *sentinels_[i];
    if (d.sub->open() && !d.sub->established() && !IsIpLiteral(d.endpoint.host)) {
      looking_up = true;
    }
  }
  for (auto& owned : sentinels_) {
    Sentinel& s = *owned;
    if (s.cmd) {
      s.cmd->Check(now, connect_timeout_ms_);
      if (!s.cmd->open()) {
        s.id_asked = false;
        s.cmd->Connect();
      }
      if (s.lost && s.cmd->established()) {
        s.lost = false;  // connected again: reachable until a query says otherwise
        s.last_error.clear();
      }
      // Its run id tells it apart when the others list it by another address.
      if (!s.id_asked && s.cmd->established()) {
        s.id_asked = s.cmd->Command(OnOwnId, &s, "SENTINEL MYID");
      }
    }
    s.sub->Check(now, connect_timeout_ms_);
    if (!s.sub->open()) {
      s.subscribed = false;
      s.verifying = false;
      if (s.impostor) continue;
      if (s.discovered) {
        bool by_name = !IsIpLiteral(s.endpoint.host);
        if (now < s.next_connect_ms || (by_name && looking_up)) continue;
        s.next_connect_ms = now + kRetryMs;
        looking_up = looking_up || by_name;
      }
      s.sub->Connect();
    }
    if (!s.subscribed && !s.verifying && s.sub->open()) {
      if (s.discovered) {
        s.verifying = s.sub->Command(OnPeerId, &s, "SENTINEL MYID");
      } else {
        s.subscribed = SubscribeEvents(s);
      }
    }
  }
  uint64_t timeout_ms = static_cast<uint64_t>(config_->timeout_s * 1000.0 + 0.5);
  if (asking_ && now - last_ask_ms_ >= std::max<uint64_t>(timeout_ms, 1)) {
    query_.sentinel->cmd->Fail("no reply to SENTINEL within the timeout");
  }
  if (!asking_ && (ask_again_ || !have_view_ || now - last_ask_ms_ >= kRefreshMs)) Ask();
  ForgetStale(now);
  NoteReachability();
}

void SentinelClient::Ask() {
  if (asking_) {
    ask_again_ = true;
    return;
  }
  ask_again_ = false;
  size_t n = configured();  // never a discovered one (see the header)
  for (size_t k = 0; k < n; ++k) {
    Sentinel& s = *sentinels_[(next_ + k) % n];
    if (!s.cmd->established()) continue;
    query_.sentinel = &s;
    query_.have_master = false;
    const char* name = config_->sentinel_master.c_str();
    if (!s.cmd->Command(OnMasterAddr, &query_, "SENTINEL get-master-addr-by-name %s", name) ||
        !s.cmd->Command(OnReplicas, &query_, "SENTINEL replicas %s", name)) {
      continue;
    }
    // The other Sentinels: their events too (see the header). Its reply comes after the
    // query's end (OnReplicas); `s` outlives it (a connection closed drops its callbacks).
    s.cmd->Command(OnSentinels, &s, "SENTINEL sentinels %s", name);
    asking_ = true;
    last_ask_ms_ = uv_now(loop_);
    return;
  }
}

void SentinelClient::OnMasterAddr(ControlConn*, redisReply* r, void* privdata) {
  auto* q = static_cast<Query*>(privdata);
  Sentinel& s = *q->sentinel;
  uint16_t port = 0;
  if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && !ReplyString(r->element[0]).empty() &&
      ToPort(ReplyString(r->element[1]), &port)) {
    q->master = Endpoint{std::string(ReplyString(r->element[0])), port};
    q->have_master = true;
    return;
  }
  s.last_error = r->type == REDIS_REPLY_ERROR
                     ? std::string(r->str, r->len)
                     : "does not know master " + q->owner->config_->sentinel_master;
}

void SentinelClient::OnReplicas(ControlConn*, redisReply* r, void* privdata) {
  auto* q = static_cast<Query*>(privdata);
  SentinelClient& self = *q->owner;
  Sentinel& s = *q->sentinel;
  self.asking_ = false;
  size_t index = 0;
  while (self.sentinels_[index].get() != &s) ++index;
  if (!q->have_master) {
    if (s.answered) {
      Log().warn("Sentinel {}: {}", s.endpoint.ToString(), s.last_error);
    }
    s.answered = false;
    self.next_ = (index + 1) % self.configured();  // ask another one next
    self.ask_again_ = true;
    return;
  }
  std::vector<Endpoint> replicas;
  if (r->type == REDIS_REPLY_ARRAY) {
    for (size_t i = 0; i < r->elements; ++i) {
      const redisReply* e = r->element[i];
      if (e->type != REDIS_REPLY_ARRAY) continue;
      std::string_view ip;
      uint16_t port = 0;
      for (size_t k = 0; k + 1 < e->elements; k += 2) {
        std::string_view key = ReplyString(e->element[k]);
        if (key == "ip") ip = ReplyString(e->element[k + 1]);
        if (key == "port") ToPort(ReplyString(e->element[k + 1]), &port);
      }
      if (!ip.empty() && port != 0) replicas.push_back(Endpoint{std::string(ip), port});
    }
  }
  s.answered = true;
  s.last_error.clear();
  self.next_ = index;  // keep asking the one that answers
  self.have_view_ = true;
  self.replicas_ = replicas;
  self.monitor_.ApplySentinelView(q->master, replicas);
  if (self.ask_again_) self.Ask();
}

void SentinelClient::OnSentinels(ControlConn*, redisReply* r, void* privdata) {
  auto* from = static_cast<Sentinel*>(privdata);
  SentinelClient& self = *from->owner;
  if (r->type != REDIS_REPLY_ARRAY) {
    // An ACL that denies SENTINEL SENTINELS: only the configured Sentinels' events are
    // heard, and a failover another one leads is not fenced (see README).
    if (!self.discovery_refused_logged_) {
      Log().warn(
          "Sentinel {} refused SENTINEL SENTINELS ({}): only the configured Sentinels "
          "are followed",
          from->endpoint.ToString(),
          r->type == REDIS_REPLY_ERROR ? std::string(r->str, r->len) : "not a list");
      self.discovery_refused_logged_ = true;
    }
    return;
  }
  uint64_t now = uv_now(self.loop_);
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* e = r->element[i];
    if (e->type != REDIS_REPLY_ARRAY) continue;
    std::string_view ip, runid, flags;
    uint16_t port = 0;
    for (size_t k = 0; k + 1 < e->elements; k += 2) {
      std::string_view key = ReplyString(e->element[k]);
      std::string_view value = ReplyString(e->element[k + 1]);
      if (key == "ip") ip = value;
      if (key == "port") ToPort(value, &port);
      if (key == "runid") runid = value;
      if (key == "flags") flags = value;
    }
    if (ip.empty() || port == 0) continue;
    Endpoint ep{std::string(ip), port};
    if (Sentinel* known = self.FindSentinel(ep, runid); known != nullptr) {
      // Still named (even if the one naming it cannot reach it: the proxy may).
      known->seen_ms = now;
      if (!known->discovered) continue;
      if (!SameSentinel(known->endpoint, ep)) {
        // The same Sentinel at a new address (a pod restarted keeping its id): followed
        // there, checked again.
        Log().info("Sentinel {} is now at {}", known->endpoint.ToString(), ep.ToString());
        known->endpoint = ep;
        self.MakeSub(*known);
      } else if (known->runid != runid && !runid.empty()) {
        known->runid = std::string(runid);  // another Sentinel there now: checked again
        self.MakeSub(*known);
      }
      continue;
    }
    // A new one the others find down is not one to wait for (and would be retried for
    // nothing).
    if (flags.find("s_down") != std::string_view::npos ||
        flags.find("o_down") != std::string_view::npos ||
        flags.find("disconnected") != std::string_view::npos) {
      continue;
    }
    size_t discovered = self.sentinels_.size() - self.configured();
    if (discovered >= kMaxDiscovered) {
      Log().debug("Sentinel {} names {}: already following {} discovered Sentinels",
                  from->endpoint.ToString(), ep.ToString(), kMaxDiscovered);
      continue;
    }
    Log().info("Sentinel {} names Sentinel {}: following its failover events too",
               from->endpoint.ToString(), ep.ToString());
    self.AddSentinel(ep, true, std::string(runid));  // subscribed from the next tick
  }
}

void SentinelClient::OnOwnId(ControlConn*, redisReply* r, void* privdata) {
  auto* s = static_cast<Sentinel*>(privdata);
  if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
    s->runid.assign(r->str, r->len);
  }
}

void SentinelClient::OnPeerId(ControlConn*, redisReply* r, void* privdata) {
  auto* s = static_cast<Sentinel*>(privdata);
  s->verifying = false;
  bool is_id = r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
  if (is_id && !s->runid.empty() && std::string_view(r->str, r->len) != s->runid) {
    // The address the others announce reaches another Sentinel from here (NAT, an address
    // reused): its events are not this deployment's.
    Log().warn("{} is not the Sentinel listed there (run id {}, listed {}): not followed",
               s->endpoint.ToString(), std::string(r->str, r->len), s->runid);
    s->impostor = true;
    s->sub->Close();
    return;
  }
  if (is_id) {
    s->subscribed = s->owner->SubscribeEvents(*s);  // the one listed
    return;
  }
  // MYID refused (a Sentinel before Redis 6.2, or an ACL): it must at least be a Sentinel.
  s->verifying = s->sub->Command(OnPeerRole, s, "ROLE");
}

void SentinelClient::OnPeerRole(ControlConn*, redisReply* r, void* privdata) {
  auto* s = static_cast<Sentinel*>(privdata);
  s->verifying = false;
  bool sentinel =
      r->type == REDIS_REPLY_ARRAY && r->elements > 0 && ReplyString(r->element[0]) == "sentinel";
  if (!sentinel) {
    Log().warn("{} does not say it is a Sentinel (SENTINEL MYID and ROLE): not followed",
               s->endpoint.ToString());
    s->impostor = true;
    s->sub->Close();
    return;
  }
  Log().info("Sentinel {} refuses SENTINEL MYID: followed as the Sentinel listed there",
             s->endpoint.ToString());
  s->subscribed = s->owner->SubscribeEvents(*s);
}

void SentinelClient::OnEvent(ControlConn*, redisReply* r, void* privdata) {
  auto* s = static_cast<Sentinel*>(privdata);
  SentinelClient& self = *s->owner;
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || ReplyString(r->element[0]) != "message")
    return;
  std::string_view channel = ReplyString(r->element[1]);
  std::string_view payload = ReplyString(r->element[2]);
  const std::string& name = self.config_->sentinel_master;
  if (!HasWord(payload, name)) return;  // another master's event
  std::vector<std::string_view> f = Words(payload);
  uint16_t port = 0, mport = 0;
  if (channel == "+switch-master" && !s->discovered) {
    // "<name> <old-ip> <old-port> <new-ip> <new-port>": act on it now (the new master
    // still confirms its role with the monitor), then ask for the replicas again.
    if (f.size() == 5 && f[0] == name && ToPort(f[4], &port)) {
      Log().info("Sentinel {}: +switch-master {}", s->endpoint.ToString(), payload);
      self.monitor_.ApplySentinelView(Endpoint{std::string(f[3]), port}, self.replicas_);
    }
  } else if (channel == "+selected-slave") {
    // "slave <ip>:<port> <ip> <port> @ <name> <master-ip> <master-port>", published by the
    // Sentinel leading a failover one tick before it promotes that replica.
    if (f.size() == 8 && f[0] == "slave" && f[4] == "@" && f[5] == name && ToPort(f[3], &port) &&
        ToPort(f[7], &mport)) {
      Log().info("Sentinel {}: +selected-slave {}", s->endpoint.ToString(), payload);
      self.monitor_.FailoverStarting(Endpoint{std::string(f[6]), mport},
                                     Endpoint{std::string(f[2]), port});
    }
  } else if (channel.rfind("-failover-abort", 0) == 0) {
    // "master <name> <ip> <port>"
    if (f.size() == 4 && f[0] == "master" && f[1] == name && ToPort(f[3], &mport)) {
      Log().info("Sentinel {}: {} {}", s->endpoint.ToString(), channel, payload);
      self.monitor_.FailoverAborted(Endpoint{std::string(f[2]), mport});
    }
  } else {
    Log().debug("Sentinel {}: {} {}", s->endpoint.ToString(), channel, payload);
  }
  self.Ask();  // the configured Sentinels say what changed
}

void SentinelClient::OnLost(Sentinel& s, bool subscription, const std::string& why) {
  if (subscription) {
    s.subscribed = false;
    return;
  }
  if (s.answered) Log().warn("Sentinel {} unreachable: {}", s.endpoint.ToString(), why);
  s.answered = false;
  s.lost = true;
  s.last_error = why;
  if (asking_ && query_.sentinel == &s) {
    asking_ = false;
    ask_again_ = true;
    size_t index = 0;
    while (sentinels_[index].get() != &s) ++index;
    next_ = (index + 1) % configured();
  }
}

bool SentinelClient::Reachable(const Sentinel& s) {
  // Connected, and its last query (if any since the connection was made) was answered; a
  // discovered one: subscribed.
  if (s.discovered) return s.subscribed && s.sub->established();
  return s.cmd->established() && s.last_error.empty();
}

void SentinelClient::NoteReachability() {
  bool any = std::any_of(sentinels_.begin(), sentinels_.begin() + configured(),
                         [](const auto& s) { return Reachable(*s); });
  // New links after a reload are given their connect time before they count as lost.
  bool connecting = uv_now(loop_) - links_made_ms_ < connect_timeout_ms_;
  if (!any && have_view_ && !none_reachable_logged_ && !connecting) {
    Log().error("no Sentinel reachable; keeping the last known topology");
    none_reachable_logged_ = true;
  } else if (any && none_reachable_logged_) {
    Log().info("a Sentinel is reachable again");
    none_reachable_logged_ = false;
  }
}

std::string SentinelClient::Metrics() const {
  std::string out =
      "# HELP kompress_sentinel_up 1 when the proxy is connected to the Sentinel and its last "
      "query was answered.\n"
      "# TYPE kompress_sentinel_up gauge\n";
  for (const auto& s : sentinels_) {
    if (s->discovered) continue;  // the ones that name the master (see the header)
    out += "kompress_sentinel_up{sentinel=\"" + s->endpoint.ToString() + "\"} " +
           (Reachable(*s) ? "1" : "0") + "\n";
  }
  return out;
}

std::string SentinelClient::ReadyNotes() const {
  size_t up = 0;
  std::string out;
  for (const auto& s : sentinels_) {
    if (s->discovered) {
      // Named by the others; only its failover events are heard (see the header).
      out += "sentinel " + s->endpoint.ToString() + " (discovered, failover events only) " +
             (s->impostor     ? "not followed: not the Sentinel listed there\n"
              : Reachable(*s) ? "subscribed\n"
                              : "not subscribed\n");
      continue;
    }
    if (Reachable(*s)) ++up;
    out += "sentinel " + s->endpoint.ToString() +
           (Reachable(*s) ? " up\n"
                          : " down" + (s->last_error.empty() ? "" : ": " + s->last_error) + "\n");
  }
  if (up == 0) {
    out += have_view_ ? "no Sentinel reachable: the last known topology is kept\n"
                      : "no Sentinel reachable yet: no topology known\n";
  }
  return out;
}

}  // namespace kp
