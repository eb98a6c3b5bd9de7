// NEON kernels (AArch64; built only there). The lookup-table product of lut.h with
// vqtbl1q_s8: per 32 bytes of packed weights (two 16-byte halves, rows 0-15 and 16-31)
// the nibbles are split with an AND and a per-byte shift, looked up in their group's
// 16-entry table, and the two lookups of each row, times their groups' multipliers, are
// accumulated while widening to int16 (vmlal_s8). Flushes are the same float operations as lut_matmul_ref,
// so results are bit-identical to it. Everything else is the scalar reference's.
#if defined(__aarch64__)
#include <arm_neon.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/kernels.h"
#include "kernels/cpu/lut.h"

namespace kmq::cpu {
namespace {

inline float32x4_t load_scales4(const uint16_t* p, bool bf16) {
  const uint16x4_t h = vld1_u16(p);
  if (bf16) return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
  return vcvt_f32_f16(vreinterpret_f16_u16(h));
}

void lut_matmul_neon(const LutWeight& w, const LutTables& lt, int64_t n_tok, float* y, int64_t ldy, int64_t tile0,
                     int64_t tile1) {
  const uint8x16_t m4 = vdupq_n_u8(0x0f);
  const int64_t gpc = w.groups_per_chunk(), vpc = gpc / 2, tb = w.table_bytes(), mb = w.mult_bytes();
  const int64_t cb = w.chunk_bytes();
  const float* tscale = lt.tscale;
  const bool bf16 = w.scale_dtype == DType::kBF16;
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const uint8_t* wt = w.weights + tile * w.tile_bytes();
    for (int64_t t = 0; t < n_tok; ++t) {
      float32x4_t acc[8];
      for (auto& a : acc) a = vdupq_n_f32(0.0f);
      const int8_t* Tt = lt.tables + t * tb;
      const uint8_t* Mt = lt.mults + t * mb;
      for (int64_t b = 0; b < w.n_blocks; ++b) {
        const int64_t c0 = b * w.chunks_per_block, c1 = std::min(w.n_chunks, c0 + w.chunks_per_block);
        int16x8_t s[4] = {vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0)};  // rows 0-7 ... 24-31
        const uint8_t* wp = wt + c0 * cb;
        const int8_t* T = Tt + c0 * gpc * 16;
        const uint8_t* Mp = Mt + c0 * gpc * 16;
        const int64_t nv = (c1 - c0) * vpc;
        for (int64_t v = 0; v < nv; ++v, wp += 32, T += 32, Mp += 32) {
          const int8x16_t ta = vld1q_s8(T), tb2 = vld1q_s8(T + 16);
          const int8x8_t ma = vdup_n_s8(int8_t(Mp[0])), mb2 = vdup_n_s8(int8_t(Mp[1]));  // group multipliers
          for (int h = 0; h < 2; ++h) {
            const uint8x16_t q = vld1q_u8(wp + 16 * h);
            const int8x16_t a = vqtbl1q_s8(ta, vandq_u8(q, m4));
            const int8x16_t bq = vqtbl1q_s8(tb2, vshrq_n_u8(q, 4));
            s[2 * h] = vmlal_s8(vmlal_s8(s[2 * h], vget_low_s8(a), ma), vget_low_s8(bq), mb2);
            s[2 * h + 1] = vmlal_s8(vmlal_s8(s[2 * h + 1], vget_high_s8(a), ma), vget_high_s8(bq), mb2);
          }
        }
        const float ts = tscale[t * w.n_blocks + b];
        const float32x4_t tsv = vdupq_n_f32(ts);
        const uint16_t* sc = w.scales ? w.scales + (tile * w.n_scale_blocks + c0 / w.chunks_per_scale) * 32 : nullptr;
        for (int q = 0; q < 8; ++q) {
          const int16x8_t sv = s[q / 2];
          const int32x4_t iv = (q & 1) ? vmovl_high_s16(sv) : vmovl_s16(vget_low_s16(sv));
          const float32x4_t f = sc ? vmulq_f32(load_scales4(sc + 4 * q, bf16), tsv) : tsv;
          acc[q] = vfmaq_f32(acc[q], vcvtq_f32_s32(iv), f);
        }
      }
      float out[32];
      for (int q = 0; q < 8; ++q) vst1q_f32(out + 4 * q, acc[q]);
      const int64_t r0 = tile * 32, n = std::min<int64_t>(32, w.rows - r0);
      std::memcpy(y + t * ldy + r0, out, size_t(n) * sizeof(float));
    }
  }
}

}  // namespace

const Kernels& kernels_neon() {
  static const Kernels k = [] {
    Kernels t = kernels_ref();
    t.isa = "neon";
    t.lut_matmul = lut_matmul_neon;
    t.lut_tables = lut_build_tables;  // the portable builder (vectorized by the compiler)
    return t;
  }();
  return k;
}

}  // namespace kmq::cpu
#endif  // __aarch64__
