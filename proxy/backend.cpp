// Backend health transitions and the set built from config.
#include "proxy/backend.h"

#include "common/logging.h"

namespace kp {

bool Backend::MarkDown(const std::string& reason) {
  down_epoch_.fetch_add(1, std::memory_order_acq_rel);
  {
    std::lock_guard<std::mutex> g(mu_);
    last_error_ = reason;
  }
  bool was_up = up_.exchange(false, std::memory_order_acq_rel);
  if (was_up) {
    Log().warn("{} {} marked down: {}", is_primary() ? "primary" : "replica", name_, reason);
  }
  return was_up;
}

bool Backend::MarkUp(uint64_t epoch_at_probe) {
  if (down_epoch() != epoch_at_probe) return false;
  bool was_up = up_.exchange(true, std::memory_order_acq_rel);
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
