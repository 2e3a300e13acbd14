// AdminServer: the operator's HTTP endpoint on the main loop (admin_listen): /metrics
// (Prometheus text), /healthz (the process is alive), /readyz (it can serve: not draining and
// at least one backend up). Minimal HTTP/1.x: one GET per connection, then close.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "proxy/backend.h"
#include "proxy/stats.h"
#include "proxy/topology.h"

namespace kp {

class AdminServer {
 public:
  // `stats` returns every worker's counters; read from the main thread with relaxed loads.
  AdminServer(uv_loop_t* loop, const Topology& topology,
              std::function<std::vector<const WorkerStats*>()> stats,
              std::function<size_t()> clients);
  // Returns false (and logs) when the address cannot be bound.
  bool Start(const std::string& host_port);
  void Stop();
  void SetDraining() { draining_ = true; }
  // The proxy's own view as JSON, served at /info.
  void SetInfo(std::function<std::string()> json) { info_ = std::move(json); }
  // More from the control plane (Sentinel reachability): Prometheus lines for /metrics and
  // lines for the /readyz body.
  void SetExtras(std::function<std::string()> metrics, std::function<std::string()> notes) {
    extra_metrics_ = std::move(metrics);
    notes_ = std::move(notes);
  }

  // Redis Cluster: false while some hash slot has no shard (no slot map yet, or the cluster
  // does not cover it): /readyz then answers 503, as some keys cannot be served at all.
  void SetCovered(std::function<bool()> covered) { covered_ = std::move(covered); }

  std::string Metrics() const;

 private:
  struct Conn;
  void OnConnection();
  // Closes once and forgets the connection; deleted in libuv's close callback.
  static void CloseConn(Conn* c);
  std::string Respond(const std::string& request_head) const;

  uv_loop_t* loop_;
  const Topology& topology_;
  // Every node of every group (all shards with Redis Cluster).
  template <typename Fn>
  void ForEachNode(Fn fn) const {
    for (size_t g = 0; g < topology_.groups(); ++g) {
      const BackendGroup& group = *topology_.group(g);
      for (size_t i = 0; i < group.size(); ++i) fn(*group.node(i));
    }
  }
  // The label naming a node, with its shard under Redis Cluster.
  std::string NodeLabels(const Backend& b) const;
  std::function<std::vector<const WorkerStats*>()> stats_;
  std::function<size_t()> clients_;
  std::function<std::string()> extra_metrics_;
  std::function<std::string()> notes_;
  std::function<bool()> covered_;
  std::function<std::string()> info_;
  uv_tcp_t listener_;
  uv_timer_t sweep_;  // closes admin connections not done within their time
  std::unordered_set<Conn*> conns_;
  uint64_t accepted_ = 0;
  bool listening_ = false;
  bool draining_ = false;
};

}  // namespace kp
