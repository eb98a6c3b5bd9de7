// measure_read_bandwidth(): threads start each pass together (a barrier), read their
// slices, and meet again; a pass lasts from the first barrier to the second, on the
// calling thread (which reads slice 0 itself).
#include "util/mem_bandwidth.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "kmq/error.h"

namespace kmq {
namespace {

// Sums n 64-bit words with 8 independent accumulators (64 bytes per step: the compiler
// turns it into vector loads; the adds are never the bottleneck next to DRAM).
uint64_t sum_words(const uint64_t* p, size_t n) {
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    a0 += p[i];
    a1 += p[i + 1];
    a2 += p[i + 2];
    a3 += p[i + 3];
    a4 += p[i + 4];
    a5 += p[i + 5];
    a6 += p[i + 6];
    a7 += p[i + 7];
  }
  for (; i < n; ++i) a0 += p[i];
  return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

std::atomic<uint64_t> g_sink{0};  // keeps the sums alive

}  // namespace

BandwidthResult measure_read_bandwidth(int threads, uint64_t bytes, int passes) {
  if (threads < 1) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  if (passes < 1) passes = 1;
  constexpr uint64_t kAlign = 4096;
  bytes = std::max<uint64_t>(kAlign * uint64_t(threads), bytes / kAlign * kAlign);
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> buf(std::aligned_alloc(kAlign, bytes));
  if (!buf) throw Error(fmt::format("bandwidth probe: cannot allocate {:.0f} MiB", double(bytes) / (1 << 20)));
  const size_t n_words = bytes / 8;
  auto* words = static_cast<uint64_t*>(buf.get());

  // Slices of whole 4 KiB pages; the last thread takes the rest.
  const size_t per = (n_words / size_t(threads)) / 512 * 512;
  auto slice = [&](int t, size_t& begin, size_t& count) {
    begin = per * size_t(t);
    count = t == threads - 1 ? n_words - begin : per;
  };
  std::barrier sync(threads);
  auto pass = [&](int t) {
    size_t b, c;
    slice(t, b, c);
    g_sink.fetch_add(sum_words(words + b, c), std::memory_order_relaxed);
  };
  // Each thread first writes its own slice (pages land on its own node where that matters).
  auto fill = [&](int t) {
    size_t b, c;
    slice(t, b, c);
    for (size_t i = 0; i < c; ++i) words[b + i] = (b + i) * 0x9e3779b97f4a7c15ull;
  };
  const int total = passes + 1;  // one untimed warm-up pass
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back([&, t] {
      fill(t);
      for (int p = 0; p < total; ++p) {
        sync.arrive_and_wait();
        pass(t);
        sync.arrive_and_wait();
      }
    });
  fill(0);
  std::vector<double> secs;
  for (int p = 0; p < total; ++p) {
    sync.arrive_and_wait();
    const auto t0 = std::chrono::steady_clock::now();
    pass(0);
    sync.arrive_and_wait();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (p > 0) secs.push_back(s);
  }
  for (auto& th : pool) th.join();

  BandwidthResult r;
  r.threads = threads;
  r.bytes = bytes;
  r.passes = passes;
  double sum = 0;
  for (double s : secs) {
    const double gbs = double(bytes) / s / 1e9;
    r.gb_per_s = std::max(r.gb_per_s, gbs);
    sum += gbs;
  }
  r.mean_gb_per_s = sum / double(secs.size());
  return r;
}

}  // namespace kmq
