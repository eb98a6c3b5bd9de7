// ThreadPool: workers sleep on a condition variable between jobs; tasks are handed out
// by a shared counter under the mutex (tasks are coarse: a block of rows or a head).
#include "util/thread_pool.h"

#include <algorithm>

namespace kmq {

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = int(std::max(1u, std::thread::hardware_concurrency()));
  n_threads_ = n_threads;
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  if (n_threads_ == 1 || n_tasks <= 1) {
    for (int64_t i = 0; i < n_tasks; ++i) fn(i, 0);
    return;
  }
  std::unique_lock<std::mutex> lk(mu_);
  fn_ = &fn;
  n_tasks_ = n_tasks;
  next_ = 0;
  active_ = n_threads_ - 1;
  ++generation_;
  cv_start_.notify_all();
  for (;;) {
    if (next_ >= n_tasks_) break;
    int64_t i = next_++;
    lk.unlock();
    fn(i, 0);
    lk.lock();
  }
  cv_done_.wait(lk, [&] { return active_ == 0; });
  fn_ = nullptr;
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_start_.wait(lk, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    while (next_ < n_tasks_) {
      int64_t i = next_++;
      lk.unlock();
      (*fn_)(i, index);
      lk.lock();
    }
    if (--active_ == 0) cv_done_.notify_all();
  }
}

}  // namespace kmq
