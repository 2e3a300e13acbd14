// Ring: a FIFO queue in a power-of-two array that grows but never shrinks, so pushing and
// popping in the steady state allocates nothing (std::deque allocates a block every few
// dozen pushes).
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace kp {

template <typename T>
class Ring {
 public:
  bool empty() const { return head_ == tail_; }
  size_t size() const { return tail_ - head_; }
  T& front() { return items_[head_ & mask_]; }
  const T& front() const { return items_[head_ & mask_]; }
  T& back() { return items_[(tail_ - 1) & mask_]; }
  T& operator[](size_t i) { return items_[(head_ + i) & mask_]; }
  const T& operator[](size_t i) const { return items_[(head_ + i) & mask_]; }

  void push_back(T v) {
    if (size() == items_.size()) Grow();
    items_[tail_ & mask_] = std::move(v);
    ++tail_;
  }
  void pop_front() { ++head_; }
  void clear() { head_ = tail_ = 0; }
  void swap(Ring& o) {
    items_.swap(o.items_);
    std::swap(head_, o.head_);
    std::swap(tail_, o.tail_);
    std::swap(mask_, o.mask_);
  }

 private:
  void Grow() {
    size_t n = items_.empty() ? 16 : items_.size() * 2;
    std::vector<T> next(n);
    for (size_t i = 0; i < size(); ++i) next[i] = std::move(items_[(head_ + i) & mask_]);
    tail_ = size();
    head_ = 0;
    items_.swap(next);
    mask_ = n - 1;
  }

  std::vector<T> items_;
  size_t head_ = 0;
  size_t tail_ = 0;
  size_t mask_ = 0;
};

}  // namespace kp
