// Key tag: a cheap 64-bit digest of a key, to tell whether two requests may touch the same key.
//
// Equal keys always get equal tags; different keys almost never do, and when they do the cost
// is only caution (a write waits for a read it did not need to). Eight bytes per step, so a
// read pays a few instructions for it, not a byte-by-byte hash.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace kp {

// Never returned by KeyTag: "several keys, none, or not known" (conflicts with any key).
inline constexpr uint64_t kAnyKey = ~0ull;

inline uint64_t KeyTag(std::string_view key) {
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  uint64_t h = key.size() * 0xC2B2AE3D27D4EB4Full;
  const char* p = key.data();
  size_t n = key.size();
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * kMul;
    h ^= h >> 32;
  }
  if (n > 0) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    h = (h ^ w) * kMul;
    h ^= h >> 32;
  }
  return h == kAnyKey ? h - 1 : h;
}

}  // namespace kp
