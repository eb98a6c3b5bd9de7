// ThreadPool: every task runs exactly once per run(), on a valid thread index, and the
// results written by the workers are visible to the caller when run() returns. Written to
// be run under ThreadSanitizer (scripts/sanitize.sh tsan) as well as normally.
#include <doctest/doctest.h>

#include <atomic>
#include <numeric>
#include <vector>

#include "util/thread_pool.h"

using kmq::ThreadPool;

TEST_CASE("thread pool: each task once, results visible after run") {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    CHECK(pool.size() == threads);
    for (int64_t n : {0, 1, 2, 7, 64, 1000}) {
      std::vector<int> hits(size_t(n), 0);  // plain ints: run() must order the writes
      std::vector<int> who(size_t(n), -1);
      pool.run(n, [&](int64_t i, int t) {
        ++hits[size_t(i)];
        who[size_t(i)] = t;
      });
      for (int64_t i = 0; i < n; ++i) {
        CHECK(hits[size_t(i)] == 1);
        CHECK(who[size_t(i)] >= 0);
        CHECK(who[size_t(i)] < threads);
      }
    }
  }
}

TEST_CASE("thread pool: many short runs back to back, then destruction") {
  std::atomic<int64_t> total{0};
  {
    ThreadPool pool(4);
    std::vector<double> acc(4, 0.0);  // per-thread partial sums, as the kernels keep them
    for (int r = 0; r < 2000; ++r) {
      std::fill(acc.begin(), acc.end(), 0.0);
      pool.run(r % 13, [&](int64_t i, int t) {
        acc[size_t(t)] += double(i);
        total.fetch_add(1, std::memory_order_relaxed);
      });
      const int64_t n = r % 13;
      CHECK(std::accumulate(acc.begin(), acc.end(), 0.0) == double(n * (n - 1) / 2));
    }
  }
  int64_t expect = 0;
  for (int r = 0; r < 2000; ++r) expect += r % 13;
  CHECK(total.load() == expect);
}

TEST_CASE("thread pool: pools created and destroyed while idle or right after a run") {
  for (int k = 0; k < 50; ++k) {
    ThreadPool pool(3);
    if (k % 2) {
      std::vector<int> v(16, 0);
      pool.run(16, [&](int64_t i, int) { v[size_t(i)] = int(i); });
      CHECK(v[15] == 15);
    }
  }
}
