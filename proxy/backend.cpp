// Backend health and replication-state transitions, and the group built from config.
#include "proxy/backend.h"

#include "common/logging.h"

namespace kp {

bool Backend::MarkDown(const std::string& reason) {
  bool was_up;
  {
    // Under the mutex so a concurrent MarkUp cannot slip between the epoch and the flag.
    std::lock_guard<std::mutex> g(mu_);
    down_epoch_.fetch_add(1, std::memory_order_acq_rel);
    last_error_ = reason;
    // A server that comes back may be a new one (restarted empty, resyncing): it serves reads
    // only after the monitor has looked at it again.
    qualified_.store(false, std::memory_order_relaxed);
    was_up = up_.exchange(false, std::memory_order_acq_rel);
  }
  if (was_up) {
    Log().warn("{} {} marked down: {}", is_primary() ? "primary" : "replica", name_, reason);
  }
  return was_up;
}

bool Backend::MarkUp(uint64_t epoch_at_probe) {
  bool was_up;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (down_epoch() != epoch_at_probe) return false;
    was_up = up_.exchange(true, std::memory_order_acq_rel);
  }
  if (!was_up) Log().info("{} {} is healthy again", is_primary() ? "primary" : "replica", name_);
  return !was_up;
}

void Backend::Disqualify() {
  std::lock_guard<std::mutex> g(mu_);
  down_epoch_.fetch_add(1, std::memory_order_acq_rel);
  qualified_.store(false, std::memory_order_relaxed);
}

bool Backend::SetReplicationState(uint64_t epoch_at_probe, bool qualified, int64_t offset) {
  std::lock_guard<std::mutex> g(mu_);
  if (down_epoch() != epoch_at_probe) return false;
  // Offset first: a worker that sees the replica qualified must not compare against an older
  // offset than the one the verdict was made with.
  offset_.store(offset, std::memory_order_release);
  return qualified_.exchange(qualified, std::memory_order_acq_rel) != qualified;
}

BackendGroup BackendGroup::FromConfig(const Config& config) {
  BackendGroup group;
  group.all.push_back(std::make_unique<Backend>(0, BackendRole::kPrimary, config.primary));
  for (const auto& r : config.replicas) {
    group.all.push_back(std::make_unique<Backend>(group.all.size(), BackendRole::kReplica, r));
  }
  return group;
}

}  // namespace kp
