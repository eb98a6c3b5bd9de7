// AVX2 + FMA kernels (this file alone is built with -mavx2 -mfma). So far the float
// matmul for prompts and batches: rows are reconstructed by the reference dequant_row,
// then a register-blocked 4 rows x 3 tokens FMA microkernel (12 accumulators of 8 floats)
// computes the dots, so each weight vector load feeds 3 FMAs and each activation load 4.
// Sub-4-bit lookup kernels for decode are issue #3; they slot in here.
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/kernels.h"

namespace kmq::cpu {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_avx2(float* y, float a, const float* x, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

// R rows (in w, stride ldw) x T tokens (in x, stride ldx) dots of length n.
template <int R, int T>
inline void tile(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t n, float* out /*[T][R]*/) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(x + t * ldx + i);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * ldw + i);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float s = hsum(acc[r][t]);
      for (int64_t k = i; k < n; ++k) s += w[r * ldw + k] * x[t * ldx + k];
      out[t * R + r] = s;
    }
}

void matmul_avx2(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy, int64_t r0,
                 int64_t r1, float* scratch) {
  const auto& ref = kernels_ref();
  const int64_t cols = w.cols;
  float out[12];
  for (int64_t r = r0; r < r1; r += 4) {
    const int64_t nr = std::min<int64_t>(4, r1 - r);
    for (int64_t k = 0; k < nr; ++k) ref.dequant_row(w, r + k, scratch + k * cols);
    if (nr == 4) {
      int64_t t = 0;
      for (; t + 3 <= n_tok; t += 3) {
        tile<4, 3>(scratch, cols, x + t * ldx, ldx, cols, out);
        for (int tt = 0; tt < 3; ++tt)
          for (int k = 0; k < 4; ++k) y[(t + tt) * ldy + r + k] = out[tt * 4 + k];
      }
      for (; t < n_tok; ++t) {
        tile<4, 1>(scratch, cols, x + t * ldx, ldx, cols, out);
        for (int k = 0; k < 4; ++k) y[t * ldy + r + k] = out[k];
      }
    } else {
      for (int64_t k = 0; k < nr; ++k)
        for (int64_t t = 0; t < n_tok; ++t) y[t * ldy + r + k] = dot_avx2(scratch + k * cols, x + t * ldx, cols);
    }
  }
}

}  // namespace

const Kernels& kernels_avx2() {
  static const Kernels k = [] {
    Kernels t = kernels_ref();
    t.isa = "avx2";
    t.matmul = matmul_avx2;
    t.dot = dot_avx2;
    t.axpy = axpy_avx2;
    return t;
  }();
  return k;
}

}  // namespace kmq::cpu
