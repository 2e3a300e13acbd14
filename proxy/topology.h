// Topology: every BackendGroup the proxy serves (the one primary with its replicas, or one
// group per Redis Cluster shard) and, with Redis Cluster, which group owns each hash slot.
// Groups and nodes are only ever added (workers hold pointers to them); the control plane
// (ReplicationMonitor per group, ClusterMonitor for the slots) changes roles and the slot
// table, which workers read with one relaxed atomic load per request.
#pragma once

#include <uv.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>

#include "common/cluster_slot.h"
#include "config/config.h"
#include "proxy/backend.h"

namespace kp {

// Counters the cluster control plane and the workers share (for /metrics and PROXY INFO).
struct ClusterStats {
  std::atomic<uint64_t> refreshes{0};         // slot maps applied
  std::atomic<uint64_t> refresh_failures{0};  // nodes that could not tell the map
  std::atomic<uint64_t> moved{0};             // MOVED followed
  std::atomic<uint64_t> ask{0};               // ASK followed
  std::atomic<uint64_t> slot_changes{0};      // slots that changed owner
};

class Topology {
 public:
  static constexpr size_t kMaxGroups = 256;
  static constexpr size_t kMaxNodes = 1024;  // over all groups
  static constexpr uint16_t kNoGroup = 0xFFFF;

  explicit Topology(const Config& config);

  bool cluster() const { return cluster_; }
  size_t groups() const { return ngroups_.load(std::memory_order_acquire); }
  BackendGroup* group(size_t i) const { return groups_[i].get(); }
  // Without Redis Cluster: the one group.
  BackendGroup& main() const { return *groups_[0]; }
  // The group serving `slot` now, or kNoGroup (no shard owns it).
  uint16_t GroupOfSlot(uint16_t slot) const {
    return slot_group_[slot].load(std::memory_order_relaxed);
  }
  // The node with this address in any group that has it in its topology (nullptr: none).
  Backend* FindNode(const Endpoint& ep) const;

  // Control plane only.
  BackendGroup* AddGroup();
  // Returns whether the owner changed.
  bool AssignSlot(uint16_t slot, uint16_t group) {
    return slot_group_[slot].exchange(group, std::memory_order_relaxed) != group;
  }
  // Set once before workers start: the slot map is read again soon after a worker calls
  // RequestRefresh (a MOVED, a lost shard primary). Thread-safe.
  void SetRefreshSignal(uv_async_t* async) {
    refresh_async_.store(async, std::memory_order_release);
  }
  void RequestRefresh() {
    if (refresh_wanted_.exchange(true, std::memory_order_acq_rel)) return;
    if (uv_async_t* a = refresh_async_.load(std::memory_order_acquire)) uv_async_send(a);
  }
  // The control plane takes the request (before it asks).
  bool TakeRefreshRequest() { return refresh_wanted_.exchange(false, std::memory_order_acq_rel); }

  ClusterStats& stats() { return stats_; }
  const ClusterStats& stats() const { return stats_; }

 private:
  bool cluster_;
  std::atomic<size_t> next_index_{0};
  std::unique_ptr<BackendGroup> groups_[kMaxGroups];
  std::atomic<size_t> ngroups_{0};
  std::array<std::atomic<uint16_t>, kClusterSlots> slot_group_;
  std::atomic<uv_async_t*> refresh_async_{nullptr};
  std::atomic<bool> refresh_wanted_{false};
  ClusterStats stats_;
};

}  // namespace kp
