// A weight matrix as the CUDA backend stores it in device memory, and the per-element
// reconstruction every CUDA kernel agrees with (include/kmq/quant.h defines the values).
//
// Float tensors (f32, f16, bf16): the file's row-major values, unchanged.
// Quantized tensors (dtype kKmq) come in one of two index layouts:
//  - fast (row_words > 0): chosen at upload when every scale block and codebook group is
//    a multiple of 32 weights. Each row is cut into sub-chunks of 32 weights, `bits`
//    32-bit words each, the row padded to a multiple of 4 sub-chunks (128 weights) so a
//    row starts on a 16-byte boundary: row_words = ceil(cols/128)*4*bits. Sub-chunk s of
//    row r is words [r*row_words + s*bits, + bits). Bits 1, 2, 4: the LSB-first stream
//    of the format (index jj in bits [jj*b, jj*b+b) of the sub-chunk) — for cols % 128
//    == 0 byte-identical to the file. Bits 3: word 0 holds the low 2 bits of indices
//    0..15 (2 bits each, LSB first), word 1 those of 16..31, word 2 the high bit of
//    index jj at bit jj: no index straddles a word.
//  - plain (row_words == 0): the file's bit stream, row_bytes = ceil(cols*bits/8) per
//    row, plus one zero byte at the end so a 16-bit read never leaves the buffer.
// Codebooks are f32 on the device (converted at upload); scales stay f16/bf16.
#pragma once
#include <cstdint>

#include "kernels/cuda/common.cuh"

#ifdef __CUDACC__
#define KMQ_HD __host__ __device__
#else
#define KMQ_HD
#endif

namespace kmq::cuda {

enum : int { kDtF32 = 0, kDtF16 = 1, kDtBF16 = 2, kDtKmq = 3 };  // = kmq::DType values
enum : int { kScopeTensor = 0, kScopeRow = 1, kScopeGroup = 2 };  // = kmq::CodebookScope

struct CudaWeight {
  int dtype = kDtF32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;  // values, or indices in the layout above
  int bits = 0;
  int scope = kScopeTensor;
  int64_t group_size = 0;   // scope group only
  int64_t scale_block = 0;  // 0: no scales
  int64_t row_words = 0;    // > 0: fast layout
  bool scale_bf16 = false;  // scales are bf16 (else f16)
  const float* codebooks = nullptr;  // n_cb * 2^bits
  const uint16_t* scales = nullptr;  // rows * ceil(cols/scale_block)

  KMQ_HD int64_t n_groups() const { return scope == kScopeGroup ? (cols + group_size - 1) / group_size : 1; }
  KMQ_HD int64_t n_scale_blocks() const { return scale_block ? (cols + scale_block - 1) / scale_block : 0; }
};

#ifdef __CUDACC__
__device__ __forceinline__ float scale_at(const CudaWeight& w, int64_t r, int64_t j) {
  if (!w.scale_block) return 1.0f;
  const uint16_t h = w.scales[r * w.n_scale_blocks() + j / w.scale_block];
  return w.scale_bf16 ? bf16_bits_to_f32(h) : f16_bits_to_f32(h);
}

__device__ __forceinline__ int64_t codebook_at(const CudaWeight& w, int64_t r, int64_t j) {
  return w.scope == kScopeTensor ? 0 : w.scope == kScopeRow ? r : r * w.n_groups() + j / w.group_size;
}

__device__ __forceinline__ unsigned index_at(const CudaWeight& w, int64_t r, int64_t j) {
  const unsigned mask = (1u << w.bits) - 1u;
  if (w.row_words) {
    const uint32_t* s = static_cast<const uint32_t*>(w.data) + r * w.row_words + (j >> 5) * w.bits;
    const unsigned jj = unsigned(j & 31);
    if (w.bits == 3) return ((s[jj >> 4] >> (2 * (jj & 15))) & 3u) | (((s[2] >> jj) & 1u) << 2);
    const unsigned bit = jj * unsigned(w.bits);
    return (s[bit >> 5] >> (bit & 31)) & mask;
  }
  const int64_t row_bytes = (w.cols * w.bits + 7) / 8;
  const uint8_t* p = static_cast<const uint8_t*>(w.data) + r * row_bytes;
  const int64_t bit = j * w.bits;
  const unsigned v = unsigned(p[bit >> 3]) | unsigned(p[(bit >> 3) + 1]) << 8;
  return (v >> (bit & 7)) & mask;
}

// w[r][j] reconstructed in f32 (any dtype, either layout).
__device__ __forceinline__ float weight_at(const CudaWeight& w, int64_t r, int64_t j) {
  switch (w.dtype) {
    case kDtF32: return static_cast<const float*>(w.data)[r * w.cols + j];
    case kDtF16: return f16_bits_to_f32(static_cast<const uint16_t*>(w.data)[r * w.cols + j]);
    case kDtBF16: return bf16_bits_to_f32(static_cast<const uint16_t*>(w.data)[r * w.cols + j]);
    default: break;
  }
  const float c = w.codebooks[(codebook_at(w, r, j) << w.bits) + index_at(w, r, j)];
  return w.scale_block ? c * scale_at(w, r, j) : c;
}
#endif

}  // namespace kmq::cuda
