// LUT path: packing at load time, per-token tables, and the scalar reference product.
// The layout and the arithmetic contract are documented in lut.h.
#include "kernels/cpu/lut.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/kernel_util.h"
#include "kmq/error.h"

namespace kmq::cpu {

namespace {

constexpr int64_t kTile = 32, kChunk = 32;

int stored_bits(int bits) { return bits == 3 ? 4 : bits; }

}  // namespace

size_t LutWeight::memory_bytes() const {
  return size_t(n_tiles * tile_bytes()) + (scales ? size_t(n_tiles * n_scale_blocks * kTile * 2) : 0);
}

bool lut_supported(const WeightView& w) {
  if (w.dtype != DType::kKmq || w.scope != CodebookScope::kTensor) return false;
  if (w.bits < 1 || w.bits > 4) return false;
  if (w.scale_block != 0 && w.scale_block % kChunk != 0) return false;
  if (w.scale_block != 0 && w.scale_dtype != DType::kF16 && w.scale_dtype != DType::kBF16) return false;
  return w.rows > 0 && w.cols > 0;
}

std::unique_ptr<LutWeight> lut_alloc(const WeightView& w) {
  if (!lut_supported(w)) throw Error("pack_lut: weight not supported by the LUT path");
  auto p = std::make_unique<LutWeight>();
  LutWeight& L = *p;
  L.rows = w.rows;
  L.cols = w.cols;
  L.bits = stored_bits(w.bits);
  L.n_tiles = (w.rows + kTile - 1) / kTile;
  L.n_chunks = (w.cols + kChunk - 1) / kChunk;
  L.chunks_per_scale = w.scale_block ? w.scale_block / kChunk : 0;
  // Flush block: at most 64 lookups (32 pairs) per row, so that table multipliers up to
  // 4 keep int16 sums exact; it must divide the scale block (one row scale per block).
  const int64_t max_chunks = std::max(1, 8 / L.bits);  // 8 * bits lookups per chunk
  int64_t d = std::min(max_chunks, L.n_chunks);
  if (L.chunks_per_scale) {
    d = std::min(d, L.chunks_per_scale);
    while (L.chunks_per_scale % d) --d;
  }
  L.chunks_per_block = d;
  const int64_t pairs = d * L.groups_per_chunk() / 2;
  L.max_mult = int(std::clamp<int64_t>(32767 / (pairs * 2 * 127), 1, 16));
  L.n_blocks = (L.n_chunks + d - 1) / d;
  L.n_scale_blocks = w.scale_block ? (w.cols + w.scale_block - 1) / w.scale_block : 0;
  L.scale_dtype = w.scale_dtype;
  const int k = 1 << w.bits;
  for (int c = 0; c < k; ++c) L.codebook[c] = load_value(w.codebooks, w.codebook_dtype, c);
  // The int8 product's codebook: c ~= q8_scale * (u - 64), |u - 64| <= 63. Of the scales
  // that fit the largest centroid, the one with the least squared rounding error over the
  // codebook (a search over 64 candidates down to 48 levels: 1.5-3x less error than
  // cmax / 63 on random codebooks, tests/test_kernels_cpu.cpp).
  float cmax = 0.0f;
  for (int c = 0; c < k; ++c) cmax = std::max(cmax, std::abs(L.codebook[c]));
  if (cmax > 0.0f) {
    double best = -1.0;
    for (int i = 0; i <= 64; ++i) {
      const float s = cmax / (63.0f - 15.0f * float(i) / 64.0f);
      double e = 0.0;
      for (int c = 0; c < k; ++c) {
        const double d = double(L.codebook[c]) - double(s) * std::nearbyint(L.codebook[c] / s);
        e += d * d;
      }
      if (best < 0.0 || e < best) best = e, L.q8_scale = s;
    }
  }
  for (int c = 0; c < 16; ++c) {
    const float q = cmax > 0.0f ? std::nearbyint(L.codebook[c] / L.q8_scale) : 0.0f;
    L.q8_table[c] = uint8_t(64 + int(std::clamp(q, -63.0f, 63.0f)));
  }

  const size_t wbytes = size_t(L.n_tiles * L.tile_bytes());
  const size_t sbytes = w.scale_block ? size_t(L.n_tiles * L.n_scale_blocks * kTile) * 2 : 0;
  // 64-byte aligned storage: weights, then scales. Padding stays zero (index 0, scale 0).
  const size_t total = wbytes + sbytes + 64;
  L.storage.reset(new uint8_t[total]());
  uint8_t* base = L.storage.get();
  base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  L.weights = base;
  if (sbytes) L.scales = reinterpret_cast<const uint16_t*>(base + wbytes);
  return p;
}

void lut_pack_tiles(const WeightView& w, LutWeight& L, int64_t tile0, int64_t tile1) {
  const int64_t row_bytes = (w.cols * w.bits + 7) / 8;
  const int64_t gpc = L.groups_per_chunk(), cpg = 4 / L.bits, n_groups = L.n_chunks * gpc;
  uint8_t* base = const_cast<uint8_t*>(L.weights);
  uint16_t* sc = const_cast<uint16_t*>(L.scales);
  std::vector<uint8_t> nib(static_cast<size_t>(n_groups));
  for (int64_t r = tile0 * kTile; r < std::min(w.rows, tile1 * kTile); ++r) {
    const uint8_t* idx = static_cast<const uint8_t*>(w.data) + r * row_bytes;
    // nibble g of this row covers columns g*cpg + [0, cpg). At 1, 2 and 4 bits that is
    // nibble g of the file's little-endian bit stream; 3-bit indices get one nibble each.
    std::fill(nib.begin(), nib.end(), 0);
    if (w.bits == 3) {
      for (int64_t j = 0; j < w.cols; ++j) nib[size_t(j)] = uint8_t(index_at(idx, j, 3));
    } else {
      const int64_t n = std::min(n_groups, (row_bytes * 8) / 4);
      for (int64_t g = 0; g < n; ++g) nib[size_t(g)] = uint8_t((idx[g >> 1] >> ((g & 1) * 4)) & 15);
      // bits of the last byte past the row's end are padding: clear them
      for (int64_t g = (w.cols + cpg - 1) / cpg; g < n; ++g) nib[size_t(g)] = 0;
      if (w.cols % cpg) {
        const int64_t g = w.cols / cpg;
        nib[size_t(g)] = uint8_t(nib[size_t(g)] & ((1u << ((w.cols % cpg) * L.bits)) - 1));
      }
    }
    const int64_t tile = r / kTile, lane = r % kTile;
    uint8_t* dst = base + tile * L.tile_bytes() + lane;
    for (int64_t c = 0; c < L.n_chunks; ++c) {
      const uint8_t* nc = nib.data() + c * gpc;
      uint8_t* dc = dst + c * L.chunk_bytes();
      for (int64_t v = 0; v < gpc / 2; ++v) dc[v * kTile] = uint8_t(nc[2 * v] | nc[2 * v + 1] << 4);
    }
    if (sc) {
      for (int64_t s = 0; s < L.n_scale_blocks; ++s) {
        uint16_t h;
        std::memcpy(&h, static_cast<const uint8_t*>(w.scales) + size_t(r * L.n_scale_blocks + s) * 2, 2);
        sc[(tile * L.n_scale_blocks + s) * kTile + lane] = h;
      }
    }
  }
}

std::unique_ptr<LutWeight> pack_lut(const WeightView& w) {
  auto L = lut_alloc(w);
  lut_pack_tiles(w, *L, 0, L->n_tiles);
  return L;
}

void lut_build_tables(const LutWeight& w, const float* x, int64_t ldx, int64_t n_tok, const LutTables& lt,
                      int64_t b0, int64_t b1) {
  const int bits = w.bits, cpg = 4 / bits;
  const unsigned mask = (1u << bits) - 1;
  const int64_t gpc = w.groups_per_chunk(), tb = w.table_bytes(), mb = w.mult_bytes();
  // Patterns: pat[i][v] = codebook[(v >> i*bits) & mask], so T[v] = sum_i x_i * pat[i][v].
  float pat[4][16];
  for (int i = 0; i < cpg; ++i)
    for (unsigned v = 0; v < 16; ++v) pat[i][v] = w.codebook[(v >> (i * bits)) & mask];
  const size_t ng = size_t(w.chunks_per_block * gpc);
  std::vector<float> tf(ng * 16), gmax(ng), inv(ng);
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* xt = x + t * ldx;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t c0 = b * w.chunks_per_block, c1 = std::min(w.n_chunks, c0 + w.chunks_per_block);
      float mx = 0.0f;
      float* f = tf.data();
      for (int64_t g = c0 * gpc; g < c1 * gpc; ++g) {
        float xv[4] = {0, 0, 0, 0};
        for (int i = 0; i < cpg; ++i) {
          const int64_t j = g * cpg + i;
          xv[i] = j < w.cols ? xt[j] : 0.0f;
        }
        float gm = 0.0f;
        for (unsigned v = 0; v < 16; ++v) {
          float s = xv[0] * pat[0][v];
          for (int i = 1; i < cpg; ++i) s += xv[i] * pat[i][v];
          f[v] = s;
          gm = std::max(gm, std::abs(s));
        }
        gmax[size_t(g - c0 * gpc)] = gm;
        mx = std::max(mx, gm);
        f += 16;
      }
      lt.tscale[t * w.n_blocks + b] =
          lut_block_factors(w, gmax.data(), (c1 - c0) * gpc, mx, lt.mults + t * mb + c0 * gpc * 16, inv.data());
      int8_t* out = lt.tables + t * tb + c0 * gpc * 16;
      for (int64_t g = 0; g < (c1 - c0) * gpc; ++g)
        for (int v = 0; v < 16; ++v) {
          const float q = std::nearbyint(tf[size_t(g * 16 + v)] * inv[size_t(g)]);
          out[g * 16 + v] = int8_t(std::clamp(q, -127.0f, 127.0f));
        }
    }
  }
}

