// Exact 1-D k-means by dynamic programming over sorted values, and the public kmeans_1d
// entry point that chooses between it and the histogram method (kmeans_hist.cpp).
//
// The DP: with points sorted, optimal clusters are contiguous runs. Minimising the
// weighted SSE sum(Q - S^2/W) over clusters equals maximising sum(S^2/W), since sum(Q) is
// fixed; with prefix sums of W and S every cluster's gain is O(1). D[j][i] (best gain of
// the first i points in j clusters) = max_t D[j-1][t] + gain(t, i). The optimal t is
// monotone in i (the gain satisfies the quadrangle inequality), so each layer is filled by
// divide and conquer: O(k * m * log m) gain evaluations for m distinct values (about 3600
// for m = 64, k = 16; 26000 for m = 256).
#include "quant/kmeans.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "kmq/error.h"
#include "kmq/quant.h"

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

// Fills cur[i] = max_{optlo <= t <= min(opthi, i-1)} prev[t] + g(t, i) for i in [lo, hi]
// and opt[i] = the smallest maximising t, relying on opt being non-decreasing in i.
// (Tried and dropped, no faster here: bounding t below by the previous layer's opt, which
// is also monotone in the number of clusters; Knuth-style leaves; 4-lane argmax. The
// plain scan's branch is well predicted, as prev[t] + g(t, i) is unimodal in t.)
template <class Gain>
void dc_layer(const Gain& g, const double* prev, double* cur, int32_t* opt, int64_t lo, int64_t hi,
              int64_t optlo, int64_t opthi) {
  while (lo <= hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const int64_t t_end = std::min(opthi, mid - 1);
    double best = -std::numeric_limits<double>::infinity();
    int64_t bt = optlo;
    for (int64_t t = optlo; t <= t_end; ++t) {
      const double v = prev[t] + g(t, mid);
      if (v > best) {
        best = v;
        bt = t;
      }
    }
    cur[mid] = best;
    opt[mid] = int32_t(bt);
    // Recurse into the smaller half, loop on the larger: stack depth stays O(log m).
    if (mid - lo < hi - mid) {
      dc_layer(g, prev, cur, opt, lo, mid - 1, optlo, bt);
      lo = mid + 1;
      optlo = bt;
    } else {
      dc_layer(g, prev, cur, opt, mid + 1, hi, bt, opthi);
      hi = mid - 1;
      opthi = bt;
    }
  }
}

template <class Gain>
void dp_layers(const Gain& g, int64_t m, int k, KMeansScratch& s, int64_t* ends) {
  // Layer L (L clusters) is needed for i in [L, m-k+L]: every cluster is non-empty and
  // the remaining k-L clusters still get a point each. opt row L holds layer L's argmax.
  const int64_t span = m - k;
  const size_t row = size_t(m + 1);
  s.prev.resize(m + 1);
  s.cur.resize(m + 1);
  s.opt.resize(size_t(k + 1) * row);
  for (int64_t i = 1; i <= span + 1; ++i) s.prev[i] = g(0, i);
  for (int L = 2; L < k; ++L) {
    dc_layer(g, s.prev.data(), s.cur.data(), s.opt.data() + size_t(L) * row, L, span + L, L - 1,
             span + L - 1);
    std::swap(s.prev, s.cur);
  }
  if (k >= 2)  // the last layer needs only i = m
    dc_layer(g, s.prev.data(), s.cur.data(), s.opt.data() + size_t(k) * row, m, m, k - 1, m - 1);
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
