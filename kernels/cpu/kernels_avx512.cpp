// AVX-512 kernels (F + BW + VL + DQ; this file alone is built with -mavx512f -mavx512bw
// -mavx512vl -mavx512dq). The table starts as the AVX2 table (an AVX-512 CPU runs AVX2)
// and replaces the decode hot path -- the lookup-table product of lut.h -- plus dot and
// axpy. Row reconstruction for the float matmul (per-row and per-group codebooks), the
// table builder and the element-wise ops stay the AVX2 / portable ones (lut_tables must
// be bit-identical in every ISA anyway).
//
// The LUT product at 512 bits: one 64-byte load covers two of AVX2's 32-byte weight
// vectors (v, v+1) -- the number of vectors per flush block is 4*bits per chunk, always
// even -- and one 64-byte load brings the four 16-byte tables of groups 2v..2v+3, spread
// to the lanes with two vshufi64x2. Lanes 0-1 then hold exactly AVX2's int16 sums of
// vector v and lanes 2-3 those of v+1; at the flush the halves are added (int16 sums are
// exact: lut.h bounds the sum of absolute values per flush) and the float flush is the
// AVX2 one, so results stay bit-identical to lut_matmul_ref. Per 64 bytes of weights the
// loop costs about the instructions AVX2 spends on 32. VBMI/VNNI are not used: the
// vpshufb lookup of 16-entry tables needs neither. Measured on a 2-core AVX-512 Xeon VM
// (2026-12-03, Llama-3.2-1B shapes, against the AVX2 table on the same VM): decode +3-7%,
// prompts +4-11% -- decode is bound by how fast one core's weight stream arrives (11-12
// GB/s of a 15 GB/s read loop), not by instructions. docs/PERFORMANCE.md has the tables.
#if defined(__x86_64__)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's avx512fintrin.h trips its own -Wuninitialized (the _mm512_undefined_* idiom
// inside the 256->512-bit casts and reductions): a known false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/kernel_util.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/lut.h"
#include "kernels/cpu/lut_q8_x86.h"

// Prefetch distance: 8192 bytes. On the Zen 5 VM (2026-12-04, quiet, 32 GB/s read on one
// core) 1024 bytes left the decode stalled on the weight loads (perf: 45% of the kernel's
// samples on the load) at 13.6 GB/s; tg64 at 4.25 bpw, one thread: 1024 B 20.8-24.6 tok/s,
// 4096 B 29.0-30.3, 8192 B 29.2-30.8, 16384 B 28.0; two threads 41.6 -> 45.2 at 8192
// (docs/PERFORMANCE.md). A prefetch to L2 only (T1) was slower (25.8 / 38.2).
#ifndef KMQ_LUT_PREFETCH
#define KMQ_LUT_PREFETCH 8192
#endif

namespace kmq::cpu {
namespace {

float dot_avx512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  if (i < n) {  // masked tail
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void axpy_avx512(float* y, float a, const float* x, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

inline __m256 load_scales8(const uint16_t* p, bool bf16) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if (!bf16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

const int64_t kPrefetch = lut_prefetch_bytes(KMQ_LUT_PREFETCH);  // bytes ahead in the weight stream

template <int NT>
void lut_tile_avx512(const LutWeight& w, const LutTables& lt, int64_t t0, float* y, int64_t ldy, int64_t tile) {
  const __m512i m4 = _mm512_set1_epi8(0x0f);
  const int64_t gpc = w.groups_per_chunk(), vpc = gpc / 2, tb = w.table_bytes(), mb = w.mult_bytes();
  const int64_t cb = w.chunk_bytes();
  const bool bf16 = w.scale_dtype == DType::kBF16;
  const uint8_t* wt = w.weights + tile * w.tile_bytes();
  __m256 acc[NT][4];  // rows 0-7, 16-23, 8-15, 24-31 (as AVX2)
  for (int t = 0; t < NT; ++t)
    for (int k = 0; k < 4; ++k) acc[t][k] = _mm256_setzero_ps();
  for (int64_t b = 0; b < w.n_blocks; ++b) {
    const int64_t c0 = b * w.chunks_per_block, c1 = std::min(w.n_chunks, c0 + w.chunks_per_block);
    __m512i s_lo[NT], s_hi[NT];
    for (int t = 0; t < NT; ++t) s_lo[t] = s_hi[t] = _mm512_setzero_si512();
    const uint8_t* wp = wt + c0 * cb;
    const int64_t off0 = c0 * gpc * 16, nv = (c1 - c0) * vpc;  // nv is even (vpc = 4 * bits)
    for (int64_t v = 0; v < nv; v += 2, wp += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(wp) + kPrefetch, _MM_HINT_T0);
      const __m512i q = _mm512_loadu_si512(wp);
      const __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
      const int64_t off = off0 + v * 32;
      for (int t = 0; t < NT; ++t) {
        const __m512i tt = _mm512_loadu_si512(lt.tables + (t0 + t) * tb + off);  // groups 2v .. 2v+3
        const __m512i ta = _mm512_shuffle_i64x2(tt, tt, _MM_SHUFFLE(2, 2, 0, 0));
        const __m512i tb2 = _mm512_shuffle_i64x2(tt, tt, _MM_SHUFFLE(3, 3, 1, 1));
        const __m512i mult = _mm512_loadu_si512(lt.mults + (t0 + t) * mb + off);
        const __m512i a = _mm512_shuffle_epi8(ta, lo), bq = _mm512_shuffle_epi8(tb2, hi);
        s_lo[t] = _mm512_add_epi16(s_lo[t], _mm512_maddubs_epi16(mult, _mm512_unpacklo_epi8(a, bq)));
        s_hi[t] = _mm512_add_epi16(s_hi[t], _mm512_maddubs_epi16(mult, _mm512_unpackhi_epi8(a, bq)));
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
      const __m256i lo16 = _mm256_add_epi16(_mm512_castsi512_si256(s_lo[t]), _mm512_extracti64x4_epi64(s_lo[t], 1));
      const __m256i hi16 = _mm256_add_epi16(_mm512_castsi512_si256(s_hi[t]), _mm512_extracti64x4_epi64(s_hi[t], 1));
      const __m256 ts = _mm256_set1_ps(lt.tscale[(t0 + t) * w.n_blocks + b]);
      __m256 f[4] = {ts, ts, ts, ts};
      if (w.scales)
        for (int k = 0; k < 4; ++k) f[k] = _mm256_mul_ps(sc[k], ts);
      const __m256 i0 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo16)));
      const __m256 i1 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo16, 1)));
      const __m256 i2 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi16)));
      const __m256 i3 = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi16, 1)));
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

