// Buffer: a growable byte buffer with a read position and a write position.
// Connections read into the free tail and parsers consume from the head; capacity is kept
// between uses so the steady state allocates nothing.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <utility>

#include "common/page_block.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace kp {

// A block kept for reuse is freed memory as far as the program is concerned: under ASan it
// is poisoned while kept, so a stale pointer into it is still reported (as free() would).
inline void PoisonKept(const char* p, size_t n) {
#if defined(__SANITIZE_ADDRESS__)
  ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)p;
  (void)n;
#endif
}
inline void UnpoisonKept(const char* p, size_t n) {
#if defined(__SANITIZE_ADDRESS__)
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p;
  (void)n;
#endif
}

// Calls Fn when the calling thread exits, once however often Arm() is called on it: the spare
// lists below free what they keep. Their lists themselves are trivially destructible, so they
// stay usable while the thread's destructors run.
template <void (*Fn)()>
class AtThreadExit {
 public:
  static void Arm() {
    thread_local AtThreadExit once;
    (void)once;
  }
  AtThreadExit(const AtThreadExit&) = delete;
  AtThreadExit& operator=(const AtThreadExit&) = delete;
  ~AtThreadExit() { Fn(); }

 private:
  AtThreadExit() = default;
};

// This thread's spare small blocks (512 bytes to 4 KB), handed to the next buffer that needs
// one of that size. At P=1 a client's reply buffer is filled and emptied (and, to keep idle
// clients small, released) on every request, and at P=16 it grows past its first block on
// every batch; malloc's own per-thread cache holds only 7 blocks of a size, so fifty clients
// answered in one loop turn took its slow path for most of them. Bounded: 128 KB of blocks
// per size class and thread at most.
class SpareBlocks {
 public:
  static constexpr size_t kSmallest = 512;
  static constexpr size_t kClasses = 4;  // 512, 1024, 2048, 4096
  static constexpr size_t kLargest = kSmallest << (kClasses - 1);
  // The class of a block of n bytes, or -1 when n is not one of the sizes kept.
  static int ClassOf(size_t n) {
    if (n == kSmallest) return 0;  // nearly always
    const size_t k = n / kSmallest;
    if (k == 0 || k > (size_t{1} << (kClasses - 1)) || (n & (n - 1)) != 0) return -1;
    return std::countr_zero(k);
  }
  static char* Take(int cls) {
    List& l = Mine();
    size_t& n = l.n[cls];
    if (n == 0) return nullptr;
    char* p = l.blocks[cls][--n];
    UnpoisonKept(p, kSmallest << cls);
    return p;
  }
  // False when the caller must free the block itself: the class is full, or this thread is
  // exiting and its list was already emptied (buffers held by other thread-local objects
  // are destroyed in any order relative to it).
  static bool Give(int cls, char* p) {
    List& l = Mine();
    size_t& n = l.n[cls];
    if (l.closed || n == Bound(cls)) return false;
    AtThreadExit<&Close>::Arm();
    PoisonKept(p, kSmallest << cls);
    l.blocks[cls][n++] = p;
    return true;
  }

 private:
  static constexpr size_t kMaxPerClass = 256;
  // 256 blocks of 512 bytes, 128 of 1 KB, ...: the same bytes in every class.
  static constexpr size_t Bound(int cls) { return kMaxPerClass >> cls; }
  // Trivially destructible, so it stays usable while the thread's destructors run.
  struct List {
    char* blocks[kClasses][kMaxPerClass];
    size_t n[kClasses];
    bool closed;
  };
  // At thread exit: frees the kept blocks, and any released later.
  static void Close() {
    List& l = Mine();
    for (size_t c = 0; c < kClasses; ++c) {
      for (size_t i = 0; i < l.n[c]; ++i) {
        UnpoisonKept(l.blocks[c][i], kSmallest << c);
        std::free(l.blocks[c][i]);
      }
      l.n[c] = 0;
    }
    l.closed = true;
  }
  static List& Mine() {
    thread_local List list{};
    return list;
  }
};

