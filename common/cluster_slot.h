// ClusterSlot: the Redis Cluster hash slot of a key (CRC16-XMODEM of the key, or of its hash
// tag, modulo 16384), as Redis computes it, for routing by slot (issue: Redis Cluster behind
// one address). No libuv, no allocation.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace kp {

inline constexpr uint16_t kClusterSlots = 16384;

// CRC16 with polynomial 0x1021, initial value 0, no reflection (XMODEM): Redis's crc16(),
// a byte at a time from a table built at compile time (the bit loop cost ~8 steps per key
// byte on every request in cluster mode).
namespace detail {
constexpr std::array<uint16_t, 256> MakeCrc16Table() {
  std::array<uint16_t, 256> t{};
  for (int b = 0; b < 256; ++b) {
    auto crc = static_cast<uint16_t>(b << 8);
    for (int i = 0; i < 8; ++i) {
      crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                           : static_cast<uint16_t>(crc << 1);
    }
    t[static_cast<size_t>(b)] = crc;
  }
  return t;
}
inline constexpr std::array<uint16_t, 256> kCrc16Table = MakeCrc16Table();
}  // namespace detail

constexpr uint16_t Crc16(std::string_view data) {
  uint16_t crc = 0;
  for (char ch : data) {
    crc = static_cast<uint16_t>(
        (crc << 8) ^ detail::kCrc16Table[((crc >> 8) ^ static_cast<uint8_t>(ch)) & 0xFF]);
  }
  return crc;
}

// Only the part between the first '{' and the next '}' is hashed, if that part is not empty
// ("{user1000}.following" and "{user1000}.followers" share a slot; "{}x" hashes whole).
constexpr uint16_t KeySlot(std::string_view key) {
  size_t open = key.find('{');
  if (open != std::string_view::npos) {
    size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close != open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(key) & (kClusterSlots - 1);
}

}  // namespace kp
