// Element-wise and row-wise operations of the forward pass on the GPU. Host launchers;
// pointers are device memory; pdl: launch with programmatic dependent launch (common.cuh). Positions and token ids are read from device memory
// (`pos`, `tokens`) so that a captured CUDA graph replays with new values.
#pragma once
#include <cstdint>

#include "kernels/cuda/weight.cuh"

namespace kmq::cuda {

// out[t, :] = row tokens[t] of w (any dtype and layout), t < n_tok.
void embed_cuda(float* out, const CudaWeight& w, const int32_t* tokens, int64_t n_tok, cudaStream_t stream,
                bool pdl = false);
// out[t, :] = x[t, :] / rms(x[t, :]) * g, rows of width dim.
void rmsnorm_cuda(float* out, const float* x, const float* g, int64_t n_tok, int64_t dim, float eps,
                  cudaStream_t stream, bool pdl = false);
// Rotate-half RoPE in place on x [n_tok, n_heads * head_dim], token t at position *pos + t.
void rope_cuda(float* x, int64_t n_tok, int64_t n_heads, int64_t head_dim, const float* inv_freq,
               const int32_t* pos, cudaStream_t stream, bool pdl = false);
void swiglu_cuda(float* out, const float* gate, const float* up, int64_t n, cudaStream_t stream, bool pdl = false);
void add_cuda(float* y, const float* x, int64_t n, cudaStream_t stream, bool pdl = false);  // y += x
void add_bias_cuda(float* y, const float* b, int64_t n_tok, int64_t width, cudaStream_t stream,
                   bool pdl = false);  // y[t,:] += b
void f32_to_f16_cuda(uint16_t* out, const float* x, int64_t n_tok, int64_t cols, int64_t ldx, cudaStream_t stream);
// Reads n floats (n % 4 == 0, 16-byte loads) and adds one sum per block into sums[0..1056):
// a read-bandwidth probe.
void read_probe_cuda(const float* x, int64_t n, float* sums, cudaStream_t stream);
// y = x (16-byte loads and stores): a copy-bandwidth probe.
void copy_probe_cuda(float* y, const float* x, int64_t n, cudaStream_t stream);

}  // namespace kmq::cuda

namespace kmq::cuda {
// Throws (via KMQ_CUDA_CHECK) when this binary has no kernel image for the current device.
void check_kernel_image();
}  // namespace kmq::cuda
