// ClusterMonitor: the proxy's view of a Redis Cluster (config `cluster_nodes`). It asks one
// reachable node for the slot map (CLUSTER SHARDS; CLUSTER SLOTS before Redis 7) at start, every
// second, and soon after a worker asks for it (a MOVED, a lost shard primary), and hands each shard
// to the ReplicationMonitor of its group: the same path as a Sentinel's view, so a promoted replica
// takes the shard's writes only once it confirms the role itself, and each shard's replicas
// are qualified for reads like any others. Then it points each slot at its shard's group.
#pragma once

#include <uv.h>

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"
#include "proxy/control_conn.h"
#include "proxy/topology.h"

struct redisReply;

namespace kp {

class ReplicationMonitor;
class SlotMap;

class ClusterMonitor {
 public:
  ClusterMonitor(uv_loop_t* loop, std::shared_ptr<const Config> config, Topology& topology);
  ~ClusterMonitor();
  void Start();
  void Stop();
  void Reconfigure(std::shared_ptr<const Config> config);
  void SetTls(std::shared_ptr<const TlsContext> tls);

  // Every slot is served by a group whose primary has confirmed its role.
  bool Ready() const;
  // A slot map has been read and every slot has a shard (primaries may be failing over).
  bool Covered() const { return have_map_ && unassigned_ == 0; }
  // Prometheus lines (shards, slot map state and refreshes, redirections) and /readyz notes.
  std::string Metrics() const;
  std::string ReadyNotes() const;

 private:
  void OnTick();
  void Ask();
  void OnLost(const std::string& why);
  static void OnSlots(ControlConn* conn, redisReply* reply, void* privdata);
  void Apply(const SlotMap& map);
  // Every group that has had a shard has a confirmed primary.
  bool AllPrimariesServing() const;
  // The nodes to ask, in order: those of the current map that are up, then the seeds.
  std::vector<Endpoint> Candidates() const;

  uv_loop_t* loop_;
  std::shared_ptr<const Config> owned_config_;
  const Config* config_ = nullptr;
  std::shared_ptr<const TlsContext> tls_;
  Topology& topology_;
  std::vector<std::unique_ptr<ReplicationMonitor>> monitors_;  // by group id
  std::vector<bool> group_used_;                               // a shard has been given the group
  std::vector<bool> serving_;  // groups with a shard in the last map
  std::unique_ptr<ControlConn> conn_;
  std::vector<std::unique_ptr<ControlConn>> graveyard_;  // failed, deleted at the next tick
  uv_timer_t timer_;
  uv_async_t async_;
  bool running_ = false;
  bool asking_ = false;
  bool have_map_ = false;
  bool use_slots_ = false;  // the nodes predate CLUSTER SHARDS
  uint64_t asked_ms_ = 0;
  uint64_t answered_ms_ = 0;
  size_t next_ = 0;  // the candidate to ask next when the current node fails
  std::string last_error_;
  size_t shards_ = 0;
  size_t unassigned_ = 0;
};

}  // namespace kp
