// Unit tests for common/buffer: growth, compaction, exact room for announced values, and the
// allocation failure path that must leave the buffer as it was.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "common/buffer.h"

#if defined(__SANITIZE_ADDRESS__)
// The proxy counts on malloc answering null when memory cannot be had (TryPrepareWrite falls
// back to small reads); ASan aborts on such a request unless told to behave like malloc.
extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1";
}
#endif

namespace kp {
namespace {

TEST_CASE("appends and consumes keep the bytes in order across growth") {
  Buffer b;
  std::string want;
  for (int i = 0; i < 2000; ++i) {
    std::string piece = std::to_string(i) + ",";
    b.Append(piece);
    want += piece;
    if (i % 7 == 0) {
      b.Consume(2);
      want.erase(0, 2);
    }
  }
  CHECK(b.view() == want);
  b.Consume(b.size());
  CHECK(b.empty());
}

TEST_CASE("room for an announced value is that size, not the next power of two") {
  Buffer b;
  b.Append("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$17825792\r\n");
  const size_t held = b.size();
  const size_t value = (17u << 20) + 2;
  REQUIRE(b.TryPrepareWrite(value, /*exact=*/true));
  CHECK(b.writable() >= value);
  CHECK(b.capacity() < held + value + 4096 + 1);
  CHECK(b.view().substr(0, 4) == "*3\r\n");  // what was held survived the move

  // The default keeps doubling: appends amortise their copies.
  Buffer d;
  d.Append("x");
  REQUIRE(d.TryPrepareWrite(value));
  CHECK(d.capacity() == (32u << 20));
}

TEST_CASE("a room that cannot be had leaves the buffer unchanged") {
  Buffer b;
  b.Append("hello");
  const size_t cap = b.capacity();
  CHECK_FALSE(b.TryPrepareWrite(SIZE_MAX / 2, /*exact=*/true));
  CHECK(b.capacity() == cap);
  CHECK(b.view() == "hello");
}

TEST_CASE("room already there is reused after consuming, by moving the rest to the front") {
  Buffer b;
  b.Append(std::string(3000, 'a'));
  const size_t cap = b.capacity();
  b.Consume(2900);
  b.PrepareWrite(cap - 200);  // fits once the 100 remaining bytes move to the front
  CHECK(b.capacity() == cap);
  CHECK(b.view() == std::string(100, 'a'));
}

TEST_CASE("a large buffer grown in place keeps its bytes") {
  // Past glibc's mmap threshold, growth with nothing consumed moves pages (realloc).
  Buffer b;
  std::string chunk(1 << 20, '\0');
  for (size_t i = 0; i < 40; ++i) {
    std::fill(chunk.begin(), chunk.end(), static_cast<char>('a' + i % 26));
    b.Append(chunk.data(), chunk.size());
  }
  REQUIRE(b.size() == 40u << 20);
  for (size_t i = 0; i < 40; ++i) {
    CHECK(b.data()[i << 20] == static_cast<char>('a' + i % 26));
    CHECK(b.data()[(i << 20) + (1 << 20) - 1] == static_cast<char>('a' + i % 26));
  }
  b.Consume(1);
  b.Append("z", 1);  // growth with a consumed prefix still keeps order
  CHECK(b.data()[0] == 'a');
  CHECK(b.data()[b.size() - 1] == 'z');
}

}  // namespace
}  // namespace kp
