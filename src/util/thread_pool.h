// A fixed pool of worker threads for data-parallel loops (rows of a matmul, heads of
// attention). run(n, fn) calls fn(i) for i in [0, n) spread over the threads and the
// caller, and returns when all are done.
//
// Decoding a token issues a few hundred short parallel loops, so the hand-off must cost
// microseconds: between loops, workers spin on an atomic generation counter for a while
// (about 100 us) before sleeping on a condition variable; tasks are claimed with an
// atomic counter and completion is an atomic count the caller spins on.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kmq {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // total threads including the caller; <= 0: hardware
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  // fn(task, thread_index) for task in [0, n_tasks); thread_index in [0, size()).
  // Not reentrant: one run at a time, from one thread.
  void run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

 private:
  void worker(int index);
  void work(int index);
  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int64_t, int)>* fn_ = nullptr;  // published by generation_
  int64_t n_tasks_ = 0;                                     // published by generation_
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};  // workers that have not finished the current generation
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace kmq
