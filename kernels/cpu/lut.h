// Activation-side lookup-table (LUT) matrix products for quantized weights with one
// codebook per tensor (T-MAC style, see DESIGN_NOTES §2), at 1, 2, 3 and 4 bits.
//
// The idea: with one codebook c[0..2^b) per tensor, a row's dot product over a block of
// columns is  sum_j c[idx_j] * x_j. Group the columns so that one 4-bit "nibble" of
// indices covers g = 4/b columns (4 columns at 1 bit, 2 at 2 bits, 1 at 4 bits; 3-bit
// indices are widened to one per nibble at load time). For each nibble group of a token
// the 16 possible partial sums  T[v] = sum_{i<g} c[(v >> i*b) & mask] * x_{j0+i}  are
// computed once per token and shared by every row; a row then needs one table lookup
// per nibble, which x86 `vpshufb` and NEON `vqtbl1q_s8` do for 32 (16) rows at once.
// Tables are quantized to int8 with one fine scale per token and column block and a
// small integer multiplier m_g (1..max_mult) per nibble group, so that every group uses
// the full int8 range: T[v] ~= tscale * m_g * q_g[v]. The kernel's pairwise add
// (vpmaddubsw with the multipliers instead of ones) applies m_g for free. Lookups are
// summed exactly in int16, and each column block is flushed to float with the row's
// block scale:  y_r = sum_blocks  rowscale[r][blk] * tscale[blk] * isum_r[blk].
//
// Why this technique and not weight-side lookups with int8 dots (llama.cpp IQ4_NL):
// per 32 bytes of packed weights the inner loop costs about 12 vector instructions at
// every bit width (load, nibble split, 2 lookups, 2 interleaves, 2 pairwise adds, 2
// accumulates), so bytes per instruction stay constant as bits go down, while the
// weight-side path must expand every index to a byte, costing 4x more per byte at 1 bit
// than at 4 bits. Measurements: docs/PERFORMANCE.md.
//
// Prompts and batches at 3-4 bits take the weight-side technique instead (lut_q8_*,
// below): there a lookup per weight and token costs more than an integer dot, since a
// decoded tile is reused by every token. Measured on 1B shapes, 4.25 bpw, pp512, one
// thread (AMD Zen 5, 2026-12-04): LUT kernel 52.4 tok/s -> int8 product 117.9 with AVX-512
// VNNI (2.25x), 49.1 -> 55.7 with AVX2 (1.13x; 1.33x on two threads). Below 8 tokens the
// per-call tile decode (~8 VNNI tokens' worth of work) makes it lose, and at 1-2 bits the
// LUT kernel's cost per weight falls with the bits, so both stay on the LUT path.
//
// The packed layout (built once at load, pack_lut()):
//   rows are padded to tiles of 32, columns to chunks of 32; for tile t, chunk c, the
//   8*b' nibble groups of the chunk (b' = 4 for 3-bit) are stored as 4*b' vectors of 32
//   bytes: byte i of vector v = nib(row 32t+i, group 2v) | nib(row, group 2v+1) << 4.
//   Tiles are contiguous (chunk after chunk), so a tile streams sequentially.
//   Block scales: per tile and scale block, 32 values (f16 or bf16 as in the file), in
//   row order. Padded rows have index 0 and scale 0; padded columns index 0 and x = 0.
//
// Integer sums are exact (per flush, pairs * 2 * 127 * max_mult <= 32767), and the float
// flush is the same sequence of operations in every ISA (product rowscale*tscale, then
// one fused multiply-add per block), so every ISA's result is bit-identical to
// lut_matmul_ref.
#pragma once
#include <cstdint>
#include <memory>

#include "kernels/cpu/kernels.h"

namespace kmq::cpu {

struct LutWeight {
  int64_t rows = 0, cols = 0;     // logical shape
  int64_t n_tiles = 0;            // ceil(rows / 32)
  int64_t n_chunks = 0;           // ceil(cols / 32)
  int bits = 0;                   // stored bits per index: 1, 2 or 4 (3-bit files widened)
  int64_t chunks_per_block = 0;   // flush block, in chunks (divides the scale block)
  int max_mult = 1;               // largest per-group table multiplier (int16 sums cannot overflow)
  int64_t n_blocks = 0;           // ceil(n_chunks / chunks_per_block)
  int64_t chunks_per_scale = 0;   // scale block in chunks (0: no scales)
  int64_t n_scale_blocks = 0;     // per row
  DType scale_dtype = DType::kF16;
  float codebook[16] = {};        // 2^bits entries (3-bit: 8, rest 0)
  // The int8 product (lut_q8_*, below; stored bits 4 only): codebook[k] ~= q8_scale *
  // (q8_table[k] - 64), q8_table[k] in [1, 127].
  uint8_t q8_table[16] = {};
  float q8_scale = 0.0f;
  std::unique_ptr<uint8_t[]> storage;
  const uint8_t* weights = nullptr;   // n_tiles * tile_bytes()
  const uint16_t* scales = nullptr;   // n_tiles * n_scale_blocks * 32 (nullptr: no scales)

