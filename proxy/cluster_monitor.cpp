// ClusterMonitor: slot map refreshes, shard-to-group matching, and the slot table.
#include "proxy/cluster_monitor.h"

#include <hiredis/hiredis.h>

#include <algorithm>

#include "common/logging.h"
#include "proxy/replication_monitor.h"
#include "proxy/slot_map.h"

namespace kp {

namespace {
constexpr uint64_t kTickMs = 50;
constexpr uint64_t kPeriodMs = 1000;  // a refresh at least this often
constexpr uint64_t kMinGapMs = 100;   // and at most this often when workers ask
}  // namespace

ClusterMonitor::ClusterMonitor(uv_loop_t* loop, std::shared_ptr<const Config> config,
                               Topology& topology)
    : loop_(loop), owned_config_(std::move(config)), topology_(topology) {
  config_ = owned_config_.get();
  uv_timer_init(loop_, &timer_);
  timer_.data = this;
  uv_async_init(loop_, &async_, [](uv_async_t* a) {
    auto* self = static_cast<ClusterMonitor*>(a->data);
    if (self->running_) self->OnTick();
  });
  async_.data = this;
  topology_.SetRefreshSignal(&async_);
}

ClusterMonitor::~ClusterMonitor() = default;

void ClusterMonitor::Start() {
  running_ = true;
  uv_timer_start(
      &timer_, [](uv_timer_t* t) { static_cast<ClusterMonitor*>(t->data)->OnTick(); }, 0, kTickMs);
}

void ClusterMonitor::Stop() {
  running_ = false;
  topology_.SetRefreshSignal(nullptr);
  uv_timer_stop(&timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  if (conn_) conn_->Close();
  for (auto& m : monitors_) {
    if (m) m->Stop();
  }
}

void ClusterMonitor::Reconfigure(std::shared_ptr<const Config> config) {
  owned_config_ = std::move(config);
  config_ = owned_config_.get();
  for (auto& m : monitors_) {
    if (m) m->Reconfigure(owned_config_);
  }
}

void ClusterMonitor::SetTls(std::shared_ptr<const TlsContext> tls) {
  tls_ = std::move(tls);
  for (auto& m : monitors_) {
    if (m) m->SetTls(tls_);
  }
}

std::vector<Endpoint> ClusterMonitor::Candidates() const {
  std::vector<Endpoint> out;
  auto add = [&out](const Endpoint& ep) {
    if (std::find(out.begin(), out.end(), ep) == out.end()) out.push_back(ep);
  };
  // Primaries first: they know their own slots for sure; then replicas, then the seeds.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t g = 0; g < topology_.groups(); ++g) {
      const BackendGroup& group = *topology_.group(g);
      for (size_t i = 0; i < group.size(); ++i) {
        const Backend* b = group.node(i);
        if (!b->up() || b->role() == BackendRole::kNone) continue;
        if ((pass == 0) == b->is_primary()) add(b->endpoint());
      }
    }
  }
  for (const Endpoint& ep : config_->cluster_nodes) add(ep);
  return out;
}

void ClusterMonitor::OnTick() {
  graveyard_.clear();
  uint64_t now = uv_now(loop_);
  uint64_t timeout_ms = std::max<uint64_t>(100, static_cast<uint64_t>(config_->timeout_s * 1000));
  if (conn_) conn_->Check(now, std::min<uint64_t>(timeout_ms, 1000));
  if (asking_) {
    if (conn_ && now - asked_ms_ > std::min<uint64_t>(timeout_ms, 2000)) {
      conn_->Fail("no answer to the slot map query in time");
    }
    return;
  }
  bool wanted = now - asked_ms_ >= kMinGapMs && topology_.TakeRefreshRequest();
  // While a shard has no confirmed primary (failing over), its promotion is looked for
  // every few ticks rather than every second.
  uint64_t period = have_map_ && !AllPrimariesServing() ? kMinGapMs * 2 : kPeriodMs;
  if (wanted || !have_map_ || now - asked_ms_ >= period) Ask();
}

void ClusterMonitor::Ask() {
  std::vector<Endpoint> nodes = Candidates();
  if (nodes.empty()) return;
  if (!conn_ || std::find(nodes.begin(), nodes.end(), conn_->endpoint()) == nodes.end()) {
    const Endpoint& ep = nodes[next_ % nodes.size()];
    if (conn_) conn_->Close();
    conn_ = std::make_unique<ControlConn>(loop_, ep, config_->backend_username,
                                          config_->backend_password,
                                          [this](const std::string& why) { OnLost(why); });
    conn_->SetTls(tls_, config_->backend_tls_server_name);
  }
  if (!conn_->open()) conn_->Connect();
  // Connect may fail at once (unreachable, out of descriptors): OnLost took the connection.
  if (!conn_) return;
  // While the name is being resolved nothing can be queued: asked again next tick.
  if (!conn_->Command(&ClusterMonitor::OnSlots, this,
                      use_slots_ ? "CLUSTER SLOTS" : "CLUSTER SHARDS")) {
    return;
  }
  asking_ = true;
  asked_ms_ = uv_now(loop_);
}

