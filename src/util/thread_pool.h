// A fixed pool of worker threads for data-parallel loops (rows of a matmul, heads of
// attention). run(n, fn) calls fn(i) for i in [0, n) spread over the threads and the
// caller, and returns when all are done.
#pragma once
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
  void run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

 private:
  void worker(int index);
  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  int64_t next_ = 0;
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace kmq