// This thread's spare large blocks (1 MB and up), kept warm for the next large value. A
// 16 MB SET's buffer is handed to the backend connection and freed once written, and the next
// one grows a fresh buffer through 1, 2, 4, 8 and 16 MB, every page faulted in (and zeroed)
// again: a third of the proxy's CPU on 16 MB SETs went to page faults (`perf`), on a host
// where a freed page goes back to the hypervisor. Only threads that trim the cache
// (workers, once per tick) keep blocks; bounded to kMaxBlocks blocks and the thread's limit
// (SetLimit, at most kMaxBytes), and emptied once no large block was given or taken for
// kHoldMs.
class SpareLargeBlocks {
 public:
  static constexpr size_t kMin = 1024 * 1024;
  static constexpr size_t kMaxBlocks = 16;
  static constexpr size_t kMaxBytes = 64 * 1024 * 1024;
  static constexpr uint64_t kHoldMs = 1000;

  // Blocks this thread releases are kept from now on (a worker, which calls Trim), up to
  // `limit` bytes.
  static void Enable(size_t limit) {
    Mine().enabled = true;
    SetLimit(limit);
  }
  // A new bound (at most kMaxBytes); blocks past it are freed now, smallest first.
  static void SetLimit(size_t limit) {
    List& l = Mine();
    l.limit = std::min(limit, kMaxBytes);
    while (l.bytes > l.limit) FreeSmallest(l);
  }
  // The smallest kept block of at least n bytes, its size in *cap; nullptr when none fits. A
  // buffer growing past 1 MB takes a larger block when that is all there is: a value still
  // arriving then needs no further step (and a block that is emptied goes back at once).
  static char* Take(size_t n, size_t* cap) {
    List& l = Mine();
    size_t best = l.n;
    for (size_t i = 0; i < l.n; ++i) {
      if (l.cap[i] >= n && (best == l.n || l.cap[i] < l.cap[best])) best = i;
    }
    if (best == l.n) return nullptr;
    char* p = l.block[best];
    UnpoisonKept(p, l.cap[best]);
    *cap = l.cap[best];
    l.bytes -= l.cap[best];
    --l.n;
    l.block[best] = l.block[l.n];
    l.cap[best] = l.cap[l.n];
    l.touched = true;
    return p;
  }
  // False when the caller must free the block itself. A full cache gives up its smallest
  // blocks for a larger one.
  static bool Give(char* p, size_t cap) {
    List& l = Mine();
    if (!l.enabled || l.closed || cap > l.limit) return false;
    while (l.n == kMaxBlocks || l.bytes + cap > l.limit) {
      if (l.cap[Smallest(l)] >= cap) return false;
      FreeSmallest(l);
    }
    AtThreadExit<&Close>::Arm();
    PoisonKept(p, cap);
    l.block[l.n] = p;
    l.cap[l.n] = cap;
    ++l.n;
    l.bytes += cap;
    l.touched = true;
    return true;
  }
  // Frees every kept block once none was given or taken for kHoldMs (now_ms: any clock).
  static void Trim(uint64_t now_ms) {
    List& l = Mine();
    if (l.touched || l.n == 0) {
      l.touched = false;
      l.last_ms = now_ms;
      return;
    }
    if (now_ms - l.last_ms >= kHoldMs) FreeAll(l);
  }
  static size_t bytes() { return Mine().bytes; }
  // Bytes of large blocks (kMin and up) this thread handed back to the allocator since the
  // last call. glibc keeps freed blocks below its mmap threshold (16 MB, set in main) in
  // its heaps, where they stay part of the RSS until malloc_trim: the caller trims once a
  // burst of large values is over.
  static size_t TakeFreed() {
    List& l = Mine();
    size_t n = l.freed;
    l.freed = 0;
    return n;
  }
  static void NoteFreed(size_t cap) { Mine().freed += cap; }

 private:
  struct List {
    char* block[kMaxBlocks];
    size_t cap[kMaxBlocks];
    size_t n;
    size_t bytes;
    size_t freed;
    size_t limit;
    uint64_t last_ms;
    bool touched;
    bool enabled;
    bool closed;
  };
  static void Close() {
    FreeAll(Mine());
    Mine().closed = true;
  }
  static size_t Smallest(const List& l) {
    size_t smallest = 0;
    for (size_t i = 1; i < l.n; ++i) {
      if (l.cap[i] < l.cap[smallest]) smallest = i;
    }
    return smallest;
  }
  static void FreeSmallest(List& l) {
    const size_t i = Smallest(l);
    UnpoisonKept(l.block[i], l.cap[i]);
    page_block::Unmap(l.block[i], l.cap[i]);
    l.freed += l.cap[i];
    l.bytes -= l.cap[i];
    --l.n;
    l.block[i] = l.block[l.n];
    l.cap[i] = l.cap[l.n];
  }
  static void FreeAll(List& l) {
    for (size_t i = 0; i < l.n; ++i) {
      UnpoisonKept(l.block[i], l.cap[i]);
      page_block::Unmap(l.block[i], l.cap[i]);
      l.freed += l.cap[i];
    }
    l.n = 0;
    l.bytes = 0;
  }
  static List& Mine() {
    thread_local List list{};
    return list;
  }
};

