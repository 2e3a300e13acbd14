// PageBlock: large buffer blocks (1 MB and up) mapped from the kernel directly rather than
// taken from malloc, so that once freed their pages are gone from the process at once.
// In glibc's heaps they were not: malloc_trim shrinks only the main heap's top, and the top of
// a worker thread's arena keeps up to M_TRIM_THRESHOLD (32 MB here) of freed pages resident
// for good; an idle proxy that had served 16 MB values stayed 49 MB above its start on a CI
// machine. Under ASan the blocks stay with malloc, whose checks then cover them.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace kp::page_block {

#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kMapped = false;
#else
inline constexpr bool kMapped = true;
#endif

inline size_t Round(size_t n) {
  constexpr size_t kPage = 4096;
  return (n + kPage - 1) & ~(kPage - 1);
}

// n bytes of fresh zeroed pages, or nullptr.
inline char* Map(size_t n) {
  if constexpr (!kMapped) return static_cast<char*>(std::malloc(n));
  void* p = mmap(nullptr, Round(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<char*>(p);
}

inline void Unmap(char* p, size_t n) {
  if constexpr (!kMapped) {
    std::free(p);
    return;
  }
  munmap(p, Round(n));
}

// The block grown (or shrunk) to n bytes, its first `keep` bytes kept: the kernel moves its
// pages rather than copying them. nullptr (the old block untouched) when there is no room.
inline char* Remap(char* p, size_t old, size_t n, size_t keep) {
  if constexpr (!kMapped) return static_cast<char*>(std::realloc(p, n));
  void* q = mremap(p, Round(old), Round(n), MREMAP_MAYMOVE);
  if (q != MAP_FAILED) return static_cast<char*>(q);
  // mremap refuses a range that is no longer one mapping (advice given to part of it splits
  // it): a new block, the bytes copied.
  char* fresh = Map(n);
  if (fresh == nullptr) return nullptr;
  std::memcpy(fresh, p, std::min({keep, old, n}));
  Unmap(p, old);
  return fresh;
}

}  // namespace kp::page_block
