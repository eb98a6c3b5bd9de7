// The tile decode of the int8 product (lut.h, lut_q8_*) for the x86 kernels. Included by
// kernels_avx2.cpp and kernels_avx512.cpp, each built with its own -m flags, so everything
// here has internal linkage (an inline function with external linkage could be merged
// across the two files, and an AVX-512 copy reach an AVX2-only CPU).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/kernel_util.h"
#include "kernels/cpu/lut.h"

namespace kmq::cpu {
namespace {

// Decodes tile `tile` of w (stored bits 4) into dw: per chunk c and step s (columns
// 32c + 4s .. +3) 128 bytes, the 4 unsigned codebook bytes of each row in kLutQ8Rows
// order; and rf[c * 32 + p] = the row factor of position p (lut.h).
inline void lut_q8_decode_tile(const LutWeight& w, int64_t tile, uint8_t* dw, float* rf) {
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.q8_table)));
  const uint8_t* wt = w.weights + tile * w.tile_bytes();
  for (int64_t c = 0; c < w.n_chunks; ++c) {
    for (int s = 0; s < 8; ++s) {
      // vector 2s: columns 4s (low nibbles), 4s+1 (high); vector 2s+1: 4s+2, 4s+3
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + c * 512 + s * 64));
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wt + c * 512 + s * 64 + 32));
      const __m256i c0 = _mm256_shuffle_epi8(tab, _mm256_and_si256(a, m4));
      const __m256i c1 = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(a, 4), m4));
      const __m256i c2 = _mm256_shuffle_epi8(tab, _mm256_and_si256(b, m4));
      const __m256i c3 = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(b, 4), m4));
      const __m256i p01l = _mm256_unpacklo_epi8(c0, c1), p01h = _mm256_unpackhi_epi8(c0, c1);
      const __m256i p23l = _mm256_unpacklo_epi8(c2, c3), p23h = _mm256_unpackhi_epi8(c2, c3);
      __m256i* d = reinterpret_cast<__m256i*>(dw + (c * 8 + s) * 128);
      _mm256_store_si256(d + 0, _mm256_unpacklo_epi16(p01l, p23l));  // rows 0-3, 16-19
      _mm256_store_si256(d + 1, _mm256_unpackhi_epi16(p01l, p23l));  // rows 4-7, 20-23
      _mm256_store_si256(d + 2, _mm256_unpacklo_epi16(p01h, p23h));  // rows 8-11, 24-27
      _mm256_store_si256(d + 3, _mm256_unpackhi_epi16(p01h, p23h));  // rows 12-15, 28-31
    }
    float* f = rf + c * 32;
    if (w.scales) {
      const uint16_t* sp = w.scales + (tile * w.n_scale_blocks + c / w.chunks_per_scale) * 32;
      for (int p = 0; p < 32; ++p) f[p] = load_value(sp, w.scale_dtype, kLutQ8Rows[p]) * w.q8_scale;
    } else {
      for (int p = 0; p < 32; ++p) f[p] = w.q8_scale;
    }
  }
}

// Writes the 32 accumulated rows of one token (in kLutQ8Rows order) to y.
inline void lut_q8_store(const float* acc, float* y, int64_t r0, int64_t rows) {
  if (r0 + 32 <= rows) {
    for (int p = 0; p < 32; ++p) y[r0 + kLutQ8Rows[p]] = acc[p];
  } else {
    for (int p = 0; p < 32; ++p)
      if (r0 + kLutQ8Rows[p] < rows) y[r0 + kLutQ8Rows[p]] = acc[p];
  }
}

}  // namespace
}  // namespace kmq::cpu
