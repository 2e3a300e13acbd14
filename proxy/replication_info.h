// Replication state as Redis reports it (INFO replication), and the rules that decide
// whether a replica may serve reads. Pure functions and plain data: the monitor feeds them
// what the servers answered, unit tests feed them text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kp {

// The fields of one INFO replication reply that the proxy uses.
struct ReplicationInfo {
  bool is_replica = false;  // role:slave
  bool link_up = false;     // master_link_status:up
  bool sync_in_progress = false;
  std::string replid;   // master_replid: the history this server's offsets belong to
  std::string replid2;  // the history it continued from after a failover (PSYNC2)
  int64_t master_repl_offset = -1;
  int64_t replica_offset = -1;  // slave_repl_offset: applied (replicas only)
  std::string master_host;      // replicas: whom they replicate from, for messages
  int master_port = 0;
};

// False when the text is not an INFO replication reply (no role line).
bool ParseReplicationInfo(std::string_view text, ReplicationInfo* out);

// Recent samples of the primary's offset, to turn "replica is at offset X" into "replica has
// everything the primary had at time T". Fixed capacity, oldest dropped.
class OffsetHistory {
 public:
  explicit OffsetHistory(size_t capacity = 512) : samples_(capacity) {}
  // `at_ms` is when the sample was asked for: the primary's offset was at least `offset` then.
  void Add(uint64_t at_ms, int64_t offset);
  void Clear() { size_ = 0; }
  bool empty() const { return size_ == 0; }
  int64_t latest_offset() const;
  // Seconds the replica is behind at `now_ms`: 0 if it has the latest sample's offset, else
  // now minus the time of the newest sample it has reached (at least the age of the oldest
  // sample kept when it has reached none).
  double LagSeconds(uint64_t now_ms, int64_t replica_offset) const;

 private:
  struct Sample {
    uint64_t at_ms = 0;
    int64_t offset = 0;
  };
  const Sample& nth_newest(size_t i) const;
  std::vector<Sample> samples_;
  size_t next_ = 0;  // slot of the next sample
  size_t size_ = 0;
};

// What the proxy knows of the primary when it judges a replica.
struct PrimaryView {
  bool known = false;      // the primary has answered INFO at least once
  bool reachable = false;  // and is up now
  std::string replid;
  int64_t offset = -1;
  const OffsetHistory* history = nullptr;
  // While it is unreachable: whether every replica that is up has reported since, and the
  // highest offset of its history they reported (the newest data that still exists).
  bool replicas_reported = false;
  int64_t freshest_replica_offset = -1;
};

struct LagLimits {
  double max_seconds = 0;  // 0: no limit
  uint64_t max_bytes = 0;  // 0: no limit
};

struct ReplicaVerdict {
  bool qualified = false;
  std::string reason;  // why not; empty when qualified
  int64_t lag_bytes = -1;
  double lag_seconds = -1;
};

// The read rule: a replica serves reads only while it replicates the current primary's
// history, is linked to it, not syncing, and within the lag limits. While the primary itself
// is unreachable nothing newer can be written, and the replicas' links are down because of
// it: a replica of its history serves reads only if it has the newest data that still
// exists (the highest offset any replica reports since, and at least the primary's last
// sampled offset), so one that was behind or cut off never comes back with old data.
// Until every replica has answered since the primary was lost, a replica keeps the verdict
// it had (`was_qualified`): revoking it would fail reads for a round trip, granting it
// could serve data another replica has newer.
ReplicaVerdict JudgeReplica(const ReplicationInfo& replica, const PrimaryView& primary,
                            const LagLimits& limits, uint64_t now_ms, bool was_qualified);

}  // namespace kp
