// ReadYourWrites: one client's read-your-writes requirement. After the client's write has
// been answered, its reads may only go to replicas whose replication offset has reached that
// write; until the proxy knows the write's offset, only the primary qualifies.
//
// The write's offset is never asked for on the request path: the monitor samples the
// primary's offset continuously (PrimaryProgress), and a sample asked for after the write
// was answered contains it. Per request this costs a few relaxed loads and a comparison.
#pragma once

#include <cstdint>

#include "proxy/backend.h"

namespace kp {

class ReadYourWrites {
 public:
  // No requirement: any replica that serves reads will do.
  static constexpr int64_t kAny = -1;
  // The write's offset is not known yet: only the primary is sure to have it.
  static constexpr int64_t kPrimaryOnly = -2;

  // The client's write was answered (or failed in a way that may have applied it).
  void OnWrite(const PrimaryProgress& p) {
    pending_epoch_ = p.poll_epoch.load(std::memory_order_seq_cst);
    pending_ = true;
  }

  // The least replica offset this client's next read needs, or kAny / kPrimaryOnly.
  int64_t Requirement(const PrimaryProgress& p) {
    if (pending_) {
      if (p.sampled_epoch.load(std::memory_order_acquire) <= pending_epoch_) return kPrimaryOnly;
      // The latest offset is at least the one of the first sample after the write: using it
      // is conservative, and costs nothing extra.
      history_ = p.history.load(std::memory_order_acquire);
      offset_ = p.offset.load(std::memory_order_acquire);
      pending_ = false;
    }
    if (offset_ < 0) return kAny;
    if (history_ != p.history.load(std::memory_order_relaxed)) {
      // The primary's history restarted (it came back without its data): the old offset
      // means nothing now, and neither does the data the write went into.
      offset_ = -1;
      return kAny;
    }
    return offset_;
  }

  bool has_requirement() const { return pending_ || offset_ >= 0; }

 private:
  bool pending_ = false;
  uint64_t pending_epoch_ = 0;
  int64_t offset_ = -1;
  uint32_t history_ = 0;
};

}  // namespace kp