float lut_block_factors(const LutWeight& w, const float* gmax, int64_t n_groups, float mx, uint8_t* mo, float* inv) {
  // Fine scale ts = max / (127 M); group g is stored in units of m_g * ts with
  // m_g = ceil(max_g * (M / max)), so |q| <= 127 and small groups keep their resolution.
  const float M = float(w.max_mult);
  const float ts = mx / (127.0f * M);
  const float r = mx > 0.0f ? M / mx : 0.0f;
  float inv_m[17] = {};
  for (int m = 1; m <= w.max_mult; ++m) inv_m[m] = mx > 0.0f ? 1.0f / (ts * float(m)) : 0.0f;
  for (int64_t g = 0; g < n_groups; g += 2) {  // n_groups is even (8 * bits per chunk)
    int m[2] = {1, 1};
    for (int k = 0; k < 2 && g + k < n_groups; ++k) {
      m[k] = std::clamp(int(std::ceil(gmax[g + k] * r)), 1, w.max_mult);
      inv[g + k] = inv_m[m[k]];
    }
    // pair (2v, 2v+1) -> 32 bytes: m_2v, m_2v+1 repeated
    const uint16_t pat = uint16_t(m[0] | m[1] << 8);
    uint16_t row[16];
    std::fill_n(row, 16, pat);
    std::memcpy(mo + g * 16, row, 32);
  }
  return ts;
}

