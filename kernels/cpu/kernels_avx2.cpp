// AVX2 + FMA kernels (this file alone is built with -mavx2 -mfma). Rows are
// reconstructed with a vectorized table lookup (dequant_row_avx2), then a register-blocked 4 rows x 3 tokens FMA microkernel (12 accumulators of 8 floats)
// computes the dots, so each weight vector load feeds 3 FMAs and each activation load 4.
// Sub-4-bit lookup kernels for decode are issue #3; they slot in here.
#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "util/half.h"

#include "kernels/cpu/kernel_util.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/lut.h"
#include "kernels/cpu/lut_q8_x86.h"

#ifndef KMQ_LUT_PREFETCH
#define KMQ_LUT_PREFETCH 2048
#endif

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

// The LUT product of lut.h. Per 32 bytes of packed weights (32 rows x 2 nibble groups):
// split nibbles, look both up in their group's 16-entry table (vpshufb, tables broadcast
// to both lanes straight from memory), interleave the two results per row and add the
// pairs, times their groups' multipliers, into int16 with vpmaddubsw(m, .). s_lo holds rows 0-7 | 16-23, s_hi rows 8-15 |
// 24-31. At each flush block the int16 sums are widened and folded into f32 accumulators
// with (row scale * table scale), the same operations as lut_matmul_ref.
inline __m256 load_scales8(const uint16_t* p, bool bf16) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (!bf16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// lut_build_tables, vectorized: the same float operations in the same order as the
// portable version (products, then sums in index order, no fused multiply-add; round to
// nearest even), so the tables are bit-identical to it.
void lut_tables_avx2(const LutWeight& w, const float* x, int64_t ldx, int64_t n_tok, const LutTables& lt, int64_t b0,
                     int64_t b1) {
  const int bits = w.bits, cpg = 4 / bits;
  const unsigned mask = (1u << bits) - 1;
  const int64_t gpc = w.groups_per_chunk(), tb = w.table_bytes(), mb = w.mult_bytes();
  alignas(32) float pat[4][16];
  for (int i = 0; i < cpg; ++i)
    for (unsigned v = 0; v < 16; ++v) pat[i][v] = w.codebook[(v >> (i * bits)) & mask];
  __m256 P[4][2];
  for (int i = 0; i < cpg; ++i) {
    P[i][0] = _mm256_load_ps(pat[i]);
    P[i][1] = _mm256_load_ps(pat[i] + 8);
  }
  const size_t ng = size_t(w.chunks_per_block * gpc);
  std::vector<float> tf(ng * 16 + 8), gmax(ng), inv(ng);
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* xt = x + t * ldx;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * w.chunks_per_block, c1 = std::min(w.n_chunks, c0 + w.chunks_per_block);
      const int64_t n = (c1 - c0) * gpc;
      __m256 vmx = _mm256_setzero_ps();
      for (int64_t g = 0; g < n; ++g) {
        const int64_t j0 = (c0 * gpc + g) * cpg;
        __m256 s0, s1;
        {
          const __m256 xv = _mm256_set1_ps(j0 < w.cols ? xt[j0] : 0.0f);
          s0 = _mm256_mul_ps(xv, P[0][0]);
          s1 = _mm256_mul_ps(xv, P[0][1]);
        }
        for (int i = 1; i < cpg; ++i) {
          const __m256 xv = _mm256_set1_ps(j0 + i < w.cols ? xt[j0 + i] : 0.0f);
          s0 = _mm256_add_ps(s0, _mm256_mul_ps(xv, P[i][0]));
          s1 = _mm256_add_ps(s1, _mm256_mul_ps(xv, P[i][1]));
        }
        _mm256_storeu_ps(&tf[size_t(g * 16)], s0);
        _mm256_storeu_ps(&tf[size_t(g * 16 + 8)], s1);
        __m256 m = _mm256_max_ps(_mm256_and_ps(s0, absmask), _mm256_and_ps(s1, absmask));
        vmx = _mm256_max_ps(vmx, m);
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        gmax[size_t(g)] = _mm_cvtss_f32(h);
      }
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_movehdup_ps(h));
      const float mx = _mm_cvtss_f32(h);
      lt.tscale[t * w.n_blocks + b] =
          lut_block_factors(w, gmax.data(), n, mx, lt.mults + t * mb + c0 * gpc * 16, inv.data());
      int8_t* out = lt.tables + t * tb + c0 * gpc * 16;
      for (int64_t g = 0; g < n; ++g) {
        const __m256 iv = _mm256_set1_ps(inv[size_t(g)]);
        __m256 q0 = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(&tf[size_t(g * 16)]), iv),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 q1 = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(&tf[size_t(g * 16 + 8)]), iv),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q0 = _mm256_min_ps(_mm256_max_ps(q0, nlim), lim);
        q1 = _mm256_min_ps(_mm256_max_ps(q1, nlim), lim);
        const __m256i i16 = _mm256_packs_epi32(_mm256_cvtps_epi32(q0), _mm256_cvtps_epi32(q1));  // 0-3 8-11 | 4-7 12-15
        const __m128i p = _mm_packs_epi16(_mm256_castsi256_si128(i16), _mm256_extracti128_si256(i16, 1));
        // p holds 0-3, 8-11, 4-7, 12-15: restore the order
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + g * 16),
                         _mm_shuffle_epi32(p, _MM_SHUFFLE(3, 1, 2, 0)));
      }
    }
  }
}

