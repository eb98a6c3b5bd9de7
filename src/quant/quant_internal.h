// Helpers shared by the quantizers of src/quant (quantize.cpp, quantize_hessian.cpp):
// storage rounding of scales and centroids, the index layout of a quantized tensor, and a
// deterministic parallel loop over rows.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "kmq/quant.h"
#include "util/half.h"

namespace kmq::qdetail {

constexpr int kMaxLevels = 16;

inline float max_finite(DType t) {
  return t == DType::kF16    ? 65504.0f
         : t == DType::kBF16 ? bf16_to_f32(0x7f7f)
                             : std::numeric_limits<float>::max();
}
inline float min_positive(DType t) {
  return t == DType::kF16    ? 0x1p-24f
         : t == DType::kBF16 ? 0x1p-133f
                             : std::numeric_limits<float>::denorm_min();
}

// Nearest value representable in t; overflow clamps to the largest finite value.
inline float round_to(DType t, float v) {
  float r = t == DType::kF16 ? round_f16(v) : t == DType::kBF16 ? round_bf16(v) : v;
  if (std::isinf(r)) r = std::copysign(max_finite(t), v);
  return r;
}

// A block scale as stored. 0 only for an all-zero block (any index reconstructs it); a
// positive scale that would round to 0 becomes the dtype's smallest positive value, so
// that w / scale stays finite (and within [-1, 1] for absmax).
inline float round_scale(DType t, double v) {
  if (v == 0) return 0.0f;
  const float r = round_to(t, float(v));
  return r > 0 ? r : min_positive(t);
}

struct Layout {
  int64_t rows, cols;
  int k;  // 2^bits
  CodebookScope scope;
  int64_t group;     // weights per codebook (kGroup), else cols
  int64_t n_groups;  // codebooks per row (kGroup), else 1
  int64_t sb;        // scale block, 0 = none
  int64_t n_sb;
  const float* cb_of(const std::vector<float>& cbs, int64_t r, int64_t j) const {
    const int64_t c = scope == CodebookScope::kTensor ? 0
                      : scope == CodebookScope::kRow  ? r
                                                      : r * n_groups + j / group;
    return cbs.data() + c * k;
  }
};

// fn(item, worker) for item in [0, n) on `threads` threads, the caller included. Items are
// handed out one at a time, so the results must depend only on the item.
template <class Fn>
void parallel_for(int threads, int64_t n, Fn&& fn) {
  threads = int(std::min<int64_t>(threads, n));
  if (threads <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr err;
  std::mutex mu;
  auto work = [&](int t) {
    try {
      for (int64_t i; (i = next.fetch_add(1)) < n;) fn(i, t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
      next = n;
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
  if (err) std::rethrow_exception(err);
}

// A fitted codebook as stored: rounded to its dtype, sorted.
inline void finish_codebook(DType t, float* cb, int k) {
  for (int i = 0; i < k; ++i) cb[i] = round_to(t, cb[i]);
  std::sort(cb, cb + k);
}

}  // namespace kmq::qdetail
