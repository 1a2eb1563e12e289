// FixedRing<T>: a first-in first-out queue of at most `capacity` items, in storage allocated once
// (Init), for the queues of the data path, which must not allocate per item (a std::deque
// allocates a chunk every few pushes as it moves).
//
// Pushing onto a full ring is the caller's bug: a caller bounds what it pushes, by full() or by
// sizing the ring to what can be in flight. A popped item's slot is reset to T{}, releasing what
// it held. Thread safety: none.
#pragma once

#include <cassert>
#include <cstddef>
#include <utility>
#include <vector>

namespace blkmirror {

template <typename T>
class FixedRing {
 public:
  FixedRing() = default;
  explicit FixedRing(size_t capacity) { Init(capacity); }

  // Setup: `capacity` empty slots (the only allocation).
  void Init(size_t capacity) {
    slots_.clear();
    slots_.resize(capacity);
    head_ = count_ = 0;
  }

  size_t capacity() const { return slots_.size(); }
  size_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  bool full() const { return count_ == slots_.size(); }

  T& front() {
    assert(!empty());
    return slots_[head_];
  }
  // The item `i` places behind the front.
  T& operator[](size_t i) {
    assert(i < count_);
    return slots_[Wrap(head_ + i)];
  }

  void push_back(T item) {
    assert(!full());
    slots_[Wrap(head_ + count_)] = std::move(item);
    ++count_;
  }
  void pop_front() {
    assert(!empty());
    slots_[head_] = T{};
    head_ = Wrap(head_ + 1);
    --count_;
  }
  void clear() {
    while (!empty()) pop_front();
  }

  // Removes the items for which `drop(item)` is true; the others keep their order.
  template <typename Pred>
  void erase_if(Pred drop) {
    size_t kept = 0;
    for (size_t i = 0; i < count_; ++i) {
      T& item = slots_[Wrap(head_ + i)];
      if (drop(item)) continue;
      if (kept != i) slots_[Wrap(head_ + kept)] = std::move(item);
      ++kept;
    }
    for (size_t i = kept; i < count_; ++i) slots_[Wrap(head_ + i)] = T{};
    count_ = kept;
  }

 private:
  // head_ + i for i <= capacity never reaches twice the capacity.
  size_t Wrap(size_t i) const { return i < slots_.size() ? i : i - slots_.size(); }

  std::vector<T> slots_;
  size_t head_ = 0;
  size_t count_ = 0;
};

}  // namespace blkmirror