const int64_t kPrefetch = lut_prefetch_bytes(KMQ_LUT_PREFETCH);  // bytes ahead in the weight stream

// NT tokens of one tile: the weight bytes are loaded and split once and looked up in each
// token's tables (prompts and batches; NT = 1 for decode).
template <int NT>
void lut_tile_avx2(const LutWeight& w, const LutTables& lt, int64_t t0, float* y, int64_t ldy, int64_t tile) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const int64_t gpc = w.groups_per_chunk(), vpc = gpc / 2, tb = w.table_bytes(), mb = w.mult_bytes();
  const int64_t cb = w.chunk_bytes();
  const bool bf16 = w.scale_dtype == DType::kBF16;
  const uint8_t* wt = w.weights + tile * w.tile_bytes();
  __m256 acc[NT][4];  // rows 0-7, 16-23, 8-15, 24-31
  for (int t = 0; t < NT; ++t)
    for (int k = 0; k < 4; ++k) acc[t][k] = _mm256_setzero_ps();
  for (int64_t b = 0; b < w.n_blocks; ++b) {
    const int64_t c0 = b * w.chunks_per_block, c1 = std::min(w.n_chunks, c0 + w.chunks_per_block);
    __m256i s_lo[NT], s_hi[NT];
    for (int t = 0; t < NT; ++t) s_lo[t] = s_hi[t] = _mm256_setzero_si256();
    const uint8_t* wp = wt + c0 * cb;
    const int64_t off0 = c0 * gpc * 16, nv = (c1 - c0) * vpc;
    for (int64_t v = 0; v < nv; ++v, wp += 32) {
      // the stream runs ahead of the hardware prefetcher (measured: docs/PERFORMANCE.md)
      _mm_prefetch(reinterpret_cast<const char*>(wp) + kPrefetch, _MM_HINT_T0);
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp));
      const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      const int64_t off = off0 + v * 32;
      for (int t = 0; t < NT; ++t) {
        const int8_t* T = lt.tables + (t0 + t) * tb + off;
        const __m256i mult = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lt.mults + (t0 + t) * mb + off));
        const __m256i ta = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(T)));
        const __m256i tb2 = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(T + 16)));
        const __m256i a = _mm256_shuffle_epi8(ta, lo), bq = _mm256_shuffle_epi8(tb2, hi);
        s_lo[t] = _mm256_add_epi16(s_lo[t], _mm256_maddubs_epi16(mult, _mm256_unpacklo_epi8(a, bq)));
        s_hi[t] = _mm256_add_epi16(s_hi[t], _mm256_maddubs_epi16(mult, _mm256_unpackhi_epi8(a, bq)));
      }
    }
    __m256 sc[4];
    if (w.scales) {
      const uint16_t* sp = w.scales + (tile * w.n_scale_blocks + c0 / w.chunks_per_scale) * 32;
      sc[0] = load_scales8(sp, bf16);
      sc[1] = load_scales8(sp + 16, bf16);
      sc[2] = load_scales8(sp + 8, bf16);
      sc[3] = load_scales8(sp + 24, bf16);
    }
    for (int t = 0; t < NT; ++t) {
      const __m256 ts = _mm256_set1_ps(lt.tscale[(t0 + t) * w.n_blocks + b]);
      __m256 f[4] = {ts, ts, ts, ts};
      if (w.scales)
        for (int k = 0; k < 4; ++k) f[k] = _mm256_mul_ps(sc[k], ts);
      const __m256 i0 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_lo[t])));
      const __m256 i1 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_lo[t], 1)));
      const __m256 i2 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s_hi[t])));
      const __m256 i3 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(s_hi[t], 1)));
      acc[t][0] = _mm256_fmadd_ps(i0, f[0], acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(i1, f[1], acc[t][1]);
      acc[t][2] = _mm256_fmadd_ps(i2, f[2], acc[t][2]);
      acc[t][3] = _mm256_fmadd_ps(i3, f[3], acc[t][3]);
    }
  }
  const int64_t r0 = tile * 32, n = std::min<int64_t>(32, w.rows - r0);
  for (int t = 0; t < NT; ++t) {
    alignas(32) float out[32];
    _mm256_store_ps(out, acc[t][0]);
    _mm256_store_ps(out + 16, acc[t][1]);
    _mm256_store_ps(out + 8, acc[t][2]);
    _mm256_store_ps(out + 24, acc[t][3]);
    std::memcpy(y + (t0 + t) * ldy + r0, out, size_t(n) * sizeof(float));
  }
}

