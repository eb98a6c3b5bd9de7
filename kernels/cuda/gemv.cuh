// Matrix-vector products for decode (a few tokens): y[t*ldy + r] = dot(row r of W, x[t*ldx ..])
// for t < n_tok, rows [0, W.rows). Host launchers; all pointers are device memory.
//
// Variants:
//  - gemv_kmq_cuda: the fused lookup-table kernel for quantized weights in the fast
//    layout (weight.cuh), bits 1-4 as template parameters, codebook scope tensor (table
//    in shared memory), row (per-warp tables in shared memory) or group (table read
//    through L1). Blocks of 8 warps stage x in shared memory (36 floats per 32 columns:
//    conflict-free float4 reads); each warp owns 2 rows; each lane streams 16 contiguous
//    bytes of each row per step (coalesced 512-byte warp loads, next step prefetched),
//    decodes 32-weight sub-chunks, sums codebook[idx]*x per sub-chunk and applies the
//    block scale once per sub-chunk. Needs x 16-byte aligned, ldx % 4 == 0 and one
//    token's x in 200 KB of shared memory (cols <= 44k); 2 tokens per pass.
//    It serves what the integer kernel below does not take (3 bits, per-row and per-group
//    codebooks, 32-weight scale blocks, KMQ_CUDA_GEMV=f32) and spends 7-9 instructions
//    per weight (docs/PERFORMANCE.md, GPU).
//  - gemv_q8_cuda (gemv_q8.cu): tensor-scope codebooks at 1, 2, 4 bits with dp4a on int8
//    planes of x and of the codebook; the default where it applies.
//  - gemv_half_cuda: f16 / bf16 weights with cols % 8 == 0 (16-byte loads).
//  - gemv_any_cuda: any weight and layout, one element at a time (reference speed).
// Measured numbers: docs/PERFORMANCE.md, section GPU.
#pragma once
#include <cstdint>

#include "kernels/cuda/weight.cuh"

namespace kmq::cuda {

// True when gemv_kmq_cuda / gemv_half_cuda accept this weight and x.
bool gemv_kmq_supported(const CudaWeight& w, const float* x, int64_t ldx);
bool gemv_half_supported(const CudaWeight& w, const float* x, int64_t ldx);

void gemv_kmq_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                   cudaStream_t stream);
// The integer (dp4a) kernel of gemv_q8.cu: tensor-scope codebooks at 1, 2, 4 bits in the
// fast layout, scale block 0 or 64 * 2^k; x quantized per 64 columns in x_planes (1 or 2)
// int8 planes. gemv_kmq_cuda uses it where it applies unless KMQ_CUDA_GEMV=f32.
bool gemv_q8_supported(const CudaWeight& w, const float* x, int64_t ldx);
void gemv_q8_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                  int x_planes, cudaStream_t stream);
void gemv_half_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                    cudaStream_t stream);
void gemv_any_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                   cudaStream_t stream);

// out[(r - r0) * cols + j] = f16(w[r][j]) for r in [r0, r0 + n_rows): the tile source of
// the tensor-core path (cuBLAS f16 GEMM on dequantized row slabs).
void dequant_f16_cuda(const CudaWeight& w, int64_t r0, int64_t n_rows, uint16_t* out, cudaStream_t stream);

}  // namespace kmq::cuda
