// Sampling: greedy argmax, and temperature with top-k / top-p / min-p truncation.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "kmq/sampling.h"

namespace kmq {

Rng::Rng(uint64_t seed) {
  // splitmix64 expands the seed into the state
  uint64_t z = seed;
  for (auto& s : s_) {
    z += 0x9e3779b97f4a7c15ull;
    uint64_t x = z;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    s = x ^ (x >> 31);
  }
}

uint64_t Rng::next() {
  auto rotl = [](uint64_t x, int k) { return (x << k) | (x >> (64 - k)); };
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return double(next() >> 11) * 0x1.0p-53; }

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return int32_t(best);
}

int32_t sample(const float* logits, int64_t n, const SamplerOptions& o, Rng& rng) {
  if (o.temperature <= 0.0f) return argmax(logits, n);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 0);
  // Sort candidates by logit (descending, lowest id first on ties): deterministic.
  auto better = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  int64_t k = (o.top_k > 0 && o.top_k < n) ? o.top_k : n;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), better);
  ids.resize(size_t(k));
  std::vector<double> p(static_cast<size_t>(k));
  const double mx = logits[ids[0]];
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += p[i] = std::exp((logits[ids[i]] - mx) / o.temperature);
  for (auto& v : p) v /= sum;
  int64_t keep = k;
  if (o.top_p < 1.0f) {
    double cum = 0;
    for (int64_t i = 0; i < k; ++i) {
      cum += p[i];
      if (cum >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (o.min_p > 0.0f) {
    const double thr = o.min_p * p[0];
    int64_t m = 1;
    while (m < keep && p[m] >= thr) ++m;
    keep = m;
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += p[i];
  double r = rng.uniform() * total;
  for (int64_t i = 0; i < keep; ++i) {
    r -= p[i];
    if (r < 0) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace kmq