void lut_matmul_ref(const LutWeight& w, const LutTables& lt, int64_t n_tok, float* y, int64_t ldy, int64_t tile0,
                    int64_t tile1) {
  const int64_t gpc = w.groups_per_chunk(), tb = w.table_bytes(), mb = w.mult_bytes();
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const uint8_t* wt = w.weights + tile * w.tile_bytes();
    for (int64_t t = 0; t < n_tok; ++t) {
      float acc[kTile] = {};
      for (int64_t b = 0; b < w.n_blocks; ++b) {
        int32_t isum[kTile] = {};
        const int64_t c0 = b * w.chunks_per_block, c1 = std::min(w.n_chunks, c0 + w.chunks_per_block);
        for (int64_t c = c0; c < c1; ++c) {
          const uint8_t* wp = wt + c * w.chunk_bytes();
          const int8_t* T = lt.tables + t * tb + c * gpc * 16;
          const uint8_t* m = lt.mults + t * mb + c * gpc * 16;
          for (int64_t v = 0; v < gpc / 2; ++v)
            for (int i = 0; i < kTile; ++i) {
              const uint8_t q = wp[v * kTile + i];
              isum[i] += m[v * 32] * T[(2 * v) * 16 + (q & 15)] + m[v * 32 + 1] * T[(2 * v + 1) * 16 + (q >> 4)];
            }
        }
        const float ts = lt.tscale[t * w.n_blocks + b];
        const uint16_t* sc = w.scales ? w.scales + (tile * w.n_scale_blocks + c0 / w.chunks_per_scale) * kTile : nullptr;
        for (int i = 0; i < kTile; ++i) {
          const float rs = sc ? load_value(sc, w.scale_dtype, i) : 1.0f;
          acc[i] = std::fma(float(isum[i]), rs * ts, acc[i]);
        }
      }
      for (int i = 0; i < kTile; ++i) {
        const int64_t r = tile * kTile + i;
        if (r < w.rows) y[t * ldy + r] = acc[i];
      }
    }
  }
}

