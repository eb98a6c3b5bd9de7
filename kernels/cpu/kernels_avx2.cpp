// AVX2 + FMA kernels (this file alone is built with -mavx2 -mfma). Rows are
// reconstructed with a vectorized table lookup (dequant_row_avx2), then a register-blocked 4 rows x 3 tokens FMA microkernel (12 accumulators of 8 floats)
// computes the dots, so each weight vector load feeds 3 FMAs and each activation load 4.
// Sub-4-bit lookup kernels for decode are issue #3; they slot in here.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "util/half.h"

#include "kernels/cpu/kernel_util.h"
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

// Row reconstruction. Quantized rows: per segment of constant codebook and scale, a
// 16-entry table (codebook x scale) in two registers; 8 indices at a time are read as
// one little-endian word (8*bits bits, byte-aligned when j % 8 == 0), split with variable
// shifts, and looked up with two vpermps and a blend on bit 3 of the index. The products
// are the reference's (codebook[c] * scale), so rows are bit-identical to kernels_ref.
void dequant_row_avx2(const WeightView& w, int64_t r, float* out) {
  const int64_t cols = w.cols;
  if (w.dtype == DType::kBF16) {
    const uint16_t* src = static_cast<const uint16_t*>(w.data) + r * cols;
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j)));
      _mm256_storeu_ps(out + j, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
    }
    for (; j < cols; ++j) out[j] = bf16_to_f32(src[j]);
    return;
  }
  if (w.dtype != DType::kKmq) {
    kernels_ref().dequant_row(w, r, out);
    return;
  }
  const int bits = w.bits;
  const int64_t k = int64_t(1) << bits;
  const int64_t row_bytes = (cols * bits + 7) / 8;
  const uint8_t* idx = static_cast<const uint8_t*>(w.data) + r * row_bytes;
  const int64_t n_groups = w.scope == CodebookScope::kGroup ? (cols + w.group_size - 1) / w.group_size : 0;
  const int64_t n_sb = w.scale_block ? (cols + w.scale_block - 1) / w.scale_block : 0;
  const __m256i shifts = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
  const __m256i mask = _mm256_set1_epi32((1 << bits) - 1);
  alignas(32) float table[16];
  alignas(32) float codebook[16] = {};
  int64_t cached = -1;
  __m256 cb_lo = _mm256_setzero_ps(), cb_hi = _mm256_setzero_ps();
  int64_t j = 0;
  while (j < cols) {
    int64_t end = cols, cb = 0;
    if (w.scope == CodebookScope::kRow) cb = r;
    if (w.scope == CodebookScope::kGroup) {
      cb = r * n_groups + j / w.group_size;
      end = std::min(end, (j / w.group_size + 1) * w.group_size);
    }
    if (cb != cached) {  // tensor and row scopes load their codebook once per row
      for (int64_t c = 0; c < k; ++c) codebook[c] = load_value(w.codebooks, w.codebook_dtype, cb * k + c);
      cb_lo = _mm256_load_ps(codebook);
      cb_hi = _mm256_load_ps(codebook + 8);
      cached = cb;
    }
    __m256 lo = cb_lo, hi = cb_hi;
    if (w.scale_block) {
      const __m256 s = _mm256_set1_ps(load_value(w.scales, w.scale_dtype, r * n_sb + j / w.scale_block));
      lo = _mm256_mul_ps(lo, s);
      hi = _mm256_mul_ps(hi, s);
      end = std::min(end, (j / w.scale_block + 1) * w.scale_block);
    }
    _mm256_store_ps(table, lo);
    _mm256_store_ps(table + 8, hi);
    for (; j < end && (j & 7); ++j) out[j] = table[index_at(idx, j, bits)];
    for (; j + 8 <= end; j += 8) {
      // 8 indices = `bits` bytes; read a whole word where the row has 4 bytes left
      // (a constant-size load, not a memcpy call), else exactly `bits` bytes.
      uint32_t word = 0;
      const int64_t at = (j * bits) / 8;
      if (at + 4 <= row_bytes) std::memcpy(&word, idx + at, 4);
      else std::memcpy(&word, idx + at, size_t(bits));
      const __m256i iv = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(word)), shifts), mask);
      const __m256 a = _mm256_permutevar8x32_ps(lo, iv), b = _mm256_permutevar8x32_ps(hi, iv);
      _mm256_storeu_ps(out + j, _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(iv, 28))));
    }
    for (; j < end; ++j) out[j] = table[index_at(idx, j, bits)];
  }
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
  const int64_t cols = w.cols;
  float out[12];
  for (int64_t r = r0; r < r1; r += 4) {
    const int64_t nr = std::min<int64_t>(4, r1 - r);
    for (int64_t k = 0; k < nr; ++k) dequant_row_avx2(w, r + k, scratch + k * cols);
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
    t.dequant_row = dequant_row_avx2;
    t.matmul = matmul_avx2;
    t.dot = dot_avx2;
    t.axpy = axpy_avx2;
    return t;
  }();
  return k;
}

}  // namespace kmq::cpu
