// Exact 1-D k-means by dynamic programming over sorted values, and the public kmeans_1d
// entry point that chooses between it and the histogram method (kmeans_hist.cpp).
//
// The DP: with points sorted, optimal clusters are contiguous runs. Minimising the
// weighted SSE sum(Q - S^2/W) over clusters equals maximising sum(S^2/W), since sum(Q) is
// fixed; with prefix sums of W and S every cluster's gain is O(1). D[j][i] (best gain of
// the first i points in j clusters) = max_t D[j-1][t] + gain(t, i). The optimal t is
// monotone in i (the gain satisfies the quadrangle inequality), so each layer is filled by
// divide and conquer: O(k * m * log m) gain evaluations for m distinct values. It is also
// monotone in j, which narrows each search to start at the previous layer's optimum
// (about 3x fewer evaluations at k = 16).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "kmq/error.h"
#include "kmq/quant.h"
#include "quant/kmeans.h"

namespace kmq {
namespace detail {
namespace {

// gain(t, i) of the cluster of points [t, i): S^2 / W, S relative to the shift.
struct DistinctGain {  // unit weights, distinct values: W = i - t
  const double* ps;
  const double* recip;
  double operator()(int64_t t, int64_t i) const {
    const double d = ps[i] - ps[t];
    return d * d * recip[i - t];
  }
};

struct UnitGain {  // integer weights: W is a count, 1/W comes from a table
  const double* ps;
  const int32_t* pc;
  const double* recip;
  double operator()(int64_t t, int64_t i) const {
    const double d = ps[i] - ps[t];
    return d * d * recip[pc[i] - pc[t]];
  }
};

struct WeightGain {
  const double* ps;
  const double* pw;
  double operator()(int64_t t, int64_t i) const {
    const double d = ps[i] - ps[t];
    const double w = pw[i] - pw[t];
    return w > 0 ? d * d / w : 0.0;  // w > 0 always in exact arithmetic; guards rounding
  }
};

// Smallest t in [a, b] maximising prev[t] + g(t, i) (a <= b); *best gets the maximum.
// Long ranges use four independent running maxima (t = a + 4n + u), breaking the
// compare-select dependency chain; merging them keeps the smallest index among equal
// maxima, so the result equals the plain sequential scan used for short ranges.
template <class Gain>
inline int64_t argmax_t(const Gain& g, const double* prev, int64_t i, int64_t a, int64_t b,
                        double* best_out) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  if (b - a < 16) {
    double best = kNegInf;
    int64_t bt = a;
    for (int64_t t = a; t <= b; ++t) {
      const double v = prev[t] + g(t, i);
      if (v > best) {
        best = v;
        bt = t;
      }
    }
    *best_out = best;
    return bt;
  }
  // Lanes as named scalars: GCC keeps them in registers and uses selects (an array of
  // four ends up in memory behind branches).
  double v0 = kNegInf, v1 = kNegInf, v2 = kNegInf, v3 = kNegInf;
  int64_t i0 = a, i1 = a, i2 = a, i3 = a;
  int64_t t = a;
  for (; t + 3 <= b; t += 4) {
    const double w0 = prev[t] + g(t, i), w1 = prev[t + 1] + g(t + 1, i);
    const double w2 = prev[t + 2] + g(t + 2, i), w3 = prev[t + 3] + g(t + 3, i);
    i0 = w0 > v0 ? t : i0;
    v0 = w0 > v0 ? w0 : v0;
    i1 = w1 > v1 ? t + 1 : i1;
    v1 = w1 > v1 ? w1 : v1;
    i2 = w2 > v2 ? t + 2 : i2;
    v2 = w2 > v2 ? w2 : v2;
    i3 = w3 > v3 ? t + 3 : i3;
    v3 = w3 > v3 ? w3 : v3;
  }
  for (; t <= b; ++t) {  // the tail joins lane 0, still in increasing t
    const double w0 = prev[t] + g(t, i);
    i0 = w0 > v0 ? t : i0;
    v0 = w0 > v0 ? w0 : v0;
  }
  double best = v0;
  int64_t bt = i0;
  const double vs[3] = {v1, v2, v3};
  const int64_t is[3] = {i1, i2, i3};
  for (int u = 0; u < 3; ++u) {
    if (vs[u] > best || (vs[u] == best && is[u] < bt)) {
      best = vs[u];
      bt = is[u];
    }
  }
  *best_out = best;
  return bt;
}

// One DP layer: cur[i] = max_t prev[t] + g(t, i) over t in [optlo, min(opthi, i-1)] for i
// in [lo, hi], opt[i] = the smallest maximising t. Two monotonicities of that optimal
// start of the last cluster bound the search: it does not decrease with i, and it does not
// decrease with the number of clusters, so lb[i] (the previous layer's opt, defined and
// non-decreasing up to lb_hi) bounds it from below. Divide and conquer on i (O(m log m)
// per layer) down to leaves of kLeaf points; a leaf runs i downwards, each search capped
// by the optimum just found (Knuth's bound), which costs least per point.
constexpr int64_t kLeaf = 16;

template <class Gain>
void dc_layer(const Gain& g, const double* prev, double* cur, int32_t* opt, const int32_t* lb,
              int64_t lb_hi, int64_t lo, int64_t hi, int64_t optlo, int64_t opthi) {
  auto lower = [&](int64_t i) {
    return lb ? std::max<int64_t>(optlo, lb[std::min(i, lb_hi)]) : optlo;
  };
  while (hi - lo >= kLeaf) {
    const int64_t mid = lo + (hi - lo) / 2;
    const int64_t t_end = std::min(opthi, mid - 1);
    double best;
    const int64_t bt = argmax_t(g, prev, mid, std::min(lower(mid), t_end), t_end, &best);
    cur[mid] = best;
    opt[mid] = int32_t(bt);
    // Recurse into the smaller half, loop on the larger: stack depth stays O(log m).
    if (mid - lo < hi - mid) {
      dc_layer(g, prev, cur, opt, lb, lb_hi, lo, mid - 1, optlo, bt);
      lo = mid + 1;
      optlo = bt;
    } else {
      dc_layer(g, prev, cur, opt, lb, lb_hi, mid + 1, hi, bt, opthi);
      hi = mid - 1;
      opthi = bt;
    }
  }
  int64_t ub = opthi;
  for (int64_t i = hi; i >= lo; --i) {
    const int64_t t_end = std::min(ub, i - 1);
    const int64_t t_begin = std::min(lower(i), t_end);
    double best = -std::numeric_limits<double>::infinity();
    int64_t bt = t_begin;
    for (int64_t t = t_begin; t <= t_end; ++t) {  // short: a plain scan
      const double v = prev[t] + g(t, i);
      if (v > best) {
        best = v;
        bt = t;
      }
    }
    cur[i] = best;
    opt[i] = int32_t(bt);
    ub = bt;
  }
}

template <class Gain>
void dp_layers(const Gain& g, int64_t m, int k, KMeansScratch& s, int64_t* ends) {
  // Layer L (L clusters) is needed for i in [L, m-k+L]: every cluster is non-empty and
  // the remaining k-L clusters still get a point each.
  const int64_t span = m - k;
  const size_t row = size_t(m + 1);
  s.prev.resize(m + 1);
  s.cur.resize(m + 1);
  s.opt.resize(size_t(k + 1) * row);
  for (int64_t i = 1; i <= span + 1; ++i) s.prev[i] = g(0, i);
  for (int L = 2; L < k; ++L) {
    int32_t* opt = s.opt.data() + size_t(L) * row;
    const int32_t* lb = L > 2 ? s.opt.data() + size_t(L - 1) * row : nullptr;
    dc_layer(g, s.prev.data(), s.cur.data(), opt, lb, span + L - 1, L, span + L, L - 1,
             span + L - 1);
    std::swap(s.prev, s.cur);
  }
  if (k >= 2) {  // last layer: only i = m
    const int64_t t0 = k > 2 ? std::max<int64_t>(k - 1, s.opt[size_t(k - 1) * row + size_t(m - 1)]) : k - 1;
    double best;
    s.opt[size_t(k) * row + size_t(m)] = int32_t(argmax_t(g, s.prev.data(), m, t0, m - 1, &best));
  }
  int64_t e = m;
  ends[k - 1] = m;
  for (int L = k; L >= 2; --L) {
    e = s.opt[size_t(L) * row + size_t(e)];
    ends[L - 2] = e;
  }
}

}  // namespace

void dp_partition(const double* pt_w, const double* pt_s, int64_t m, int k, bool unit,
                  KMeansScratch& s, int64_t* ends) {
  s.ps.resize(m + 1);
  s.ps[0] = 0;
  for (int64_t i = 0; i < m; ++i) s.ps[i + 1] = s.ps[i] + pt_s[i];
  if (unit) {
    s.pc.resize(m + 1);
    s.pc[0] = 0;
    for (int64_t i = 0; i < m; ++i) s.pc[i + 1] = s.pc[i] + int32_t(pt_w[i]);
    const int64_t total = s.pc[m];
    if (int64_t(s.recip.size()) < total + 1) {
      const int64_t old = std::max<int64_t>(int64_t(s.recip.size()), 1);
      s.recip.resize(total + 1);
      s.recip[0] = 0;
      for (int64_t c = old; c <= total; ++c) s.recip[c] = 1.0 / double(c);
    }
    if (total == m)
      dp_layers(DistinctGain{s.ps.data(), s.recip.data()}, m, k, s, ends);
    else
      dp_layers(UnitGain{s.ps.data(), s.pc.data(), s.recip.data()}, m, k, s, ends);
  } else {
    s.pw.resize(m + 1);
    s.pw[0] = 0;
    for (int64_t i = 0; i < m; ++i) s.pw[i + 1] = s.pw[i] + pt_w[i];
    dp_layers(WeightGain{s.ps.data(), s.pw.data()}, m, k, s, ends);
  }
}

void kmeans_1d_exact(const float* x, const float* w, int64_t n, int k, KMeansScratch& s,
                     float* out) {
  // Sorted distinct values with their total weights; zero-weight points play no part.
  s.val.resize(n);
  s.pt_w.resize(n);
  int64_t m = 0;
  if (!w) {
    s.xs.assign(x, x + n);
    std::sort(s.xs.begin(), s.xs.end());
    for (int64_t i = 0; i < n; ++i) {
      if (m > 0 && double(s.xs[i]) == s.val[m - 1]) {
        s.pt_w[m - 1] += 1.0;
      } else {
        s.val[m] = s.xs[i];
        s.pt_w[m++] = 1.0;
      }
    }
  } else {
    s.xw.clear();
    for (int64_t i = 0; i < n; ++i)
      if (w[i] > 0) s.xw.emplace_back(x[i], w[i]);
    std::sort(s.xw.begin(), s.xw.end());  // by value, then weight: a fixed summation order
    for (const auto& [v, wt] : s.xw) {
      if (m > 0 && double(v) == s.val[m - 1]) {
        s.pt_w[m - 1] += wt;
      } else {
        s.val[m] = v;
        s.pt_w[m++] = wt;
      }
    }
  }
  if (m <= k) {  // every distinct value is its own centroid (exact); pad with the largest
    for (int i = 0; i < k; ++i) out[i] = float(s.val[std::min<int64_t>(i, m - 1)]);
    return;
  }
  // Shift by the weighted mean so the DP's sums do not cancel catastrophically.
  double tw = 0, tx = 0;
  for (int64_t i = 0; i < m; ++i) {
    tw += s.pt_w[i];
    tx += s.pt_w[i] * s.val[i];
  }
  const double shift = tx / tw;
  s.pt_s.resize(m);
  for (int64_t i = 0; i < m; ++i) s.pt_s[i] = s.pt_w[i] * (s.val[i] - shift);
  s.ends.resize(k);
  dp_partition(s.pt_w.data(), s.pt_s.data(), m, k, !w && n <= kRecipMax, s, s.ends.data());
  int64_t b = 0;
  for (int c = 0; c < k; ++c) {
    double cw = 0, cs = 0;
    for (int64_t i = b; i < s.ends[c]; ++i) {
      cw += s.pt_w[i];
      cs += s.pt_s[i];
    }
    // A cluster of one distinct value v gives back v exactly: the double error of
    // cs/cw + shift is far below half a float ulp of v.
    out[c] = float(cs / cw + shift);
    b = s.ends[c];
  }
}

void check_kmeans_input(const float* x, const float* w, int64_t n, int k) {
  if (k < 1) throw Error("kmeans_1d: k = " + std::to_string(k) + " must be >= 1");
  if (n < 0) throw Error("kmeans_1d: n = " + std::to_string(n) + " must be >= 0");
  if (n > 0 && !x) throw Error("kmeans_1d: null values");
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i]))
      throw Error("kmeans_1d: value " + std::to_string(i) + " is not finite");
  if (w)
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(w[i]) || w[i] < 0)
        throw Error("kmeans_1d: weight " + std::to_string(i) + " is negative or not finite");
}