bool lut_q8_supported(const LutWeight& w) { return w.bits == 4; }

void lut_q8_quantize(const LutWeight& w, const float* x, int64_t ldx, const LutQ8Acts& a, int64_t t0, int64_t t1) {
  const int64_t nc = w.n_chunks;
  for (int64_t t = t0; t < t1; ++t) {
    const float* xt = x + t * ldx;
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t j0 = c * kChunk, n = std::min(kChunk, w.cols - j0);
      float mx = 0.0f;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, std::abs(xt[j0 + j]));
      const float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
      int8_t* q = a.xq + t * nc * kChunk + j0;
      int32_t sum = 0;
      for (int64_t j = 0; j < kChunk; ++j) {
        const float v = j < n ? std::clamp(std::nearbyint(xt[j0 + j] * inv), -127.0f, 127.0f) : 0.0f;
        q[j] = int8_t(v);
        sum += q[j];
      }
      a.xs[t * nc + c] = mx / 127.0f;
      a.corr[t * nc + c] = 64 * sum;
    }
  }
}

size_t lut_q8_scratch_bytes(const LutWeight& w) {
  return size_t(w.n_chunks) * (kChunk * kTile + kTile * sizeof(float)) + 64;
}

void lut_q8_matmul_ref(const LutWeight& w, const LutQ8Acts& a, int64_t n_tok, float* y, int64_t ldy,
                       int64_t tile0, int64_t tile1, uint8_t* scratch) {
  const int64_t nc = w.n_chunks;
  const bool sc = w.scales != nullptr;
  uint8_t* dw = scratch;  // [chunk][32 cols][32 rows], row order natural here
  float* rf = reinterpret_cast<float*>(scratch + nc * kChunk * kTile);
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const uint8_t* wt = w.weights + tile * w.tile_bytes();
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t v = 0; v < 16; ++v)
        for (int i = 0; i < kTile; ++i) {
          const uint8_t q = wt[c * w.chunk_bytes() + v * kTile + i];
          dw[(c * kChunk + 2 * v) * kTile + i] = w.q8_table[q & 15];
          dw[(c * kChunk + 2 * v + 1) * kTile + i] = w.q8_table[q >> 4];
        }
      for (int i = 0; i < kTile; ++i)
        rf[c * kTile + i] =
            sc ? load_value(w.scales + (tile * w.n_scale_blocks + c / w.chunks_per_scale) * kTile, w.scale_dtype, i) *
                     w.q8_scale
               : w.q8_scale;
    }
    for (int64_t t = 0; t < n_tok; ++t) {
      float acc[kTile] = {};
      for (int64_t c = 0; c < nc; ++c) {
        const int8_t* q = a.xq + t * nc * kChunk + c * kChunk;
        const float xs = a.xs[t * nc + c];
        const int32_t corr = a.corr[t * nc + c];
        for (int i = 0; i < kTile; ++i) {
          int32_t isum = 0;
          for (int64_t j = 0; j < kChunk; ++j) isum += int32_t(dw[(c * kChunk + j) * kTile + i]) * q[j];
          const float f = rf[c * kTile + i] * xs;
          acc[i] = std::fma(float(isum - corr), f, acc[i]);
        }
      }
      for (int i = 0; i < kTile; ++i) {
        const int64_t r = tile * kTile + i;
        if (r < w.rows) y[t * ldy + r] = acc[i];
      }
    }
  }
}

}  // namespace kmq::cpu
