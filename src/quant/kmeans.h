// Internal interface of the 1-D k-means solvers (kmeans*.cpp): scratch buffers that the
// quantizer reuses across hundreds of thousands of small codebooks, and shared helpers.
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

namespace kmq::detail {

// Large-n method: values are binned into a uniform histogram of n/kHistPointsPerBin bins,
// clamped to [kHistMinBins, kHistMaxBins]; the exact DP runs on the non-empty bins as
// weighted points, then Lloyd refines on the real values (kmeans_hist.cpp).
constexpr int64_t kHistPointsPerBin = 8;
constexpr int64_t kHistMinBins = 1024;
constexpr int64_t kHistMaxBins = 65536;
// Reciprocal tables 1/c speed up the DP for unit weights; used up to this many points.
constexpr int64_t kRecipMax = int64_t(1) << 22;

struct KMeansScratch {
  // exact path
  std::vector<float> xs;                    // sorted values (unweighted)
  std::vector<std::pair<float, float>> xw;  // sorted (value, weight) pairs (weighted)
  std::vector<double> val;                  // distinct sorted values
  // DP input: m weighted points in sorted order (weight, weight * (value - shift))
  std::vector<double> pt_w, pt_s;
  std::vector<double> pw, ps, prev, cur, recip;
  std::vector<int32_t> pc;   // prefix of integer weights (unit-weight DP)
  std::vector<int32_t> opt;  // k x (m + 1) argmax table for backtracking
  std::vector<int64_t> ends;
  // histogram path
  std::vector<uint32_t> bin;       // bin of each point
  std::vector<int64_t> bin_start;  // nbins + 1 offsets into the bucketed arrays
  std::vector<int64_t> bin_cnt, cursor;
  std::vector<double> bin_w, bin_s;
  std::vector<float> bx, bw;  // values (and weights) bucketed by bin
  std::vector<int64_t> nz;    // non-empty bins
};

// Fits k sorted centroids into out[k]: exact DP when n <= exact_max, else the histogram
// method. Same contract as kmeans_1d (which wraps it) minus input validation.
void kmeans_1d_into(const float* x, const float* w, int64_t n, int k, int64_t exact_max,
                    int lloyd_iters, KMeansScratch& s, float* out);

// Exact DP on the raw values (kmeans.cpp); x finite, w null or >= 0 with a positive sum.
void kmeans_1d_exact(const float* x, const float* w, int64_t n, int k, KMeansScratch& s,
                     float* out);

// Throws kmq::Error unless x is finite, weights finite and >= 0, k >= 1, n >= 0.
void check_kmeans_input(const float* x, const float* w, int64_t n, int k);

// Optimal partition of m >= k weighted points (sorted by value) into k contiguous
// non-empty clusters minimising the weighted SSE. pt_w[i] > 0 is the weight of point i,
// pt_s[i] its weight times its (shifted) value. unit: every pt_w is a positive integer and
// their sum <= kRecipMax. Writes ends[0..k) (exclusive end index of each cluster).
void dp_partition(const double* pt_w, const double* pt_s, int64_t m, int k, bool unit,
                  KMeansScratch& s, int64_t* ends);

// Histogram method for large n (kmeans_hist.cpp); x finite, w null or >= 0 with a
// positive sum.
void kmeans_1d_hist(const float* x, const float* w, int64_t n, int k, int lloyd_iters,
                    KMeansScratch& s, float* out);

// Branch-free search in sorted thresholds t[0 .. pow2-1) (padded with +inf to a power of
// two minus one): returns the number of thresholds < v, i.e. the bucket of v where a
// value equal to a threshold goes to the lower bucket.
inline int bucket_of(const double* t, int pow2, double v) {
  int i = 0;
  for (int step = pow2 >> 1; step > 0; step >>= 1) i += v > t[i + step - 1] ? step : 0;
  return i;
}

inline int pow2_at_least(int k) {
  int p = 1;
  while (p < k) p <<= 1;
  return p;
}

}  // namespace kmq::detail
