// SlotMap: which shard serves each of Redis Cluster's 16384 hash slots, and each shard's
// primary and replicas, as the cluster describes itself (CLUSTER SHARDS, or CLUSTER SLOTS
// before Redis 7). ClusterMonitor turns it into one BackendGroup per shard.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/cluster_slot.h"
#include "config/config.h"

struct redisReply;

namespace kp {

struct ClusterShard {
  Endpoint primary;
  std::string primary_id;
  std::vector<Endpoint> replicas;
  size_t slots = 0;  // how many slots it serves (0: a node being filled, say)
};

class SlotMap {
 public:
  static constexpr uint16_t kUnassigned = 0xFFFF;

  // From a CLUSTER SLOTS reply. False with *error when it is not one (the map is unchanged).
  // Ranges of one primary become one shard, whatever order they come in. `asked`: the host
  // of the node that answered, for nodes the reply gives no address of ("" or null).
  bool FromClusterSlots(const redisReply* reply, std::string_view asked, std::string* error);
  // From a CLUSTER SHARDS reply (Redis 7): shards without slots are kept (a node being
  // filled by a reshard is known before it owns anything), replicas that are not online are
  // left out. `tls`: nodes' tls-port where given.
  bool FromClusterShards(const redisReply* reply, bool tls, std::string_view asked,
                         std::string* error);

  const std::vector<ClusterShard>& shards() const { return shards_; }
  // The shard serving `slot`, or kUnassigned (no node serves it: CLUSTERDOWN territory).
  uint16_t ShardOf(uint16_t slot) const { return slots_[slot]; }
  uint16_t ShardOfKey(std::string_view key) const { return slots_[KeySlot(key)]; }
  // Slots no shard serves.
  size_t unassigned() const;

 private:
  std::array<uint16_t, kClusterSlots> slots_ = MakeUnassigned();
  std::vector<ClusterShard> shards_;

  static std::array<uint16_t, kClusterSlots> MakeUnassigned() {
    std::array<uint16_t, kClusterSlots> a{};
    a.fill(kUnassigned);
    return a;
  }
};

}  // namespace kp