void ClusterMonitor::OnLost(const std::string& why) {
  topology_.stats().refresh_failures++;
  std::string what = conn_ ? conn_->endpoint().ToString() : std::string("?");
  if (last_error_.empty() || !have_map_) {
    Log().warn("cluster: cannot read the slot map from {}: {}", what, why);
  }
  last_error_ = what + ": " + why;
  asking_ = false;
  asked_ms_ = 0;  // another node, at the next tick
  next_++;
  // Deleted at the next tick: this runs inside the connection's own callback.
  if (conn_) graveyard_.push_back(std::move(conn_));
}

void ClusterMonitor::OnSlots(ControlConn*, redisReply* reply, void* privdata) {
  auto* self = static_cast<ClusterMonitor*>(privdata);
  self->asking_ = false;
  SlotMap map;
  std::string error;
  if (reply->type == REDIS_REPLY_ERROR && !self->use_slots_ &&
      std::string_view(reply->str, reply->len).find("nknown") != std::string_view::npos) {
    // Before Redis 7: CLUSTER SLOTS says the same, less of it (no shard without slots).
    Log().info("cluster: {} does not know CLUSTER SHARDS ({}); using CLUSTER SLOTS",
               self->conn_->endpoint().ToString(), std::string(reply->str, reply->len));
    self->use_slots_ = true;
    self->asked_ms_ = 0;
    return;
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    error = std::string(reply->str, reply->len);
  } else if (const std::string& asked = self->conn_->endpoint().host;
             self->use_slots_
                 ? !map.FromClusterSlots(reply, asked, &error)
                 : !map.FromClusterShards(reply, self->config_->backend_tls, asked, &error)) {
    error = "not a slot map: " + error;
  }
  if (!error.empty()) {
    self->topology_.stats().refresh_failures++;
    std::string what = self->conn_->endpoint().ToString();
    if (self->last_error_.empty())
      Log().warn("cluster: {} answered CLUSTER SLOTS with {}", what, error);
    self->last_error_ = what + ": " + error;
    self->conn_->Close();
    self->graveyard_.push_back(std::move(self->conn_));
    self->next_++;
    return;
  }
  if (!self->last_error_.empty()) {
    Log().info("cluster: slot map read again from {}", self->conn_->endpoint().ToString());
    self->last_error_.clear();
  }
  self->answered_ms_ = uv_now(self->loop_);
  self->Apply(map);
}

void ClusterMonitor::Apply(const SlotMap& map) {
  topology_.stats().refreshes++;
  std::vector<uint16_t> group_of(map.shards().size(), Topology::kNoGroup);
  std::vector<bool> taken(Topology::kMaxGroups, false);
  // Shards serving slots first: they keep the groups they had; a shard without slots (a
  // node about to be filled) must not take one of theirs.
  std::vector<size_t> order;
  for (size_t s = 0; s < map.shards().size(); ++s) {
    if (map.shards()[s].slots > 0) order.push_back(s);
  }
  for (size_t s = 0; s < map.shards().size(); ++s) {
    if (map.shards()[s].slots == 0) order.push_back(s);
  }
  // Nodes in the topology before this map (see the slotless shards below).
  std::vector<Endpoint> known;
  for (size_t i = 0; i < topology_.groups(); ++i) {
    const BackendGroup& grp = *topology_.group(i);
    for (size_t n = 0; n < grp.size(); ++n) {
      if (grp.node(n)->role() != BackendRole::kNone) known.push_back(grp.node(n)->endpoint());
    }
  }
  for (size_t s : order) {
    const ClusterShard& shard = map.shards()[s];
    // The group that already holds one of the shard's nodes: after a failover the promoted
    // replica is in its old primary's group, so the shard keeps its group (and its
    // connections, its read-your-writes progress).
    BackendGroup* g = nullptr;
    bool served_elsewhere = false;  // one of its nodes is in a shard placed already
    std::vector<const Endpoint*> nodes{&shard.primary};
    for (const Endpoint& r : shard.replicas) nodes.push_back(&r);
    for (int pass = 0; pass < 2 && g == nullptr; ++pass) {
      for (const Endpoint* ep : nodes) {
        for (size_t i = 0; i < topology_.groups() && g == nullptr; ++i) {
          Backend* b = topology_.group(i)->Find(*ep);
          // (Whatever its role there now: the shard placed just before may have left it out,
          // the same map listing it alone. But one that had left before this map, reset and
          // added as a new empty master, is a shard of its own.)
          if (b != nullptr && taken[i] &&
              std::find(known.begin(), known.end(), *ep) != known.end()) {
            served_elsewhere = true;
          }
          if (b == nullptr || taken[i]) continue;
          // First pass: a node still in the group's topology; second: any it ever had.
          if (pass == 0 && b->role() == BackendRole::kNone) continue;
          g = topology_.group(i);
        }
        if (g != nullptr) break;
      }
    }
    if (g == nullptr && shard.slots == 0 && served_elsewhere) {
      // A slotless "shard" of a node that is in a real one: the map caught mid-failover
      // (the demoted primary listed on its own for a moment). A group of its own would
      // stay, probing that node a second time and showing it as a primary, one more at
      // every CLUSTER FAILOVER.
      continue;
    }
    if (g == nullptr) {
      for (size_t i = 0; i < topology_.groups(); ++i) {
        if (i >= group_used_.size() || !group_used_[i]) {
          if (!taken[i]) g = topology_.group(i);
          break;
        }
      }
    }
    if (g == nullptr) g = topology_.AddGroup();
    if (g == nullptr) {
      Log().error("cluster: more shards than the proxy tracks ({}); shard of {} ignored",
                  Topology::kMaxGroups, shard.primary.ToString());
      continue;
    }
    size_t id = g->id();
    taken[id] = true;
    if (group_used_.size() <= id) group_used_.resize(id + 1, false);
    if (!group_used_[id]) {
      group_used_[id] = true;
      Log().info("cluster: shard {} ({} replicas) served as group {}", shard.primary.ToString(),
                 shard.replicas.size(), id);
    }
    if (monitors_.size() <= id) monitors_.resize(id + 1);
    if (!monitors_[id]) {
      monitors_[id] = std::make_unique<ReplicationMonitor>(loop_, owned_config_, *g);
      monitors_[id]->SetTls(tls_);
      if (running_) monitors_[id]->Start();
    }
    monitors_[id]->ApplySentinelView(shard.primary, shard.replicas);
    group_of[s] = static_cast<uint16_t>(id);
  }
  size_t changed = 0, unassigned = 0;
  for (uint32_t slot = 0; slot < kClusterSlots; ++slot) {
    uint16_t shard = map.ShardOf(static_cast<uint16_t>(slot));
    uint16_t g = shard == SlotMap::kUnassigned ? Topology::kNoGroup : group_of[shard];
    if (g == Topology::kNoGroup) ++unassigned;
    if (topology_.AssignSlot(static_cast<uint16_t>(slot), g)) ++changed;
  }
  if (changed > 0) {
    if (have_map_) {
      topology_.stats().slot_changes += changed;
      Log().info("cluster: {} slots changed shard ({} shards, {} slots unassigned)", changed,
                 map.shards().size(), unassigned);
    } else {
      Log().info("cluster: slot map read: {} shards, {} slots unassigned", map.shards().size(),
                 unassigned);
    }
  }
  shards_ = map.shards().size();
  unassigned_ = unassigned;
  serving_ = taken;
  have_map_ = true;
}

