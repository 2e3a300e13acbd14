// Buffer: a growable byte buffer with a read position and a write position.
// Connections read into the free tail and parsers consume from the head; capacity is kept
// between uses so the steady state allocates nothing.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>

namespace kp {

class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      std::free(data_);
      data_ = o.data_;
      cap_ = o.cap_;
      rpos_ = o.rpos_;
      wpos_ = o.wpos_;
      o.data_ = nullptr;
      o.cap_ = o.rpos_ = o.wpos_ = 0;
    }
    return *this;
  }
  ~Buffer() { std::free(data_); }

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
    if (cap_ - wpos_ < n) Reserve(n);
    return data_ + wpos_;
  }
  size_t writable() const { return cap_ - wpos_; }
  // Marks n bytes written into the space PrepareWrite returned.
  void Commit(size_t n) { wpos_ += n; }

  void Append(const char* p, size_t n) {
    if (n == 0) return;  // p may be null (an empty buffer's data()); memcpy forbids that
    std::memcpy(PrepareWrite(n), p, n);
    wpos_ += n;
  }
  void Append(std::string_view s) { Append(s.data(), s.size()); }

  // Releases memory above `keep` bytes of capacity when the buffer is empty, so one huge
  // request does not pin its memory for the life of the connection.
  void ShrinkIfEmpty(size_t keep) {
    if (empty() && cap_ > keep) {
      std::free(data_);
      data_ = nullptr;
      cap_ = rpos_ = wpos_ = 0;
    }
  }

 private:
  void Reserve(size_t n) {
    size_t used = wpos_ - rpos_;
    // Compact first when that alone makes room and the move is cheap relative to the space.
    if (rpos_ > 0 && cap_ - used >= n && used <= cap_ / 2) {
      std::memmove(data_, data_ + rpos_, used);
      rpos_ = 0;
      wpos_ = used;
      return;
    }
    size_t want = used + n;
    size_t ncap = cap_ ? cap_ : 512;  // small first: ten thousand idle clients hold one each
    while (ncap < want) ncap *= 2;
    char* nd = static_cast<char*>(std::malloc(ncap));
    if (!nd) throw std::bad_alloc();
    if (used) std::memcpy(nd, data_ + rpos_, used);
    std::free(data_);
    data_ = nd;
    cap_ = ncap;
    rpos_ = 0;
    wpos_ = used;
  }

  char* data_ = nullptr;
  size_t cap_ = 0;
  size_t rpos_ = 0;
  size_t wpos_ = 0;
};

}  // namespace kp
