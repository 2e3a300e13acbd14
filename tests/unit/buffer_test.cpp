// Unit tests for common/buffer: growth, compaction, exact room for announced values, the
// allocation failure path that must leave the buffer as it was, and the spare small and large
// blocks.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <string>
#include <thread>
#include <utility>

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

// The /proc/self/maps line (start, end) holding address p; {0, 0} when none does.
std::pair<uintptr_t, uintptr_t> MappingOf(const void* p) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const auto at = reinterpret_cast<uintptr_t>(p);
  while (std::getline(maps, line)) {
    uintptr_t from = std::stoull(line, nullptr, 16);
    uintptr_t to = std::stoull(line.substr(line.find('-') + 1), nullptr, 16);
    if (at >= from && at < to) return {from, to};
  }
  return {0, 0};
}

TEST_CASE("a large buffer that grows stays one mapping, so realloc can move it") {
  // Huge-page advice on part of a block split its mapping, and realloc's mremap then failed
  // (the range spanned several mappings): glibc copied the whole block at every doubling.
  Buffer b;
  std::string chunk(1 << 20, 'x');
  for (size_t i = 0; i < 40; ++i) b.Append(chunk.data(), chunk.size());
  auto first = MappingOf(b.data());
  REQUIRE(first.second != 0);
  CHECK(MappingOf(b.data() + b.size() - 1) == first);
}

TEST_CASE("a large value appended at once, then grown, keeps its bytes and one mapping") {
  // The first block is advised to use huge pages as it is filled at once; advice on part of
  // it split the mapping, and growing it (mremap) then failed: std::bad_alloc, the proxy
  // aborted (a pipeline of 200 KB SETs and GETs read in at once, on CI).
  Buffer b;
  std::string first(6 << 20, 'f');
  std::string second(6 << 20, 's');
  b.Append(first.data(), first.size());
  if (page_block::kMapped) {
    auto m = MappingOf(b.data());
    REQUIRE(m.second != 0);
    CHECK(MappingOf(b.data() + b.capacity() - 1) == m);
  }
  b.Append(second.data(), second.size());
  REQUIRE(b.size() == 12u << 20);
  CHECK(b.view() == first + second);
  // And a block split some other way still grows (copied instead of moved).
  Buffer c;
  c.Append(first.data(), first.size());
  if (page_block::kMapped) {
    char* mid = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(c.data()) + (3 << 20)) &
                                        ~uintptr_t{4095});
    REQUIRE(madvise(mid, 4096, MADV_NOHUGEPAGE) == 0);
  }
  c.Append(second.data(), second.size());
  CHECK(c.view() == first + second);
}

TEST_CASE("small blocks of every kept size are reused once emptied, and growth keeps the bytes") {
  // 512 B to 4 KB go to this thread's spare list when released and come back, last in first
  // out, to the next buffer of that size; a buffer growing through them keeps its bytes.
  std::string text;
  for (size_t i = 0; i < 4000; ++i) text.push_back(static_cast<char>('a' + i % 26));
  const char* blocks[4] = {};
  for (size_t cls = 0; cls < 4; ++cls) {
    Buffer b;
    b.Append(text.data(), (size_t{512} << cls) - 1);
    CHECK(b.capacity() == size_t{512} << cls);
    blocks[cls] = b.data();
  }
  for (size_t cls = 0; cls < 4; ++cls) {
    Buffer b;
    b.Append(text.data(), (size_t{512} << cls) - 1);
    CHECK(b.data() == blocks[cls]);  // the same storage: taken from the spare list
  }
  Buffer grown;
  for (size_t i = 0; i < text.size(); i += 100) grown.Append(text.data() + i, 100);
  CHECK(grown.capacity() == 4096);
  CHECK(grown.view() == text);
  grown.Consume(3000);
  grown.Append(text.data(), 3000);  // past the largest kept size, with a consumed prefix
  CHECK(grown.view() == text.substr(3000) + text.substr(0, 3000));
  CHECK(SpareBlocks::ClassOf(512) == 0);
  CHECK(SpareBlocks::ClassOf(4096) == 3);
  CHECK(SpareBlocks::ClassOf(8192) == -1);
  CHECK(SpareBlocks::ClassOf(1536) == -1);
  CHECK(SpareBlocks::ClassOf(256) == -1);
  CHECK(SpareBlocks::ClassOf(0) == -1);
}

