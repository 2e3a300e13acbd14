// INFO replication parsing, the primary's offset history and the replica read rule.
#include "proxy/replication_info.h"

#include <charconv>
#include <cstdio>

namespace kp {

namespace {

int64_t ToInt(std::string_view v) {
  int64_t n = -1;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || p != v.data() + v.size()) return -1;
  return n;
}

std::string Bytes(int64_t n) {
  return std::to_string(n) + " bytes";
}

}  // namespace

bool ParseReplicationInfo(std::string_view text, ReplicationInfo* out) {
  *out = ReplicationInfo();
  bool has_role = false;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    size_t colon = line.find(':');
    if (line.empty() || line.front() == '#' || colon == std::string_view::npos) continue;
    std::string_view key = line.substr(0, colon);
    std::string_view value = line.substr(colon + 1);
    if (key == "role") {
      has_role = true;
      out->is_replica = value == "slave";
    } else if (key == "master_link_status") {
      out->link_up = value == "up";
    } else if (key == "master_sync_in_progress") {
      out->sync_in_progress = value != "0";
    } else if (key == "master_replid") {
      out->replid = value;
    } else if (key == "master_replid2") {
      out->replid2 = value;
    } else if (key == "master_repl_offset") {
      out->master_repl_offset = ToInt(value);
    } else if (key == "slave_repl_offset") {
      out->replica_offset = ToInt(value);
    } else if (key == "master_host") {
      out->master_host = value;
    } else if (key == "master_port") {
      out->master_port = static_cast<int>(ToInt(value));
    }
  }
  return has_role;
}

void OffsetHistory::Add(uint64_t at_ms, int64_t offset) {
  samples_[next_] = {at_ms, offset};
  next_ = (next_ + 1) % samples_.size();
  if (size_ < samples_.size()) ++size_;
}

const OffsetHistory::Sample& OffsetHistory::nth_newest(size_t i) const {
  return samples_[(next_ + samples_.size() - 1 - i) % samples_.size()];
}

int64_t OffsetHistory::latest_offset() const {
  return size_ == 0 ? -1 : nth_newest(0).offset;
}

double OffsetHistory::LagSeconds(uint64_t now_ms, int64_t replica_offset) const {
  if (size_ == 0 || replica_offset >= nth_newest(0).offset) return 0;
  auto age = [&](const Sample& s) {
    return now_ms > s.at_ms ? static_cast<double>(now_ms - s.at_ms) / 1000.0 : 0.0;
  };
  for (size_t i = 1; i < size_; ++i) {
    if (nth_newest(i).offset <= replica_offset) return age(nth_newest(i));
  }
  return age(nth_newest(size_ - 1));
}

ReplicaVerdict JudgeReplica(const ReplicationInfo& r, const PrimaryView& primary,
                            const LagLimits& limits, uint64_t now_ms, bool was_qualified) {
  ReplicaVerdict v;
  if (!r.is_replica) {
    v.reason = "it reports itself as a primary";
    return v;
  }
  if (!primary.known) {
    v.reason = "the primary's replication state is not known yet";
    return v;
  }
  if (r.sync_in_progress) {
    v.reason = "a full sync from its primary is in progress";
    return v;
  }
  if (r.replid != primary.replid) {
    // A different history: it replicates another primary, or has not synced with ours yet.
    // With its link down the two look alike (a replica just started or just pointed at our
    // primary keeps its own id until the sync), so only a live link names another primary.
    const std::string master = r.master_host.empty()
                                   ? std::string("?")
                                   : r.master_host + ":" + std::to_string(r.master_port);
    const std::string ids = "replication id " + r.replid.substr(0, 8) + "..., ours " +
                            primary.replid.substr(0, 8) + "...";
    v.reason = r.link_up ? "it replicates another primary (" + master + ", " + ids + ")"
                         : "it has not synced with the primary yet (its link to " + master +
                               " is down; " + ids + ")";
    return v;
  }
  if (primary.offset >= 0 && r.replica_offset >= 0) {
    v.lag_bytes = primary.offset > r.replica_offset ? primary.offset - r.replica_offset : 0;
  }
  if (primary.history != nullptr && r.replica_offset >= 0) {
    v.lag_seconds = primary.history->LagSeconds(now_ms, r.replica_offset);
  }
  if (!primary.reachable) {
    // The primary is gone: nothing newer can be written, and the replicas' links are down
    // because of it. One that has everything the primary was last seen with holds the
    // newest data there is.
    if (!primary.replicas_reported) {
      v.qualified = was_qualified;
      if (!was_qualified) v.reason = "the primary is unreachable; waiting for every replica";
    } else if (r.replica_offset >= 0 && r.replica_offset >= primary.offset &&
               r.replica_offset >= primary.freshest_replica_offset) {
      v.qualified = true;
    } else {
      v.reason = "the primary is unreachable and another replica has newer data";
      if (r.replica_offset < primary.offset) {
        v.reason = "the primary is unreachable and it had not caught up with it";
      }
    }
    return v;
  }
  if (!r.link_up) {
    v.reason = "its link to the primary is down";
    return v;
  }
  if (r.replica_offset < 0) {
    v.reason = "it reports no replication offset";
    return v;
  }
  if (limits.max_bytes != 0 && v.lag_bytes > static_cast<int64_t>(limits.max_bytes)) {
    v.reason = "it is " + Bytes(v.lag_bytes) + " behind the primary (max_replica_lag_bytes " +
               Bytes(static_cast<int64_t>(limits.max_bytes)) + ")";
    return v;
  }
  if (limits.max_seconds > 0 && v.lag_seconds > limits.max_seconds) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "it is %.3fs behind the primary (max_replica_lag %.3fs)",
                  v.lag_seconds, limits.max_seconds);
    v.reason = buf;
    return v;
  }
  v.qualified = true;
  return v;
}

}  // namespace kp
