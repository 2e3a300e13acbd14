// Reading hiredis replies (the control connections' and start-up conversations' answers).
#pragma once

#include <hiredis/hiredis.h>

#include <string_view>

namespace kp {

// A string or status reply's text; empty for anything else (nullptr included).
inline std::string_view ReplyString(const redisReply* r) {
  if (r == nullptr || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS)) return {};
  return {r->str, r->len};
}

}  // namespace kp
