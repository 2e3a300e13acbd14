// ClientBudget: what all clients together may use, shared by the accepting thread and the
// workers: the open client count (max_clients) and the reply bytes held for clients
// (limits.max_total_client_buffer_bytes, Redis 7's maxmemory-clients). Sessions report their
// holdings at flush points (once per loop turn at most), never per request.
#pragma once

#include <atomic>
#include <cstdint>
#include <iterator>
#include <vector>

#include "proxy/stats.h"

namespace kp {

class Worker;

// Why the proxy closed a client on its own initiative (kompress_client_drops_total{reason}).
enum class DropReason : uint8_t {
  kClientBuffer,       // its own replies piled up past limits.max_client_buffer_bytes
  kTotalClientBuffer,  // all clients together past limits.max_total_client_buffer_bytes
  kUnreadReply,        // read nothing of a streamed reply for `timeout` (see BackendConn)
};
inline constexpr size_t kDropReasonCount = 3;
static_assert(kDropReasonCount == std::size(WorkerStats{}.client_drops));

inline const char* DropReasonName(DropReason r) {
  switch (r) {
    case DropReason::kClientBuffer:
      return "max_client_buffer_bytes";
    case DropReason::kTotalClientBuffer:
      return "max_total_client_buffer_bytes";
    case DropReason::kUnreadReply:
      return "unread_reply_timeout";
  }
  return "other";
}

struct ClientBudget {
  std::atomic<int64_t> clients{0};      // accepted and not yet closed
  std::atomic<int64_t> reply_bytes{0};  // sum of the sessions' counted reply bytes
  // When a reply large enough to matter to a new client's first requests was last seen
  // (ClientSession::FirstBurst), on the workers' loop clock (ms, one monotonic clock for all
  // of them); 0: never. Written at most once a second.
  std::atomic<uint64_t> large_reply_ms{0};
  Counter refused;               // accepting thread only: over max_clients
  std::vector<Worker*> workers;  // set before they start; read-only afterwards
};

}  // namespace kp