void kmeans_1d_into(const float* x, const float* w, int64_t n, int k, int64_t exact_max,
                    int lloyd_iters, KMeansScratch& s, float* out) {
  if (w) {  // all weights zero: every answer is optimal; fit the plain values instead
    double tw = 0;
    for (int64_t i = 0; i < n; ++i) tw += w[i];
    if (!(tw > 0)) w = nullptr;
  }
  if (n == 0) {
    std::fill(out, out + k, 0.0f);
  } else if (n <= exact_max) {
    kmeans_1d_exact(x, w, n, k, s, out);
  } else {
    kmeans_1d_hist(x, w, n, k, lloyd_iters, s, out);
  }
}

}  // namespace detail

std::vector<float> kmeans_1d(const float* x, const float* weights, int64_t n, int k,
                             int64_t exact_max, int lloyd_iters, uint64_t seed) {
  (void)seed;  // both methods used here are deterministic; the seed drives kmeans_1d_lloyd
  detail::check_kmeans_input(x, weights, n, k);
  if (lloyd_iters < 0) throw Error("kmeans_1d: lloyd_iters must be >= 0");
  std::vector<float> out(k);
  detail::KMeansScratch s;
  detail::kmeans_1d_into(x, weights, n, k, exact_max, lloyd_iters, s, out.data());
  return out;
}

}  // namespace kmq