  int64_t chunk_bytes() const { return int64_t(128) * bits; }    // 32 rows x 32 cols x bits / 8
  int64_t tile_bytes() const { return n_chunks * chunk_bytes(); }
  int64_t groups_per_chunk() const { return int64_t(8) * bits; }  // nibble groups
  int64_t table_bytes() const { return n_chunks * groups_per_chunk() * 16; }  // per token
  // Multipliers per token: for each pair of groups (2v, 2v+1), 32 bytes m_2v, m_2v+1, m_2v, ...
  int64_t mult_bytes() const { return n_chunks * groups_per_chunk() * 16; }
  size_t memory_bytes() const;
};

// True when w can use the LUT path: quantized, one codebook per tensor, and either no
// scales or a scale block that is a multiple of 32 columns.
bool lut_supported(const WeightView& w);
// Repacks w (lut_supported) into the layout above. pack_lut does it all; a caller with
// threads calls lut_alloc once, then lut_pack_tiles on disjoint tile ranges.
std::unique_ptr<LutWeight> pack_lut(const WeightView& w);
std::unique_ptr<LutWeight> lut_alloc(const WeightView& w);
void lut_pack_tiles(const WeightView& w, LutWeight& L, int64_t tile0, int64_t tile1);

// The per-token operands of the LUT product, built by lut_build_tables.
struct LutTables {
  int8_t* tables = nullptr;   // [n_tok][table_bytes]: chunk-major, 16 int8 entries per nibble group
  uint8_t* mults = nullptr;   // [n_tok][mult_bytes]
  float* tscale = nullptr;    // [n_tok][n_blocks]
};

// Tables for blocks [b0, b1) of n_tok tokens (x rows of width cols, stride ldx).
// Portable code, the same in every ISA (the tables must be bit-identical).
void lut_build_tables(const LutWeight& w, const float* x, int64_t ldx, int64_t n_tok, const LutTables& t,
                      int64_t b0, int64_t b1);

// The quantization step of lut_build_tables, shared by every ISA's builder: given a
// block's float tables f (16 per group, n_groups groups), their per-group maxima gmax and
// the block maximum mx, writes tscale, the int8 tables of groups that the caller does not
// (quantize = false: only multipliers and the per-group factor 1/(ts*m) into inv[]).
float lut_block_factors(const LutWeight& w, const float* gmax, int64_t n_groups, float mx, uint8_t* mults,
                        float* inv);

// Scalar reference of the LUT product: y[t * ldy + r] for rows of tiles [tile0, tile1).
void lut_matmul_ref(const LutWeight& w, const LutTables& t, int64_t n_tok, float* y, int64_t ldy, int64_t tile0,
                    int64_t tile1);

// The int8 product for prompts and batches at 3-4 bits (stored bits 4), where a lookup per
// weight and token costs more than an integer dot (measurements: docs/PERFORMANCE.md).
// Same packed weights; per call each tile is decoded once to unsigned bytes
// q8_table[idx] in [1, 127] (the codebook quantized to 7 bits, c ~= q8_scale * (u - 64)),
// and every token's x is quantized per chunk of 32 columns to int8 [-127, 127] with
// scale xs (x ~= xs * q). Per row, token and chunk the integer dot is exact in int32:
//   isum = sum_j u_j * q_j,   isum - corr = sum_j (u_j - 64) * q_j,   corr = 64 * sum_j q_j,
// (u8 x s8 products: vpdpbusd on AVX-512 VNNI; AVX2's vpmaddubsw pairs stay below 2^15
// since 2 * 127 * 127 < 32768, which is why the codebook has 7 bits). The float flush is
// the same in every ISA: f = rowfactor * xs, acc = fma(float(isum - corr), f, acc), with
// rowfactor = float(row scale of the chunk) * q8_scale (q8_scale alone without scales),
// chunks in order: every ISA's result is bit-identical to lut_q8_matmul_ref.
struct LutQ8Acts {
  int8_t* xq = nullptr;     // [n_tok][n_chunks * 32], padded columns 0
  float* xs = nullptr;      // [n_tok][n_chunks]
  int32_t* corr = nullptr;  // [n_tok][n_chunks]
};
bool lut_q8_supported(const LutWeight& w);  // stored bits 4 (3- and 4-bit files)
// Quantizes tokens [t0, t1) of x (rows of width w.cols, stride ldx). Portable code.
void lut_q8_quantize(const LutWeight& w, const float* x, int64_t ldx, const LutQ8Acts& a, int64_t t0, int64_t t1);
// Per-thread scratch of the kernels: one decoded tile and its row factors (64-aligned).
size_t lut_q8_scratch_bytes(const LutWeight& w);
// Scalar reference: y[t * ldy + r] for tokens [0, n_tok) and rows of tiles [tile0, tile1).
void lut_q8_matmul_ref(const LutWeight& w, const LutQ8Acts& a, int64_t n_tok, float* y, int64_t ldy,
                       int64_t tile0, int64_t tile1, uint8_t* scratch);
// The row order of a decoded tile (x86 kernels' unpack order): position p holds row
// kLutQ8Rows[p] of the tile; the decoded tile of chunk c and step s (columns 32c + 4s ..
// 32c + 4s + 3) is 128 bytes: position p's 4 bytes at 4p.
inline constexpr int kLutQ8Rows[32] = {0, 1, 2,  3,  16, 17, 18, 19, 4,  5,  6,  7,  20, 21, 22, 23,
                                       8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31};

}  // namespace kmq::cpu
