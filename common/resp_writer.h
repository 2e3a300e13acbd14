// Helpers that append RESP2 replies and commands to a Buffer: used for the proxy's own
// replies (PING, AUTH, errors) and to re-encode inline commands before forwarding.
#pragma once

#include <charconv>
#include <cstdint>
#include <string_view>

#include "common/buffer.h"

namespace kp::resp {

inline void AppendLength(Buffer& b, char type, int64_t n) {
  char* p = b.PrepareWrite(24);
  p[0] = type;
  auto r = std::to_chars(p + 1, p + 22, n);
  r.ptr[0] = '\r';
  r.ptr[1] = '\n';
  b.Commit(static_cast<size_t>(r.ptr + 2 - p));
}

inline void AppendSimple(Buffer& b, std::string_view s) {
  b.Append("+", 1);
  b.Append(s);
  b.Append("\r\n", 2);
}

// `msg` is the error text without the leading '-', e.g. "ERR something".
inline void AppendError(Buffer& b, std::string_view msg) {
  b.Append("-", 1);
  b.Append(msg);
  b.Append("\r\n", 2);
}

inline void AppendInteger(Buffer& b, int64_t n) {
  AppendLength(b, ':', n);
}

inline void AppendBulk(Buffer& b, std::string_view s) {
  AppendLength(b, '$', static_cast<int64_t>(s.size()));
  b.Append(s);
  b.Append("\r\n", 2);
}

inline void AppendNullBulk(Buffer& b) {
  b.Append("$-1\r\n", 5);
}

// RESP3 where the client speaks it (proto 3), RESP2's equivalent otherwise.
inline void AppendNull(Buffer& b, int proto) {
  if (proto == 3) {
    b.Append("_\r\n", 3);
  } else {
    AppendNullBulk(b);
  }
}
inline void AppendMapHeader(Buffer& b, size_t pairs, int proto) {
  AppendLength(b, proto == 3 ? '%' : '*', static_cast<int64_t>(proto == 3 ? pairs : 2 * pairs));
}
// Text Redis sends as a verbatim string in RESP3 (INFO, CLIENT INFO, CLIENT LIST).
inline void AppendVerbatim(Buffer& b, std::string_view s, int proto) {
  if (proto != 3) return AppendBulk(b, s);
  AppendLength(b, '=', static_cast<int64_t>(s.size() + 4));
  b.Append("txt:", 4);
  b.Append(s.data(), s.size());
  b.Append("\r\n", 2);
}

inline void AppendArrayHeader(Buffer& b, size_t n) {
  AppendLength(b, '*', static_cast<int64_t>(n));
}

// Encodes a command as a RESP array of bulk strings.
template <typename Range>
inline void AppendCommand(Buffer& b, const Range& args) {
  size_t n = 0;
  for (const auto& a : args) {
    (void)a;
    ++n;
  }
  AppendArrayHeader(b, n);
  for (const auto& a : args) AppendBulk(b, std::string_view(a));
}

// AUTH [user] password, as the proxy sends it to a backend (user empty: the default user).
inline void AppendAuth(Buffer& b, std::string_view user, std::string_view password) {
  if (user.empty()) {
    std::string_view args[] = {"AUTH", password};
    AppendCommand(b, args);
  } else {
    std::string_view args[] = {"AUTH", user, password};
    AppendCommand(b, args);
  }
}

}  // namespace kp::resp
