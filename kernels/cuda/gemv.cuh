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
//  - gemv_q8_cuda / gemv_q8_job_cuda (gemv_q8.cu): tensor-scope codebooks at 1, 2, 4 bits
//    with dp4a on int8 planes of x and of the codebook; the default where it applies; a
//    job fuses the decode path's RMSNorm, q/k/v or gate/up, SwiGLU and residual add.
//  Launchers take pdl: programmatic dependent launch (common.cuh).
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
                   cudaStream_t stream, bool pdl = false);
// The integer kernel's precision, chosen by KMQ_CUDA_GEMV (read on every call; the backend
// reads it once when it is created):
//   q8lite (kQ8X1C1, the default): x and the codebook in one int8 plane each (the
//          codebook's scale searched to minimise its rounding), about half the 2- and
//          4-bit decode work of q8; the backend keeps the output layer at q8;
//   q8     (kQ8X2): x in two int8 planes, the codebook in two (~16 bits each);
//   q8fast (kQ8X1): x in one int8 plane (llama.cpp's q8_1), the codebook in two;
//   f32    (kQ8Off): never the integer kernel.
enum Q8Mode : int { kQ8Off = 0, kQ8X1 = 1, kQ8X2 = 2, kQ8X1C1 = 3 };
int q8_mode();
// The integer (dp4a) kernel of gemv_q8.cu: tensor-scope codebooks at 1, 2, 4 bits in the
// fast layout, scale block 0 or 64 * 2^k; x quantized per 64 columns to int8 as `mode`
// (a Q8Mode other than kQ8Off) says. gemv_kmq_cuda uses it where it applies unless KMQ_CUDA_GEMV=f32.
bool gemv_q8_supported(const CudaWeight& w, const float* x, int64_t ldx);
void gemv_q8_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                  int mode, cudaStream_t stream, bool pdl = false);

// One launch of the integer kernel over up to 3 weights that read the same x (the decode
// path's q/k/v, gate/up), with optional fusions (docs/PERFORMANCE.md, GPU):
//  - norm_g: x is RMS-normalised on the fly, x' = x / rms(x) * g (each block computes the
//    norm of the whole row); norm_out (if set) receives x' in f32 ([n_tok][cols]).
//  - resid (n_w == 1): resid[t*ldr + r] += y[t*ldy + r] as well (the residual add).
//  - swiglu_out (n_w == 2: gate, up, equal rows): out[t*ldy + r] = silu(g) * u as well;
//    y[0] (gate) is not written when it is swiglu_out itself.
// Every y[i] is written ([n_tok][ldy[i]]). Weights must satisfy gemv_q8_supported and
// gemv_q8_same_geometry with w[0]; x (raw, before the norm) 16-byte aligned, ldx % 4 == 0.
struct Q8Job {
  int n_w = 1;
  CudaWeight w[3];
  float* y[3] = {nullptr, nullptr, nullptr};
  int64_t ldy[3] = {0, 0, 0};
  const float* x = nullptr;
  int64_t ldx = 0;
  int64_t n_tok = 1;
  const float* norm_g = nullptr;
  float norm_eps = 0.0f;
  float* norm_out = nullptr;
  float* resid = nullptr;
  int64_t ldr = 0;
  float* swiglu_out = nullptr;
  int trigger = 0;          // PDL trigger: 0 after the wait, 1 after staging x, 2 at each warp's last step
};
bool gemv_q8_same_geometry(const CudaWeight& a, const CudaWeight& b);
void gemv_q8_job_cuda(const Q8Job& job, int mode, cudaStream_t stream, bool pdl);

void gemv_half_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                    cudaStream_t stream, bool pdl = false);
void gemv_any_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                   cudaStream_t stream, bool pdl = false);

// out[(r - r0) * cols + j] = f16(w[r][j]) for r in [r0, r0 + n_rows): the tile source of
// the tensor-core path (cuBLAS f16 GEMM on dequantized row slabs).
void dequant_f16_cuda(const CudaWeight& w, int64_t r0, int64_t n_rows, uint16_t* out, cudaStream_t stream);

}  // namespace kmq::cuda
