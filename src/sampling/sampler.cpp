// Sampling: penalties, greedy argmax, and temperature with top-k / top-p / min-p
// truncation, in the order documented in include/kmq/sampling.h.
#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <numeric>
#include <unordered_map>

#include "kmq/error.h"
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

void validate(const SamplerOptions& o) {
  auto bad = [](const char* opt, double v, const char* want) {
    throw Error(fmt::format("{} {} is out of range ({})", opt, v, want));
  };
  if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature)) bad("--temp", o.temperature, "0 = greedy, or > 0");
  if (o.top_k < 0) bad("--top-k", o.top_k, "0 = off, or >= 1");
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) bad("--top-p", o.top_p, "(0, 1], 1 = off");
  if (!(o.min_p >= 0.0f && o.min_p <= 1.0f)) bad("--min-p", o.min_p, "[0, 1], 0 = off");
  if (!(o.repeat_penalty > 0.0f) || !std::isfinite(o.repeat_penalty)) bad("--repeat-penalty", o.repeat_penalty, "> 0, 1 = off");
  if (!std::isfinite(o.presence_penalty)) bad("--presence-penalty", o.presence_penalty, "finite");
  if (!std::isfinite(o.frequency_penalty)) bad("--frequency-penalty", o.frequency_penalty, "finite");
  if (o.penalty_last_n < -1) bad("--repeat-last-n", o.penalty_last_n, "-1 = all, 0 = off, or >= 1");
}

int32_t argmax(const float* logits, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (logits[i] > logits[best] || (std::isnan(logits[best]) && !std::isnan(logits[i]))) best = i;
  return int32_t(best);
}

std::vector<float> apply_penalties(const float* logits, int64_t n, const SamplerOptions& o,
                                   std::span<const int32_t> history) {
  std::vector<float> out(logits, logits + n);
  if (!o.penalties_active() || history.empty()) return out;
  size_t window = history.size();
  if (o.penalty_last_n > 0) window = std::min(window, size_t(o.penalty_last_n));
  std::unordered_map<int32_t, int> count;
  for (size_t i = history.size() - window; i < history.size(); ++i)
    if (history[i] >= 0 && history[i] < n) ++count[history[i]];
  for (auto [id, c] : count) {
    float& l = out[size_t(id)];
    if (o.repeat_penalty != 1.0f) l = l > 0 ? l / o.repeat_penalty : l * o.repeat_penalty;
    l -= float(c) * o.frequency_penalty + o.presence_penalty;
  }
  return out;
}

std::vector<std::pair<int32_t, double>> sampling_distribution(const float* raw, int64_t n, const SamplerOptions& o,
                                                              std::span<const int32_t> history) {
  if (n <= 0) throw Error("sampling from an empty vocabulary");
  std::vector<float> penalized;
  const float* logits = raw;
  if (o.penalties_active() && !history.empty()) {
    penalized = apply_penalties(raw, n, o, history);
    logits = penalized.data();
  }
  if (o.temperature <= 0.0f) return {{argmax(logits, n), 1.0}};
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 0);
  // Candidates by logit, descending, lowest id first on ties (NaN last): deterministic.
  auto key = [&](int32_t a) { return std::isnan(logits[a]) ? -INFINITY : logits[a]; };
  auto better = [&](int32_t a, int32_t b) { return key(a) > key(b) || (key(a) == key(b) && a < b); };
  const int64_t k = (o.top_k > 0 && o.top_k < n) ? o.top_k : n;
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), better);
  ids.resize(size_t(k));
  const double mx = key(ids[0]);
  if (!std::isfinite(mx)) return {{ids[0], 1.0}};  // every logit -inf or NaN: nothing to draw from
  std::vector<double> p(static_cast<size_t>(k));
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += p[size_t(i)] = std::exp((double(key(ids[size_t(i)])) - mx) / o.temperature);
  for (auto& v : p) v /= sum;
  int64_t keep = k;
  while (keep > 1 && p[size_t(keep - 1)] == 0.0) --keep;  // -inf logits (or underflow) are never drawn
  if (o.top_p < 1.0f) {
    double cum = 0;
    for (int64_t i = 0; i < keep; ++i) {
      cum += p[size_t(i)];
      if (cum >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (o.min_p > 0.0f) {
    const double thr = o.min_p * p[0];
    int64_t m = 1;
    while (m < keep && p[size_t(m)] >= thr) ++m;
    keep = m;
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += p[size_t(i)];
  std::vector<std::pair<int32_t, double>> out(static_cast<size_t>(keep));
  for (int64_t i = 0; i < keep; ++i) out[size_t(i)] = {ids[size_t(i)], p[size_t(i)] / total};
  return out;
}

int32_t sample(const float* logits, int64_t n, const SamplerOptions& o, Rng& rng, std::span<const int32_t> history) {
  if (o.temperature <= 0.0f && !(o.penalties_active() && !history.empty())) return argmax(logits, n);
  const auto dist = sampling_distribution(logits, n, o, history);
  if (o.temperature <= 0.0f) return dist[0].first;
  double r = rng.uniform();
  for (const auto& [id, p] : dist) {
    r -= p;
    if (r < 0) return id;
  }
  return dist.back().first;
}

}  // namespace kmq
