// ProxyInfo: one snapshot of atomics, printed as INFO-style text or as JSON.
#include "proxy/proxy_info.h"

#include <cstdio>

#include "proxy/worker.h"

#ifndef KP_VERSION
#define KP_VERSION "dev"
#endif

namespace kp {

struct ProxyInfo::Snapshot {
  struct Node {
    std::string addr;
    const char* role;
    bool up, serves;
    int64_t offset;
    size_t shard;
  };
  uint64_t uptime_s = 0;
  std::string primary;
  bool primary_confirmed = false;
  std::vector<Node> nodes;
  uint64_t clients = 0;
  uint64_t topology_changes = 0;
  std::vector<std::pair<const char*, uint64_t>> counters;
};

ProxyInfo::ProxyInfo(const Topology& topology, const std::vector<std::unique_ptr<Worker>>& workers,
                     std::string listen, std::string config_source)
    : topology_(topology),
      workers_(workers),
      listen_(std::move(listen)),
      config_source_(std::move(config_source)),
      started_ms_(MonotonicMs()) {}

ProxyInfo::Snapshot ProxyInfo::Take() const {
  Snapshot s;
  s.uptime_s = (MonotonicMs() - started_ms_) / 1000;
  if (const Backend* p = topology_.main().primary()) {
    s.primary = p->name();
    s.primary_confirmed = p->serves_writes();
  }
  for (size_t g = 0; g < topology_.groups(); ++g) {
    const BackendGroup& group = *topology_.group(g);
    for (size_t i = 0; i < group.size(); ++i) {
      const Backend& b = *group.node(i);
      if (b.role() == BackendRole::kNone) continue;
      bool primary = b.is_primary();
      s.nodes.push_back({b.name(), primary ? "primary" : "replica", b.up(),
                         primary ? b.serves_writes() : b.serves_reads(), b.offset(), g});
    }
    s.topology_changes += group.topology_changes();
  }
  auto sum = [&](auto field) {
    uint64_t v = 0;
    for (const auto& w : workers_) v += (w->stats().*field).value();
    return v;
  };
  for (const auto& w : workers_) s.clients += w->client_count();
  s.counters = {{"requests_received", sum(&WorkerStats::requests)},
                {"reads_replica", sum(&WorkerStats::reads_replica)},
                {"reads_primary", sum(&WorkerStats::reads_primary)},
                {"reads_primary_read_your_writes", sum(&WorkerStats::reads_primary_ryw)},
                {"writes", sum(&WorkerStats::writes)},
                {"failovers", sum(&WorkerStats::failovers)},
                {"resent_behind_slow_readers", sum(&WorkerStats::resent)},
                {"pinned_requests", sum(&WorkerStats::pinned_requests)},
                {"writes_held_for_reads", sum(&WorkerStats::fenced_writes)},
                {"errors", sum(&WorkerStats::errors)},
                {"protocol_errors", sum(&WorkerStats::protocol_errors)},
                {"tls_failures", sum(&WorkerStats::tls_failures)},
                {"connections_accepted", sum(&WorkerStats::connections_accepted)},
                {"reloads_ok", reloads_ok.load(std::memory_order_relaxed)},
                {"reloads_failed", reloads_failed.load(std::memory_order_relaxed)}};
  return s;
}

std::string ProxyInfo::Text() const {
  Snapshot s = Take();
  std::string out = "# Proxy\r\nversion:" KP_VERSION "\r\n";
  out += "uptime_in_seconds:" + std::to_string(s.uptime_s) + "\r\n";
  out += "listen:" + listen_ + "\r\n";
  out += "workers:" + std::to_string(workers_.size()) + "\r\n";
  out += "config:" + config_source_ + "\r\n";
  out += "\r\n# Topology\r\nprimary:" + (s.primary.empty() ? "none" : s.primary) + "\r\n";
  out += "primary_confirmed:" + std::to_string(s.primary_confirmed ? 1 : 0) + "\r\n";
  out += "topology_changes:" + std::to_string(s.topology_changes) + "\r\n";
  for (size_t i = 0; i < s.nodes.size(); ++i) {
    const auto& n = s.nodes[i];
    out += "node" + std::to_string(i) + ":addr=" + n.addr + ",role=" + n.role +
           ",up=" + (n.up ? "1" : "0") + ",serving=" + (n.serves ? "1" : "0") +
           ",offset=" + std::to_string(n.offset) +
           (topology_.cluster() ? ",shard=" + std::to_string(n.shard) : std::string()) + "\r\n";
  }
  if (topology_.cluster()) {
    const ClusterStats& c = topology_.stats();
    size_t unassigned = 0;
    for (uint32_t slot = 0; slot < kClusterSlots; ++slot) {
      if (topology_.GroupOfSlot(static_cast<uint16_t>(slot)) == Topology::kNoGroup) ++unassigned;
    }
    out += "\r\n# Cluster\r\nslots_unassigned:" + std::to_string(unassigned) + "\r\n";
    out += "slot_map_refreshes:" + std::to_string(c.refreshes.load()) + "\r\n";
    out += "slot_map_failures:" + std::to_string(c.refresh_failures.load()) + "\r\n";
    out += "slot_changes:" + std::to_string(c.slot_changes.load()) + "\r\n";
    out += "redirections_moved:" + std::to_string(c.moved.load()) + "\r\n";
    out += "redirections_ask:" + std::to_string(c.ask.load()) + "\r\n";
  }
  out += "\r\n# Clients\r\nconnected_clients:" + std::to_string(s.clients) + "\r\n";
  out += "\r\n# Stats\r\n";
  for (const auto& [k, v] : s.counters) out += std::string(k) + ":" + std::to_string(v) + "\r\n";
  return out;
}

std::string ProxyInfo::Json() const {
  Snapshot s = Take();
  auto str = [](const std::string& v) {
    std::string o = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\') o += '\\';
      o += c;
    }
    return o + "\"";
  };
  std::string out =
      "{\"version\":\"" KP_VERSION "\",\"uptime_seconds\":" + std::to_string(s.uptime_s) +
      ",\"listen\":" + str(listen_) + ",\"workers\":" + std::to_string(workers_.size()) +
      ",\"config\":" + str(config_source_) +
      ",\"primary\":" + (s.primary.empty() ? std::string("null") : str(s.primary)) +
      ",\"primary_confirmed\":" + (s.primary_confirmed ? "true" : "false") +
      ",\"topology_changes\":" + std::to_string(s.topology_changes) + ",\"nodes\":[";
  for (size_t i = 0; i < s.nodes.size(); ++i) {
    const auto& n = s.nodes[i];
    out += std::string(i ? "," : "") + "{\"addr\":" + str(n.addr) + ",\"role\":\"" + n.role +
           "\",\"up\":" + (n.up ? "true" : "false") +
           ",\"serving\":" + (n.serves ? "true" : "false") +
           ",\"offset\":" + std::to_string(n.offset) +
           (topology_.cluster() ? ",\"shard\":" + std::to_string(n.shard) : std::string()) + "}";
  }
  out += "],\"clients\":" + std::to_string(s.clients) + ",\"stats\":{";
  for (size_t i = 0; i < s.counters.size(); ++i) {
    out += std::string(i ? "," : "") + "\"" + s.counters[i].first +
           "\":" + std::to_string(s.counters[i].second);
  }
  return out + "}}\n";
}

}  // namespace kp
