// The CPU kernel table: every hot operation behind a function pointer, filled once at
// start-up for the best ISA the CPU supports (KMQ_ISA overrides). The scalar reference
// (kernels_ref.cpp) is the specification every ISA variant is tested against.
// Kernels take pointers, sizes and tables only: no allocation, no I/O, no threads.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kmq/types.h"

namespace kmq::cpu {

struct LutWeight;  // lut.h
struct LutTables;
struct LutQ8Acts;

// A weight matrix [rows, cols] in any stored form (plain pointers into the mapped file).
// Quantized reconstruction: see include/kmq/quant.h.
struct WeightView {
  DType dtype = DType::kF32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;       // f32/f16/bf16 values, or packed indices (row_bytes per row)
  int bits = 0;
  CodebookScope scope = CodebookScope::kTensor;
  int64_t group_size = 0;
  int64_t scale_block = 0;          // 0 = no scales
  DType codebook_dtype = DType::kF32;
  DType scale_dtype = DType::kF16;
  const void* codebooks = nullptr;
  const void* scales = nullptr;
};

struct Kernels {
  const char* isa;  // "scalar", "avx2", "avx512", "neon"
  // out[0..cols) = row r of w, reconstructed in f32.
  void (*dequant_row)(const WeightView& w, int64_t r, float* out);
  // y[t * ldy + r] = dot(row r of w, x[t * ldx ...]) for rows [r0, r1), tokens [0, n_tok).
  // scratch: at least 4 * w.cols floats.
  void (*matmul)(const WeightView& w, const float* x, int64_t ldx, int64_t n_tok, float* y,
                 int64_t ldy, int64_t r0, int64_t r1, float* scratch);
  float (*dot)(const float* a, const float* b, int64_t n);
  // y += a * x
  void (*axpy)(float* y, float a, const float* x, int64_t n);
  // out = x / rms(x) * w (w may be nullptr: no gain)
  void (*rmsnorm)(float* out, const float* x, const float* w, int64_t n, float eps);
  // in-place softmax over n values
  void (*softmax)(float* x, int64_t n);
  // out = silu(gate) * up
  void (*swiglu)(float* out, const float* gate, const float* up, int64_t n);
  // The lookup-table product of lut.h for rows of tiles [tile0, tile1), bit-identical to
  // lut_matmul_ref; nullptr in the scalar table, which computes exactly (the reference).
  void (*lut_matmul)(const LutWeight& w, const LutTables& t, int64_t n_tok, float* y, int64_t ldy, int64_t tile0,
                     int64_t tile1);
  // lut_build_tables of lut.h (bit-identical to the portable version in every ISA).
  void (*lut_tables)(const LutWeight& w, const float* x, int64_t ldx, int64_t n_tok, const LutTables& t, int64_t b0,
                     int64_t b1);
  // The int8 product of lut.h (lut_q8_*) for rows of tiles [tile0, tile1), bit-identical
  // to lut_q8_matmul_ref; scratch: lut_q8_scratch_bytes, 64-byte aligned. nullptr where
  // the ISA has none (the scalar table: exact products).
  void (*lut_q8)(const LutWeight& w, const LutQ8Acts& a, int64_t n_tok, float* y, int64_t ldy, int64_t tile0,
                 int64_t tile1, uint8_t* scratch);
};

const Kernels& kernels_ref();
const Kernels& kernels_avx2();  // x86-64 with AVX2 + FMA + F16C (kernels_avx2.cpp; x86-64 builds only)
const Kernels& kernels_avx512();  // x86-64 with AVX-512 F + BW + VL + DQ and AVX2 (kernels_avx512.cpp)
const Kernels& kernels_neon();  // AArch64 NEON (kernels_neon.cpp; AArch64 builds only)
// The table in use: chosen on first call from the CPU's features and $KMQ_ISA.
// Throws kmq::Error if $KMQ_ISA names an ISA this CPU (or build) cannot run.
const Kernels& kernels();
// The ISAs this build can run on this CPU, best last ("scalar" always first).
std::string available_isas();
std::vector<const Kernels*> runnable_kernels();  // their tables, in the same order

}  // namespace kmq::cpu
