// RespLimits: the bounds every length read from the wire is checked against before any
// memory is reserved for it. Filled from config; defaults follow Redis where Redis has one.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kp {

// The request limits a client can go past, for errors and per-limit counters. (A line past
// max_inline_bytes stays Redis's own protocol error.)
enum class RespLimit : uint8_t {
  kNone,
  kArrayLen,      // limits.max_array_len
  kBulkLen,       // limits.max_bulk_bytes
  kRequestBytes,  // limits.max_request_bytes
  kClientBuffer,  // limits.max_client_buffer_bytes (checked by the session)
};
inline constexpr size_t kRespLimitCount = 5;

// "max_bulk_bytes" for kBulkLen: the config key without its "limits." section.
inline const char* RespLimitName(RespLimit l) {
  switch (l) {
    case RespLimit::kArrayLen:
      return "max_array_len";
    case RespLimit::kBulkLen:
      return "max_bulk_bytes";
    case RespLimit::kRequestBytes:
      return "max_request_bytes";
    case RespLimit::kClientBuffer:
      return "max_client_buffer_bytes";
    case RespLimit::kNone:
      break;
  }
  return "none";
}

struct RespLimits {
  size_t max_array_len = 1024 * 1024;               // elements in one request array
  size_t max_bulk_len = 512ull * 1024 * 1024;       // bytes in one bulk string (proto-max-bulk-len)
  size_t max_request_bytes = 512ull * 1024 * 1024;  // bytes of one whole request
  size_t max_inline_len = 64 * 1024;                // bytes of one inline command line
  // Aggregate depth of a reply. High: Lua scripts and functions return tables hundreds of
  // levels deep, and a reply Redis sends must never be "malformed" to the proxy (that would
  // fail every request sharing the connection). 16 bytes of framer state per level.
  size_t max_nesting = 65536;

  // The bounds replies are framed with: the request limits protect the proxy from clients,
  // but a reply is whatever Redis legitimately sends (a 2 MB value under max_bulk_bytes 1mb),
  // and framing it allocates nothing, so only integer safety bounds its bulk length.
  RespLimits ForReplies() const {
    RespLimits r = *this;
    r.max_bulk_len = size_t{1} << 40;
    return r;
  }
};

}  // namespace kp