void lut_matmul_avx2(const LutWeight& w, const LutTables& lt, int64_t n_tok, float* y, int64_t ldy, int64_t tile0,
                     int64_t tile1) {
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    int64_t t = 0;
    for (; t + 4 <= n_tok; t += 4) lut_tile_avx2<4>(w, lt, t, y, ldy, tile);
    for (; t < n_tok; ++t) lut_tile_avx2<1>(w, lt, t, y, ldy, tile);
  }
}

// The int8 product of lut.h (lut_q8_*), NT tokens per pass over a decoded tile: per step of
// 4 columns, 4 vectors of 8 rows x 4 unsigned bytes, each vpmaddubsw'd with the token's 4
// int8 x broadcast (pairs < 2^15: exact), widened by vpmaddwd(1) and added in int32.
// Per 32 columns and token: 8 x (4 x 3) integer instructions for 1024 products, where the
// LUT kernel spends ~16 lookups-and-adds on the same 1024 (docs/PERFORMANCE.md).
template <int NT>
void lut_q8_tokens_avx2(const LutWeight& w, const LutQ8Acts& a, int64_t t0, const uint8_t* dw, const float* rf,
                        float* y, int64_t ldy, int64_t r0) {
  const int64_t nc = w.n_chunks;
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) float acc[NT][32] = {};
  for (int64_t c = 0; c < nc; ++c) {
    __m256i is[NT][4];
    for (int t = 0; t < NT; ++t)
      for (int k = 0; k < 4; ++k) is[t][k] = _mm256_setzero_si256();
    const uint8_t* d = dw + c * 1024;
    for (int s = 0; s < 8; ++s, d += 128) {
      const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(d));
      const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(d + 32));
      const __m256i w2 = _mm256_load_si256(reinterpret_cast<const __m256i*>(d + 64));
      const __m256i w3 = _mm256_load_si256(reinterpret_cast<const __m256i*>(d + 96));
      for (int t = 0; t < NT; ++t) {
        int32_t xv;
        std::memcpy(&xv, a.xq + (t0 + t) * nc * 32 + c * 32 + s * 4, 4);
        const __m256i xb = _mm256_set1_epi32(xv);
        is[t][0] = _mm256_add_epi32(is[t][0], _mm256_madd_epi16(_mm256_maddubs_epi16(w0, xb), ones));
        is[t][1] = _mm256_add_epi32(is[t][1], _mm256_madd_epi16(_mm256_maddubs_epi16(w1, xb), ones));
        is[t][2] = _mm256_add_epi32(is[t][2], _mm256_madd_epi16(_mm256_maddubs_epi16(w2, xb), ones));
        is[t][3] = _mm256_add_epi32(is[t][3], _mm256_madd_epi16(_mm256_maddubs_epi16(w3, xb), ones));
      }
    }
    for (int t = 0; t < NT; ++t) {
      const __m256i corr = _mm256_set1_epi32(a.corr[(t0 + t) * nc + c]);
      const __m256 xs = _mm256_set1_ps(a.xs[(t0 + t) * nc + c]);
      for (int k = 0; k < 4; ++k) {
        const __m256 f = _mm256_mul_ps(_mm256_loadu_ps(rf + c * 32 + 8 * k), xs);
        const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(is[t][k], corr));
        _mm256_store_ps(acc[t] + 8 * k, _mm256_fmadd_ps(v, f, _mm256_load_ps(acc[t] + 8 * k)));
      }
    }
  }
  for (int t = 0; t < NT; ++t) lut_q8_store(acc[t], y + (t0 + t) * ldy, r0, w.rows);
}

void lut_q8_avx2(const LutWeight& w, const LutQ8Acts& a, int64_t n_tok, float* y, int64_t ldy, int64_t tile0,
                 int64_t tile1, uint8_t* scratch) {
  uint8_t* dw = scratch;
  float* rf = reinterpret_cast<float*>(scratch + w.n_chunks * 1024);
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    lut_q8_decode_tile(w, tile, dw, rf);
    int64_t t = 0;
    for (; t + 2 <= n_tok; t += 2) lut_q8_tokens_avx2<2>(w, a, t, dw, rf, y, ldy, tile * 32);
    for (; t < n_tok; ++t) lut_q8_tokens_avx2<1>(w, a, t, dw, rf, y, ldy, tile * 32);
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
    t.lut_matmul = lut_matmul_avx2;
    t.lut_tables = lut_tables_avx2;
    t.lut_q8 = lut_q8_avx2;
    return t;
  }();
  return k;
}

}  // namespace kmq::cpu
#endif  // __x86_64__