void lut_matmul_avx512(const LutWeight& w, const LutTables& lt, int64_t n_tok, float* y, int64_t ldy, int64_t tile0,
                       int64_t tile1) {
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    int64_t t = 0;
    for (; t + 4 <= n_tok; t += 4) lut_tile_avx512<4>(w, lt, t, y, ldy, tile);
    for (; t < n_tok; ++t) lut_tile_avx512<1>(w, lt, t, y, ldy, tile);
  }
}

// The int8 product of lut.h (lut_q8_*) with AVX-512 VNNI (chosen at start-up when the CPU
// has it; else the AVX2 version runs): per step of 4 columns, two 64-byte vectors of 16
// rows x 4 unsigned bytes, one vpdpbusd each with the token's 4 int8 x broadcast, NT
// tokens per pass over the decoded tile (float accumulators in memory: the integer ones
// take 2 * NT registers). Per 32 columns and token: 16 vpdpbusd for 1024 products.
template <int NT>
__attribute__((target("avx512vnni"))) void lut_q8_tokens_vnni(const LutWeight& w, const LutQ8Acts& a, int64_t t0,
                                                               const uint8_t* dw, const float* rf, float* y,
                                                               int64_t ldy, int64_t r0) {
  const int64_t nc = w.n_chunks;
  alignas(64) float acc[NT][32] = {};
  for (int64_t c = 0; c < nc; ++c) {
    __m512i is[NT][2];
    for (int t = 0; t < NT; ++t) is[t][0] = is[t][1] = _mm512_setzero_si512();
    const uint8_t* d = dw + c * 1024;
    const int8_t* xq = a.xq + t0 * nc * 32 + c * 32;
    for (int s = 0; s < 8; ++s, d += 128) {
      const __m512i w0 = _mm512_load_si512(d), w1 = _mm512_load_si512(d + 64);
      for (int t = 0; t < NT; ++t) {
        int32_t xv;
        std::memcpy(&xv, xq + t * nc * 32 + s * 4, 4);
        const __m512i xb = _mm512_set1_epi32(xv);
        is[t][0] = _mm512_dpbusd_epi32(is[t][0], w0, xb);
        is[t][1] = _mm512_dpbusd_epi32(is[t][1], w1, xb);
      }
    }
    const __m512 f0 = _mm512_loadu_ps(rf + c * 32), f1 = _mm512_loadu_ps(rf + c * 32 + 16);
    for (int t = 0; t < NT; ++t) {
      const __m512i corr = _mm512_set1_epi32(a.corr[(t0 + t) * nc + c]);
      const __m512 xs = _mm512_set1_ps(a.xs[(t0 + t) * nc + c]);
      const __m512 v0 = _mm512_cvtepi32_ps(_mm512_sub_epi32(is[t][0], corr));
      const __m512 v1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(is[t][1], corr));
      _mm512_store_ps(acc[t], _mm512_fmadd_ps(v0, _mm512_mul_ps(f0, xs), _mm512_load_ps(acc[t])));
      _mm512_store_ps(acc[t] + 16, _mm512_fmadd_ps(v1, _mm512_mul_ps(f1, xs), _mm512_load_ps(acc[t] + 16)));
    }
  }
  for (int t = 0; t < NT; ++t) lut_q8_store(acc[t], y + (t0 + t) * ldy, r0, w.rows);
}

__attribute__((target("avx512vnni"))) void lut_q8_vnni(const LutWeight& w, const LutQ8Acts& a, int64_t n_tok,
                                                        float* y, int64_t ldy, int64_t tile0, int64_t tile1,
                                                        uint8_t* scratch) {
  uint8_t* dw = scratch;
  float* rf = reinterpret_cast<float*>(scratch + w.n_chunks * 1024);
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    lut_q8_decode_tile(w, tile, dw, rf);
    int64_t t = 0;
    for (; t + 8 <= n_tok; t += 8) lut_q8_tokens_vnni<8>(w, a, t, dw, rf, y, ldy, tile * 32);
    for (; t + 4 <= n_tok; t += 4) lut_q8_tokens_vnni<4>(w, a, t, dw, rf, y, ldy, tile * 32);
    for (; t < n_tok; ++t) lut_q8_tokens_vnni<1>(w, a, t, dw, rf, y, ldy, tile * 32);
  }
}

bool cpu_has_avx512vnni() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni");
}

}  // namespace

const Kernels& kernels_avx512() {
  static const Kernels k = [] {
    Kernels t = kernels_avx2();
    t.isa = "avx512";
    t.dot = dot_avx512;
    t.axpy = axpy_avx512;
    t.lut_matmul = lut_matmul_avx512;
    if (cpu_has_avx512vnni()) t.lut_q8 = lut_q8_vnni;  // else the AVX2 one (same results)
    return t;
  }();
  return k;
}

}  // namespace kmq::cpu
#endif  // __x86_64__
