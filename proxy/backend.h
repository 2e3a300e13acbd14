// Backend: one Redis server the proxy talks to (the primary or a replica), as shared by all
// workers. Its health is a pair of atomics so workers can read it on the request path and
// mark it down on a failure without taking a lock; the health checker re-admits it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config/config.h"

namespace kp {

enum class BackendRole { kPrimary, kReplica };

class Backend {
 public:
  Backend(size_t index, BackendRole role, Endpoint endpoint)
      : index_(index), role_(role), endpoint_(std::move(endpoint)), name_(endpoint_.ToString()) {}

  size_t index() const { return index_; }
  BackendRole role() const { return role_; }
  bool is_primary() const { return role_ == BackendRole::kPrimary; }
  const Endpoint& endpoint() const { return endpoint_; }
  const std::string& name() const { return name_; }

  bool up() const { return up_.load(std::memory_order_relaxed); }
  // Epoch of the last MarkDown; a probe only re-admits a backend if no failure was seen
  // after the probe was sent.
  uint64_t down_epoch() const { return down_epoch_.load(std::memory_order_acquire); }

  // Returns true when this call changed the state (so the caller logs once).
  bool MarkDown(const std::string& reason);
  bool MarkUp(uint64_t epoch_at_probe);

  std::string last_error() const {
    std::lock_guard<std::mutex> g(mu_);
    return last_error_;
  }

 private:
  size_t index_;
  BackendRole role_;
  Endpoint endpoint_;
  std::string name_;
  std::atomic<bool> up_{true};
  std::atomic<uint64_t> down_epoch_{0};
  mutable std::mutex mu_;  // guards last_error_ only; taken on failure paths, never per request
  std::string last_error_;
};

// The primary and replicas, indexed 0 = primary, 1.. = replicas in config order.
struct BackendSet {
  std::vector<std::unique_ptr<Backend>> all;
  Backend* primary() const { return all.front().get(); }
  size_t replica_count() const { return all.size() - 1; }
  Backend* replica(size_t i) const { return all[i + 1].get(); }

  static BackendSet FromConfig(const Config& config);
};

}  // namespace kp
