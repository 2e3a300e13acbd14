// Backend: one Redis server the proxy talks to (the primary or a replica), as shared by all
// workers, and BackendGroup: one primary with its replicas. Health and replication state are
// atomics so workers read them on the request path and mark a backend down on a failure
// without taking a lock; the replication monitor (main thread) re-admits and qualifies.
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
  // Replicas: up, and the monitor's last look found it fit to serve reads (linked to the
  // current primary, not syncing, within the lag limits).
  bool serves_reads() const {
    return up_.load(std::memory_order_relaxed) && qualified_.load(std::memory_order_relaxed);
  }
  // Replicas: the replication offset it had applied at the monitor's last look (-1: unknown).
  int64_t offset() const { return offset_.load(std::memory_order_acquire); }
  // Epoch of the last MarkDown/Disqualify; a probe only re-admits or qualifies a backend if
  // no failure was seen after the probe was sent.
  uint64_t down_epoch() const { return down_epoch_.load(std::memory_order_acquire); }

  // Returns true when this call changed the state (so the caller logs once).
  bool MarkDown(const std::string& reason);
  bool MarkUp(uint64_t epoch_at_probe);
  // A worker saw something that may mean a different server now answers at this address (an
  // idle connection closed): no reads until the monitor has looked again. Not "down".
  void Disqualify();
  // The monitor's verdict for a replica, from a probe sent at `epoch_at_probe`. Ignored if a
  // failure was seen since. Returns true when `qualified` changed.
  bool SetReplicationState(uint64_t epoch_at_probe, bool qualified, int64_t offset);
  bool qualified() const { return qualified_.load(std::memory_order_relaxed); }

  std::string last_error() const {
    std::lock_guard<std::mutex> g(mu_);
    return last_error_;
  }

  // For /metrics (written and read on the main thread only).
  int64_t lag_bytes = -1;
  double lag_seconds = -1;
  std::string not_serving_reason;  // why a replica gets no reads; empty when it does

 private:
  size_t index_;
  BackendRole role_;
  Endpoint endpoint_;
  std::string name_;
  std::atomic<bool> up_{true};
  std::atomic<bool> qualified_{false};
  std::atomic<int64_t> offset_{-1};
  std::atomic<uint64_t> down_epoch_{0};
  mutable std::mutex mu_;  // guards last_error_ and transitions; failure paths, never per request
  std::string last_error_;
};

// What the proxy knows of the primary's replication stream, for read-your-writes. The
// monitor bumps poll_epoch just before it asks the primary for its offset, and publishes the
// answer as (offset, then sampled_epoch). A write answered to a client before poll_epoch
// read E is therefore contained in the offset of any sample whose epoch is greater than E.
struct PrimaryProgress {
  std::atomic<uint64_t> poll_epoch{0};
  std::atomic<uint64_t> sampled_epoch{0};
  std::atomic<int64_t> offset{-1};
  // Bumped when the primary's offsets start a new history (restarted without data, another
  // server): offsets of different histories cannot be compared.
  std::atomic<uint32_t> history{0};
};

// One primary and its replicas, indexed 0 = primary, 1.. = replicas in config order.
struct BackendGroup {
  std::vector<std::unique_ptr<Backend>> all;
  std::unique_ptr<PrimaryProgress> progress = std::make_unique<PrimaryProgress>();

  Backend* primary() const { return all.front().get(); }
  size_t replica_count() const { return all.size() - 1; }
  Backend* replica(size_t i) const { return all[i + 1].get(); }

  static BackendGroup FromConfig(const Config& config);
};

}  // namespace kp
