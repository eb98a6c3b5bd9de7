// Lloyd's algorithm with k-means++ seeding for 1-D data: the classic large-group method
// (1-Bit Wonder's Lloyd-Max), kept as a reference and for comparison with kmeans_1d's
// histogram method, which reaches a lower SSE in less time.
#include <algorithm>
#include <cmath>
#include <string>

#include "kmq/error.h"
#include "kmq/quant.h"
#include "quant/kmeans.h"

namespace kmq {
namespace {

// SplitMix64: a tiny generator whose stream is fixed by the seed on every platform
// (std:: distributions are not specified bit for bit).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1p-53; }  // [0, 1)
};

// Index i drawn with probability p[i] / total (p >= 0, total > 0).
int64_t draw(const std::vector<double>& p, double total, SplitMix64& rng) {
  const double target = rng.uniform() * total;
  double acc = 0;
  int64_t last = -1;
  for (int64_t i = 0; i < int64_t(p.size()); ++i) {
    if (p[i] <= 0) continue;
    acc += p[i];
    last = i;
    if (acc > target) return i;
  }
  return last;  // rounding left acc just short of target
}

}  // namespace

std::vector<float> kmeans_1d_lloyd(const float* x, const float* weights, int64_t n, int k,
                                   int iters, uint64_t seed) {
  detail::check_kmeans_input(x, weights, n, k);
  if (iters < 0) throw Error("kmeans_1d_lloyd: iters must be >= 0");
  const float* w = weights;
  if (w) {
    double tw = 0;
    for (int64_t i = 0; i < n; ++i) tw += w[i];
    if (!(tw > 0)) w = nullptr;  // all weights zero: fit the plain values
  }
  std::vector<float> out(k, 0.0f);
  if (n == 0) return out;
  auto wt = [&](int64_t i) { return w ? double(w[i]) : 1.0; };

  // k-means++: the first centre drawn by weight, each next one by weight * D^2 (distance
  // to the nearest centre so far). Stops early when every point sits on a centre.
  SplitMix64 rng{seed};
  std::vector<double> d2(n);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += d2[i] = wt(i);
  std::vector<double> c;
  c.reserve(k);
  while (int(c.size()) < k && total > 0) {
    const double ci = x[draw(d2, total, rng)];
    c.push_back(ci);
    total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = double(x[i]) - ci;
      const double v = wt(i) * d * d;
      if (c.size() == 1 || v < d2[i]) d2[i] = v;
      total += d2[i];
    }
  }
  while (int(c.size()) < k) c.push_back(c.back());  // fewer distinct values than k
  std::sort(c.begin(), c.end());

  // Lloyd: thresholds at midpoints (ties go left), centroids to cluster means; an empty
  // cluster keeps its centroid. Equal cluster counts mean an unchanged partition in 1-D.
  const int pow2 = detail::pow2_at_least(k);
  std::vector<double> th(pow2, std::numeric_limits<double>::infinity());
  std::vector<int64_t> cnt(k, -1), new_cnt(k);
  std::vector<double> sw(k), sx(k);
  for (int it = 0; it < iters; ++it) {
    for (int j = 0; j + 1 < k; ++j) th[j] = 0.5 * (c[j] + c[j + 1]);
    std::fill(new_cnt.begin(), new_cnt.end(), 0);
    std::fill(sw.begin(), sw.end(), 0.0);
    std::fill(sx.begin(), sx.end(), 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const double wi = wt(i);
      if (!(wi > 0)) continue;
      const int j = detail::bucket_of(th.data(), pow2, x[i]);
      new_cnt[j] += 1;
      sw[j] += wi;
      sx[j] += wi * double(x[i]);
    }
    if (new_cnt == cnt) break;
    cnt = new_cnt;
    for (int j = 0; j < k; ++j)
      if (sw[j] > 0) c[j] = sx[j] / sw[j];
    std::sort(c.begin(), c.end());
  }
  for (int j = 0; j < k; ++j) out[j] = float(c[j]);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace kmq