TEST_CASE("large blocks are kept warm for the next large buffer, bounded, and trimmed when idle") {
  // On a thread of its own: only a thread that enabled the cache (a worker) keeps blocks.
  std::thread([] {
    constexpr size_t kMB = 1 << 20;
    const std::string mb(kMB, 'y');
    auto empty_cache = [] {
      SpareLargeBlocks::Trim(0);
      SpareLargeBlocks::Trim(SpareLargeBlocks::kHoldMs);
    };
    {
      Buffer b;
      for (int i = 0; i < 3; ++i) b.Append(mb.data(), mb.size());
    }
    CHECK(SpareLargeBlocks::bytes() == 0);  // not enabled here yet: freed

    SpareLargeBlocks::Enable(SpareLargeBlocks::kMaxBytes);
    const char* first = nullptr;
    size_t cap = 0;
    {
      Buffer b;
      for (int i = 0; i < 3; ++i) b.Append(mb.data(), mb.size());
      first = b.data();
      cap = b.capacity();
    }
    CHECK(cap == 4 * kMB);
    CHECK(SpareLargeBlocks::bytes() == cap);
#if defined(__SANITIZE_ADDRESS__)
    // Kept blocks are poisoned: a stale pointer into one is reported as after free().
    CHECK(__asan_address_is_poisoned(first) == 1);
    CHECK(__asan_address_is_poisoned(first + cap - 1) == 1);
#endif
    {
      // Growing past 1 MB takes the kept block (its pages already in) and keeps the bytes.
      Buffer b;
      b.Append(mb.data(), 1000);
      b.Append(mb.data(), mb.size());
      CHECK(b.data() == first);
      CHECK(b.capacity() == cap);
#if defined(__SANITIZE_ADDRESS__)
      CHECK(__asan_address_is_poisoned(first + cap - 1) == 0);
#endif
      CHECK(b.view() == mb.substr(0, 1000) + mb);
      CHECK(SpareLargeBlocks::bytes() == 0);
    }
    CHECK(SpareLargeBlocks::bytes() == cap);

    // Idle: kept while given or taken since the last trim, freed kHoldMs after that.
    SpareLargeBlocks::Trim(5000);
    SpareLargeBlocks::Trim(5000 + SpareLargeBlocks::kHoldMs - 1);
    CHECK(SpareLargeBlocks::bytes() == cap);
    SpareLargeBlocks::Trim(5000 + SpareLargeBlocks::kHoldMs);
    CHECK(SpareLargeBlocks::bytes() == 0);

    // At most kMaxBlocks: the smallest goes first.
    {
      constexpr size_t kPage = 4096;
      Buffer b[SpareLargeBlocks::kMaxBlocks + 1];
      for (size_t i = 0; i <= SpareLargeBlocks::kMaxBlocks; ++i) {
        REQUIRE(b[i].TryPrepareWrite(kMB + i * kPage, true));
      }
    }
    size_t kept = 0;
    for (size_t i = 1; i <= SpareLargeBlocks::kMaxBlocks; ++i) kept += kMB + i * 4096;
    CHECK(SpareLargeBlocks::bytes() == kept);
    empty_cache();
    CHECK(SpareLargeBlocks::bytes() == 0);

    // At most kMaxBytes: a block that does not fit beside larger ones is freed, and one
    // larger than the whole bound is never kept.
    {
      Buffer b[3];
      for (auto& x : b) REQUIRE(x.TryPrepareWrite(30 * kMB, true));
    }
    CHECK(SpareLargeBlocks::bytes() == 60 * kMB);
    empty_cache();
    {
      Buffer b;
      REQUIRE(b.TryPrepareWrite(SpareLargeBlocks::kMaxBytes + kMB, true));
    }
    CHECK(SpareLargeBlocks::bytes() == 0);

    // A lower limit frees the smallest blocks now, and refuses blocks past it.
    {
      Buffer b[3];
      for (size_t i = 0; i < 3; ++i) REQUIRE(b[i].TryPrepareWrite((2 + i) * kMB, true));
    }
    CHECK(SpareLargeBlocks::bytes() == (2 + 3 + 4) * kMB);
    SpareLargeBlocks::SetLimit(6 * kMB);
    CHECK(SpareLargeBlocks::bytes() == 4 * kMB);
    SpareLargeBlocks::SetLimit(0);
    CHECK(SpareLargeBlocks::bytes() == 0);
    {
      Buffer b;
      REQUIRE(b.TryPrepareWrite(2 * kMB, true));
    }
    CHECK(SpareLargeBlocks::bytes() == 0);
    SpareLargeBlocks::SetLimit(SpareLargeBlocks::kMaxBytes);

    // A buffer growing past 1 MB takes the smallest kept block that fits, however large: a
    // value still arriving then needs no further step.
    const char* big_block = nullptr;
    const char* small_block = nullptr;
    {
      Buffer big, small;
      REQUIRE(big.TryPrepareWrite(32 * kMB, true));
      REQUIRE(small.TryPrepareWrite(2 * kMB, true));
      big_block = big.data();
      small_block = small.data();
    }
    {
      Buffer b, c;
      b.Append(mb.data(), kMB);
      CHECK(b.data() == small_block);
      c.Append(mb.data(), kMB);
      CHECK(c.data() == big_block);
      CHECK(c.capacity() == 32 * kMB);
      CHECK(SpareLargeBlocks::bytes() == 0);
    }
    empty_cache();
  }).join();
}

}  // namespace
}  // namespace kp
