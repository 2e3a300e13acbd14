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

// A node's place in the group's current topology, as the control plane decided it.
// Milliseconds of a monotonic clock shared by all threads.
uint64_t MonotonicMs();

// How long a node may leave a health check, or a connection the reply it owes, unanswered
// before it counts as not answering: four health-check intervals, at least 250 ms, and no
// longer than the timeout. INFO replication takes well under a millisecond; a server that
// answers nothing for this long is stopped, swapping, cut off, or busy with one slow command.
uint64_t UnansweredAfterMs(const Config& c);

enum class BackendRole : uint8_t {
  kNone,     // known but not in the topology (e.g. a Sentinel no longer lists it)
  kPrimary,  // takes the writes
  kReplica,  // may serve reads when it qualifies
};

class Backend {
 public:
  Backend(size_t index, size_t group, size_t position, Endpoint endpoint)
      : index_(index),
        group_(group),
        position_(position),
        endpoint_(std::move(endpoint)),
        name_(endpoint_.ToString()),
        unavailable_since_ms_(MonotonicMs()) {}  // not confirmed yet: just "changed"

  // Unique across every group of the topology (workers keep per-node state by it).
  size_t index() const { return index_; }
  // The group it belongs to (Topology::group), and its place within it.
  size_t group() const { return group_; }
  size_t position() const { return position_; }
  BackendRole role() const { return role_.load(std::memory_order_acquire); }
  bool is_primary() const { return role() == BackendRole::kPrimary; }
  bool is_replica() const { return role() == BackendRole::kReplica; }
  void set_role(BackendRole r) { role_.store(r, std::memory_order_release); }
  const Endpoint& endpoint() const { return endpoint_; }
  const std::string& name() const { return name_; }

  bool up() const { return up_.load(std::memory_order_relaxed); }
  // Replicas: up, and the monitor's last look found it fit to serve reads (linked to the
  // current primary, not syncing, within the lag limits).
  bool serves_reads() const {
    return up_.load(std::memory_order_relaxed) && qualified_.load(std::memory_order_relaxed) &&
           is_replica();
  }
  // The primary: up, and its last answer confirmed it is a primary (role:master). Writes go
  // to nothing less: after any failure or topology change the node must confirm again.
  bool serves_writes() const {
    return up_.load(std::memory_order_relaxed) && qualified_.load(std::memory_order_relaxed) &&
           is_primary();
  }
  // Replicas: its last health check has not gone unanswered for UnansweredAfterMs. One that
  // does (stopped, cut off, or busy with a slow command) gets no cheap reads of clients
  // whose replies may not be large (ClientSession::Steered); other reads may be slow or
  // large, and moved to the primary they would burden it with what made this one slow. Set
  // by the monitor while a primary or another replica can take them, cleared by the node's
  // next answer (or once nothing else can take them).
  bool answering() const { return !unanswered_.load(std::memory_order_relaxed); }
  // Returns true when this call changed it.
  bool SetAnswering(bool yes) {
    return unanswered_.exchange(!yes, std::memory_order_relaxed) == yes;
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
  // The monitor's verdict, from a probe sent at `epoch_at_probe` (a replica: fit for reads;
  // the primary: confirmed as one). Ignored if a failure was seen since. Returns true when
  // `qualified` changed.
  bool SetReplicationState(uint64_t epoch_at_probe, bool qualified, int64_t offset);
  bool qualified() const { return qualified_.load(std::memory_order_relaxed); }
  // When (MonotonicMs) it last stopped being able to do its job (down or unconfirmed), or
  // was added. Tells a request that waits for the primary whether a change is under way.
  uint64_t unavailable_since_ms() const {
    return unavailable_since_ms_.load(std::memory_order_relaxed);
  }

  std::string last_error() const {
    std::lock_guard<std::mutex> g(mu_);
    return last_error_;
  }
  // Why the node cannot do its job though it is up (a "primary" that reports being a
  // replica); shown in the errors clients get.
  void set_last_error(std::string why) {
    std::lock_guard<std::mutex> g(mu_);
    last_error_ = std::move(why);
  }

  // What the server says of itself (INFO server, CONFIG GET databases), asked once per probe
  // connection: HELLO reports the primary's version, SELECT checks against its databases.
  std::string server_version() const {
    std::lock_guard<std::mutex> g(mu_);
    return server_version_;
  }
  void set_server_version(std::string v) {
    std::lock_guard<std::mutex> g(mu_);
    server_version_ = std::move(v);
  }
  uint32_t databases() const { return databases_.load(std::memory_order_relaxed); }
  void set_databases(uint32_t n) { databases_.store(n, std::memory_order_relaxed); }

  // For /metrics (written and read on the main thread only).
  int64_t lag_bytes = -1;
  double lag_seconds = -1;
  std::string not_serving_reason;  // why a replica gets no reads; empty when it does

 private:
  size_t index_;
  size_t group_;
  size_t position_;
  std::atomic<BackendRole> role_{BackendRole::kNone};
  Endpoint endpoint_;
  std::string name_;
  std::atomic<bool> up_{true};
  std::atomic<bool> qualified_{false};
  std::atomic<bool> unanswered_{false};
  std::atomic<int64_t> offset_{-1};
  std::atomic<uint64_t> down_epoch_{0};
  std::atomic<uint64_t> unavailable_since_ms_{0};
  mutable std::mutex mu_;  // guards last_error_ and transitions; failure paths, never per request
  std::string last_error_;
  std::string server_version_;           // empty until known
  std::atomic<uint32_t> databases_{16};  // Redis's default until the server says

  void NoteUnavailable();  // under mu_, before the flags change
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

// One primary and its replicas: the group a client's requests are served by (the only one,
// or one Redis Cluster shard). Nodes are added by the control plane and never removed, so
// workers may hold pointers to them; what changes is each node's role and which node is the
// primary, always through ReplicationMonitor. Workers read the topology with a few atomic
// loads.
class BackendGroup {
 public:
  static constexpr size_t kMaxNodes = 64;

  // `next_index` numbers nodes across all groups (Backend::index); `id`: this group's number.
  BackendGroup(size_t id, std::atomic<size_t>* next_index, size_t max_index);
  // The configured nodes of a static topology (primary first); none with Sentinel or Cluster.
  void AddConfigured(const Config& config);
  size_t id() const { return id_; }

  // The node that takes writes, or nullptr while none is known (Sentinel not asked yet).
  Backend* primary() const { return primary_.load(std::memory_order_acquire); }
  size_t size() const { return count_.load(std::memory_order_acquire); }
  Backend* node(size_t i) const { return nodes_[i].get(); }

  // Control plane only. The node for `ep`, added if new (nullptr when the group is full).
  Backend* FindOrAdd(const Endpoint& ep);
  Backend* Find(const Endpoint& ep) const;
  // Makes `b` the primary; the one before becomes a replica (judged as one before it serves
  // reads). Counted as a topology change.
  void SetPrimary(Backend* b);
  uint64_t topology_changes() const { return changes_.load(std::memory_order_relaxed); }

  PrimaryProgress& progress() { return progress_; }
  const PrimaryProgress& progress() const { return progress_; }

 private:
  size_t id_;
  std::atomic<size_t>* next_index_;
  size_t max_index_;
  std::unique_ptr<Backend> nodes_[kMaxNodes];
  std::atomic<size_t> count_{0};
  std::atomic<Backend*> primary_{nullptr};
  std::atomic<uint64_t> changes_{0};
  PrimaryProgress progress_;
};

}  // namespace kp