// What a connection reads at most per read call, and the capacity an emptied buffer of a
// busy connection keeps for its next use (larger is given back: one huge value does not pin
// its memory for the life of the connection).
inline constexpr size_t kReadChunk = 64 * 1024;
inline constexpr size_t kKeepBuffer = 1024 * 1024;

class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      Release(data_, cap_);
      data_ = o.data_;
      cap_ = o.cap_;
      rpos_ = o.rpos_;
      wpos_ = o.wpos_;
      o.data_ = nullptr;
      o.cap_ = o.rpos_ = o.wpos_ = 0;
    }
    return *this;
  }
  ~Buffer() { Release(data_, cap_); }
  void swap(Buffer& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(cap_, o.cap_);
    std::swap(rpos_, o.rpos_);
    std::swap(wpos_, o.wpos_);
  }

  // Readable bytes.
  const char* data() const { return data_ + rpos_; }
  char* data() { return data_ + rpos_; }
  size_t size() const { return wpos_ - rpos_; }
  bool empty() const { return wpos_ == rpos_; }
  std::string_view view() const { return {data(), size()}; }
  size_t capacity() const { return cap_; }

  // Drops n readable bytes from the head.
  void Consume(size_t n) {
    rpos_ += n;
    if (rpos_ == wpos_) rpos_ = wpos_ = 0;
  }
  void Clear() { rpos_ = wpos_ = 0; }

  // Returns space for at least n more bytes at the tail; moves or grows as needed.
  char* PrepareWrite(size_t n) {
    if (cap_ - wpos_ < n) Reserve(n, 0);
    return data_ + wpos_;
  }
  // PrepareWrite's room without the exception: false (the buffer unchanged) when the
  // memory cannot be had.
  // `exact`: grow to just the bytes asked for (an announced value's room) instead of the
  // next power of two, so a 17 MB value reserves 17 MB of address space, not 32.
  bool TryPrepareWrite(size_t n, bool exact = false) {
    try {
      if (cap_ - wpos_ < n) Reserve(n, 0, exact);
      return true;
    } catch (const std::bad_alloc&) {
      return false;
    }
  }
  size_t writable() const { return cap_ - wpos_; }
  // Marks n bytes written into the space PrepareWrite returned.
  void Commit(size_t n) { wpos_ += n; }

  void Append(const char* p, size_t n) {
    if (n == 0) return;  // p may be null (an empty buffer's data()); memcpy forbids that
    if (cap_ - wpos_ < n) Reserve(n, n);
    std::memcpy(data_ + wpos_, p, n);
    wpos_ += n;
  }
  void Append(std::string_view s) { Append(s.data(), s.size()); }

  // Releases memory above `keep` bytes of capacity when the buffer is empty, so one huge
  // request does not pin its memory for the life of the connection.
  void ShrinkIfEmpty(size_t keep) {
    if (empty() && cap_ > keep) {
      Release(data_, cap_);
      data_ = nullptr;
      cap_ = rpos_ = wpos_ = 0;
    }
  }

 private:
  // Small first: ten thousand idle clients hold one each.
  static constexpr size_t kFirstBlock = SpareBlocks::kSmallest;
  [[gnu::always_inline]] static char* Allocate(size_t n) {
    if (n >= SpareLargeBlocks::kMin) return page_block::Map(n);
    const int cls = SpareBlocks::ClassOf(n);
    if (cls >= 0) {
      if (char* p = SpareBlocks::Take(cls)) return p;
    }
    return static_cast<char*>(std::malloc(n));
  }
  static void Release(char* p, size_t cap) {
    if (p == nullptr) return;
    if (cap >= SpareLargeBlocks::kMin) {
      if (SpareLargeBlocks::Give(p, cap)) return;
      SpareLargeBlocks::NoteFreed(cap);
      page_block::Unmap(p, cap);
      return;
    } else if (const int cls = SpareBlocks::ClassOf(cap); cls >= 0 && SpareBlocks::Give(cls, p)) {
      return;
    }
    std::free(p);
  }

  // A buffer about to be filled with this much (a big value copied in) is backed by
  // transparent huge pages where the system offers them on request: each of its pages is
  // otherwise faulted in (and zeroed) 4 KB at a time, which cost more than the copy itself.
  // Not mere room for a read: a client that announces a large value and sends a byte of it
  // must not cost a whole huge page.
  static constexpr size_t kHugeAt = 4u << 20;
  static void AdviseHuge(char* p, size_t n) {
    constexpr uintptr_t kHuge = 2u << 20;
    uintptr_t from = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
    uintptr_t to = (reinterpret_cast<uintptr_t>(p) + n) & ~(kHuge - 1);
    if (to > from) madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
  }
  // The same advice for a block that realloc moves with mremap, over every page of it: advice
  // on part of a mapping splits it in three, after which mremap can no longer move it (EFAULT:
  // the range spans several mappings), and glibc copied the whole block at each doubling: a
  // client's unread replies took about twice their size (RSS 194-245 MB for 135 MB held;
  // 209 MB for 197 MB since).
  static void AdviseHugeWhole(char* p, size_t n) {
    constexpr uintptr_t kPage = 4096;
    uintptr_t from = reinterpret_cast<uintptr_t>(p) & ~(kPage - 1);
    uintptr_t to = (reinterpret_cast<uintptr_t>(p) + n + kPage - 1) & ~(kPage - 1);
    madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
  }

  // `filling`: the bytes about to be written into the new room at once.
  void Reserve(size_t n, size_t filling, bool exact = false) {
    size_t used = wpos_ - rpos_;
    // Compact first when that alone makes room and the move is cheap relative to the space.
    if (rpos_ > 0 && cap_ - used >= n && used <= cap_ / 2) {
      std::memmove(data_, data_ + rpos_, used);
      rpos_ = 0;
      wpos_ = used;
      return;
    }
    // A room past a quarter of the address space is refused: no allocator hands out such a
    // block, and below it the doubling that follows cannot overflow.
    constexpr size_t kMaxCap = SIZE_MAX / 4;
    if (n > kMaxCap - used) throw std::bad_alloc();
    size_t want = used + n;
    size_t ncap = cap_ ? cap_ : kFirstBlock;
    if (exact) {
      constexpr size_t kPage = 4096;
      ncap = std::max(ncap, (want + kPage - 1) / kPage * kPage);
    }
    while (ncap < want) ncap *= 2;
    char* nd;
    if (ncap >= SpareLargeBlocks::kMin) {
      // A warm block beats both paths below: their new pages are faulted in as they fill.
      size_t got = 0;
      if ((nd = SpareLargeBlocks::Take(ncap, &got)) != nullptr) {
        MoveTo(nd, got);
        return;
      }
    }
    // Nothing consumed: the bytes stay where they are when they can, and a large block's pages
    // move rather than being copied (mremap), so a big backlog doubling does not stall the
    // loop copying it. (A small block growing past 1 MB is copied: under 1 MB.)
    const bool large = cap_ >= SpareLargeBlocks::kMin;
    if (rpos_ == 0 && used != 0 && ncap > SpareBlocks::kLargest &&
        large == (ncap >= SpareLargeBlocks::kMin)) {
      nd = large ? page_block::Remap(data_, cap_, ncap, used)
                 : static_cast<char*>(std::realloc(data_, ncap));
      if (!nd) throw std::bad_alloc();
      if (used + filling >= kHugeAt) AdviseHugeWhole(nd, ncap);
      data_ = nd;
      cap_ = ncap;
      return;
    }
    nd = Allocate(ncap);
    if (!nd) throw std::bad_alloc();
    if (used + filling >= kHugeAt) {
      // A mapping of its own is advised whole: split, mremap could no longer move it.
      if (page_block::kMapped && ncap >= SpareLargeBlocks::kMin) {
        AdviseHugeWhole(nd, ncap);
      } else {
        AdviseHuge(nd, ncap);
      }
    }
    MoveTo(nd, ncap);
  }

  // The readable bytes move to the front of the block nd (cap bytes), which replaces ours.
  void MoveTo(char* nd, size_t cap) {
    const size_t used = wpos_ - rpos_;
    if (used) std::memcpy(nd, data_ + rpos_, used);
    Release(data_, cap_);
    data_ = nd;
    cap_ = cap;
    rpos_ = 0;
    wpos_ = used;
  }

  char* data_ = nullptr;
  size_t cap_ = 0;
  size_t rpos_ = 0;
  size_t wpos_ = 0;
};

}  // namespace kp
