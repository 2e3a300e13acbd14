// Backend health transitions and the set built from config.
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

BackendSet BackendSet::FromConfig(const Config& config) {
  BackendSet set;
  set.all.push_back(std::make_unique<Backend>(0, BackendRole::kPrimary, config.primary));
  for (const auto& r : config.replicas) {
    set.all.push_back(std::make_unique<Backend>(set.all.size(), BackendRole::kReplica, r));
  }
  return set;
}

}  // namespace kp
