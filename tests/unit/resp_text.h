// RESP as text, for tests that build the bytes a server or client would send.
#pragma once

#include <string>
#include <string_view>

namespace kp::test {

inline std::string Bulk(std::string_view s) {
  return "$" + std::to_string(s.size()) + "\r\n" + std::string(s) + "\r\n";
}

}  // namespace kp::test
