// Backend health and replication-state transitions, and the group built from config.
#include "proxy/backend.h"

#include <algorithm>
#include <chrono>

#include "common/logging.h"

namespace kp {

uint64_t MonotonicMs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

uint64_t UnansweredAfterMs(const Config& c) {
  const auto timeout = std::max<uint64_t>(1, static_cast<uint64_t>(c.timeout_s * 1000.0 + 0.5));
  const auto interval =
      std::max<uint64_t>(1, static_cast<uint64_t>(c.health_check_interval_s * 1000.0 + 0.5));
  return std::min(timeout, std::max<uint64_t>(4 * interval, 250));
}

void Backend::NoteUnavailable() {
  if (up_.load(std::memory_order_relaxed) && qualified_.load(std::memory_order_relaxed)) {
    unavailable_since_ms_.store(MonotonicMs(), std::memory_order_relaxed);
  }
}

bool Backend::MarkDown(const std::string& reason) {
  bool was_up;
  {
    // Under the mutex so a concurrent MarkUp cannot slip between the epoch and the flag.
    std::lock_guard<std::mutex> g(mu_);
    NoteUnavailable();
    down_epoch_.fetch_add(1, std::memory_order_acq_rel);
    last_error_ = reason;
    // A server that comes back may be a new one (restarted empty, resyncing): it serves reads
    // only after the monitor has looked at it again.
    qualified_.store(false, std::memory_order_relaxed);
    was_up = up_.exchange(false, std::memory_order_acq_rel);
  }
  if (was_up) {
    const char* role = is_primary() ? "primary" : "replica";
    LogFields f{{"event", "backend_down"}, {"backend", name_}, {"role", role}, {"reason", reason}};
    Log().warn("{} {} marked down: {}", role, name_, reason);
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
  if (!was_up) {
    const char* role = is_primary() ? "primary" : "replica";
    LogFields f{{"event", "backend_up"}, {"backend", name_}, {"role", role}};
    Log().info("{} {} is healthy again", role, name_);
  }
  return !was_up;
}

void Backend::Disqualify() {
  std::lock_guard<std::mutex> g(mu_);
  NoteUnavailable();
  down_epoch_.fetch_add(1, std::memory_order_acq_rel);
  qualified_.store(false, std::memory_order_relaxed);
}

bool Backend::SetReplicationState(uint64_t epoch_at_probe, bool qualified, int64_t offset) {
  std::lock_guard<std::mutex> g(mu_);
  if (down_epoch() != epoch_at_probe) return false;
  // Offset first: a worker that sees the replica qualified must not compare against an older
  // offset than the one the verdict was made with.
  offset_.store(offset, std::memory_order_release);
  if (!qualified) NoteUnavailable();
  return qualified_.exchange(qualified, std::memory_order_acq_rel) != qualified;
}

BackendGroup::BackendGroup(size_t id, std::atomic<size_t>* next_index, size_t max_index)
    : id_(id), next_index_(next_index), max_index_(max_index) {}

void BackendGroup::AddConfigured(const Config& config) {
  if (config.external_topology()) return;  // the Sentinels or the cluster name the nodes
  Backend* primary = FindOrAdd(config.primary);
  primary->set_role(BackendRole::kPrimary);
  primary_.store(primary, std::memory_order_release);
  for (const auto& r : config.replicas) FindOrAdd(r)->set_role(BackendRole::kReplica);
}

Backend* BackendGroup::Find(const Endpoint& ep) const {
  size_t n = size();
  for (size_t i = 0; i < n; ++i) {
    if (nodes_[i]->endpoint() == ep) return nodes_[i].get();
  }
  return nullptr;
}

Backend* BackendGroup::FindOrAdd(const Endpoint& ep) {
  if (Backend* b = Find(ep)) return b;
  size_t n = size();
  if (n == kMaxNodes) return nullptr;
  size_t index = next_index_->load(std::memory_order_relaxed);
  if (index >= max_index_) return nullptr;
  next_index_->store(index + 1, std::memory_order_release);  // control plane only: no race
  nodes_[n] = std::make_unique<Backend>(index, id_, n, ep);
  count_.store(n + 1, std::memory_order_release);  // the node is complete before it is seen
  return nodes_[n].get();
}

void BackendGroup::SetPrimary(Backend* b) {
  Backend* old = primary();
  if (old == b) return;
  // The new primary serves writes only once it has confirmed its role (qualified), which
  // the caller has just seen; the old one is a replica that must qualify before reads.
  if (old != nullptr) {
    old->Disqualify();
    old->set_role(BackendRole::kReplica);
  }
  b->set_role(BackendRole::kPrimary);
  primary_.store(b, std::memory_order_release);
  // A change from one primary to another; the first one known is not a change.
  if (old != nullptr) changes_.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace kp