bool ClusterMonitor::AllPrimariesServing() const {
  for (size_t g = 0; g < topology_.groups(); ++g) {
    if (g >= serving_.size() || !serving_[g]) continue;
    const Backend* p = topology_.group(g)->primary();
    if (p == nullptr || !p->serves_writes()) return false;
  }
  return true;
}

bool ClusterMonitor::Ready() const {
  if (!have_map_ || unassigned_ > 0) return false;
  for (uint32_t slot = 0; slot < kClusterSlots; ++slot) {
    uint16_t g = topology_.GroupOfSlot(static_cast<uint16_t>(slot));
    if (g == Topology::kNoGroup) return false;
    const Backend* p = topology_.group(g)->primary();
    if (p == nullptr || !p->serves_writes()) return false;
  }
  return true;
}

std::string ClusterMonitor::Metrics() const {
  const ClusterStats& st = topology_.stats();
  std::string out;
  auto line = [&out](const char* help, const char* type, const std::string& name, uint64_t v) {
    out += std::string("# HELP ") + name.substr(0, name.find('{')) + " " + help + "\n";
    out += "# TYPE " + name.substr(0, name.find('{')) + " " + type + "\n";
    out += name + " " + std::to_string(v) + "\n";
  };
  line("Shards in the cluster's slot map.", "gauge", "kompress_cluster_shards", shards_);
  line("Hash slots no shard serves.", "gauge", "kompress_cluster_slots_unassigned", unassigned_);
  line("Slot maps read and applied.", "counter", "kompress_cluster_slot_map_refreshes_total",
       st.refreshes.load());
  line("Slot map reads that failed (node unreachable or no map).", "counter",
       "kompress_cluster_slot_map_failures_total", st.refresh_failures.load());
  line("Slots that moved to another shard.", "counter", "kompress_cluster_slot_changes_total",
       st.slot_changes.load());
  out +=
      "# HELP kompress_cluster_redirections_total MOVED and ASK redirections followed for "
      "clients.\n# TYPE kompress_cluster_redirections_total counter\n";
  out += "kompress_cluster_redirections_total{kind=\"moved\"} " + std::to_string(st.moved.load()) +
         "\n";
  out +=
      "kompress_cluster_redirections_total{kind=\"ask\"} " + std::to_string(st.ask.load()) + "\n";
  return out;
}

std::string ClusterMonitor::ReadyNotes() const {
  if (!have_map_)
    return "cluster: no slot map read yet" +
           (last_error_.empty() ? std::string() : " (" + last_error_ + ")") + "\n";
  if (unassigned_ > 0) return "cluster: " + std::to_string(unassigned_) + " slots unassigned\n";
  return std::string();
}

}  // namespace kp
