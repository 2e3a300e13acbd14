// RespLimits: the bounds every length read from the wire is checked against before any
// memory is reserved for it. Filled from config; defaults follow Redis where Redis has one.
#pragma once

#include <cstddef>

namespace kp {

struct RespLimits {
  size_t max_array_len = 1024 * 1024;               // elements in one request array
  size_t max_bulk_len = 512ull * 1024 * 1024;       // bytes in one bulk string (proto-max-bulk-len)
  size_t max_request_bytes = 512ull * 1024 * 1024;  // bytes of one whole request
  size_t max_inline_len = 64 * 1024;                // bytes of one inline command line
  size_t max_nesting = 128;                         // aggregate depth of a reply
};

}  // namespace kp
