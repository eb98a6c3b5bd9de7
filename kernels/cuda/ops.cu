// Element-wise and row-wise kernels (see ops.cuh).
#include <algorithm>

#include "kernels/cuda/ops.cuh"

namespace kmq::cuda {
namespace {

unsigned blocks_for(int64_t n, int threads) { return unsigned(std::min<int64_t>((n + threads - 1) / threads, 65535)); }

__global__ void embed_kernel(float* out, CudaWeight w, const int32_t* tokens, int64_t n_tok) {
  pdl_wait();
  pdl_trigger();
  const int64_t t = blockIdx.y;
  const int64_t r = tokens[t];
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < w.cols; j += int64_t(gridDim.x) * blockDim.x)
    out[t * w.cols + j] = weight_at(w, r, j);
}

// One block per token. dim <= kNormVec * 4 * blockDim (16384 at 1024 threads): the row is
// read once, as float4 into registers (sum of squares and scaling in one pass over
// memory); otherwise a second pass re-reads it. The former version (256 threads, two
// passes) took ~10 us per call on an H200, 16% of a decode step.
constexpr int kNormVec = 4;
__global__ void __launch_bounds__(1024) rmsnorm_kernel(float* out, const float* x, const float* g, int64_t dim,
                                                       float eps) {
  pdl_wait();
  pdl_trigger();
  __shared__ float part[32];
  const float* xr = x + int64_t(blockIdx.x) * dim;
  float* orow = out + int64_t(blockIdx.x) * dim;
  const bool vec = dim % 4 == 0 && dim <= int64_t(kNormVec) * 4 * blockDim.x &&
                   (reinterpret_cast<uintptr_t>(x) & 15u) == 0 && (reinterpret_cast<uintptr_t>(out) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(g) & 15u) == 0;
  float4 v[kNormVec];
  float ss = 0.0f;
  if (vec) {
#pragma unroll
    for (int u = 0; u < kNormVec; ++u) {
      const int64_t i = (int64_t(u) * blockDim.x + threadIdx.x) * 4;
      v[u] = i < dim ? *reinterpret_cast<const float4*>(xr + i) : make_float4(0, 0, 0, 0);
      ss = fmaf(v[u].x, v[u].x, ss), ss = fmaf(v[u].y, v[u].y, ss);
      ss = fmaf(v[u].z, v[u].z, ss), ss = fmaf(v[u].w, v[u].w, ss);
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  }
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float s = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
    s = warp_sum(s);
    if (threadIdx.x == 0) part[0] = s;
  }
  __syncthreads();
  const float inv = rsqrtf(part[0] / float(dim) + eps);
  if (vec) {
#pragma unroll
    for (int u = 0; u < kNormVec; ++u) {
      const int64_t i = (int64_t(u) * blockDim.x + threadIdx.x) * 4;
      if (i < dim) {
        const float4 gv = *reinterpret_cast<const float4*>(g + i);
        *reinterpret_cast<float4*>(orow + i) =
            make_float4(v[u].x * inv * gv.x, v[u].y * inv * gv.y, v[u].z * inv * gv.z, v[u].w * inv * gv.w);
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = xr[i] * inv * g[i];
  }
}

__global__ void rope_kernel(float* x, int64_t n_heads, int64_t hd, const float* inv_freq, const int32_t* pos) {
  pdl_wait();
  pdl_trigger();
  const int64_t t = blockIdx.y, h = blockIdx.x, half = hd / 2;
  const float p = float(*pos + t);
  float* v = x + (t * n_heads + h) * hd;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float ang = p * inv_freq[i];
    float s, c;
    sincosf(ang, &s, &c);
    const float a = v[i], b = v[half + i];
    v[i] = a * c - b * s;
    v[half + i] = b * c + a * s;
  }
}

__global__ void swiglu_kernel(float* out, const float* gate, const float* up, int64_t n) {
  pdl_wait();
  pdl_trigger();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  pdl_wait();
  pdl_trigger();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

__global__ void add_bias_kernel(float* y, const float* b, int64_t n, int64_t width) {
  pdl_wait();
  pdl_trigger();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i % width];
}

__global__ void f32_to_f16_kernel(uint16_t* out, const float* x, int64_t n_tok, int64_t cols, int64_t ldx) {
  pdl_wait();
  pdl_trigger();
  const int64_t n = n_tok * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / cols, j = i - t * cols;
    out[i] = f32_to_f16_bits(x[t * ldx + j]);
  }
}

__global__ void read_probe_kernel(const float4* x, int64_t n4, float* sums) {
  float s = 0.0f;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += int64_t(gridDim.x) * blockDim.x) {
    const float4 v = __ldcs(x + i);
    s += v.x + v.y + v.z + v.w;
  }
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) atomicAdd(sums + blockIdx.x, s);
}

__global__ void copy_probe_kernel(float4* y, const float4* x, int64_t n4) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += int64_t(gridDim.x) * blockDim.x)
    __stcs(y + i, __ldcs(x + i));
}

}  // namespace

void embed_cuda(float* out, const CudaWeight& w, const int32_t* tokens, int64_t n_tok, cudaStream_t st, bool pdl) {
  if (n_tok <= 0) return;
  const dim3 grid{unsigned(std::min<int64_t>((w.cols + 255) / 256, 64)), unsigned(n_tok)};
  launch_kernel(embed_kernel, grid, dim3(256), 0, st, pdl, out, w, tokens, n_tok);
}

void rmsnorm_cuda(float* out, const float* x, const float* g, int64_t n_tok, int64_t dim, float eps, cudaStream_t st,
                  bool pdl) {
  if (n_tok <= 0) return;
  // enough threads for one float4 per thread and kNormVec rounds (4096 wide: 256 threads)
  const int64_t want = (dim / 4 + kNormVec - 1) / kNormVec;
  const unsigned threads = unsigned(std::clamp<int64_t>((want + 31) / 32 * 32, 128, 1024));
  launch_kernel(rmsnorm_kernel, dim3(unsigned(n_tok)), dim3(threads), 0, st, pdl, out, x, g, dim, eps);
}

void rope_cuda(float* x, int64_t n_tok, int64_t n_heads, int64_t hd, const float* inv_freq, const int32_t* pos,
               cudaStream_t st, bool pdl) {
  if (n_tok <= 0) return;
  const dim3 grid{unsigned(n_heads), unsigned(n_tok)};
  launch_kernel(rope_kernel, grid, dim3(unsigned(std::clamp<int64_t>(hd / 2, 32, 256))), 0, st, pdl, x, n_heads, hd,
                inv_freq, pos);
}

void swiglu_cuda(float* out, const float* gate, const float* up, int64_t n, cudaStream_t st, bool pdl) {
  if (n <= 0) return;
  launch_kernel(swiglu_kernel, dim3(blocks_for(n, 256)), dim3(256), 0, st, pdl, out, gate, up, n);
}

void add_cuda(float* y, const float* x, int64_t n, cudaStream_t st, bool pdl) {
  if (n <= 0) return;
  launch_kernel(add_kernel, dim3(blocks_for(n, 256)), dim3(256), 0, st, pdl, y, x, n);
}

void add_bias_cuda(float* y, const float* b, int64_t n_tok, int64_t width, cudaStream_t st, bool pdl) {
  if (n_tok * width <= 0) return;
  launch_kernel(add_bias_kernel, dim3(blocks_for(n_tok * width, 256)), dim3(256), 0, st, pdl, y, b, n_tok * width,
                width);
}

void f32_to_f16_cuda(uint16_t* out, const float* x, int64_t n_tok, int64_t cols, int64_t ldx, cudaStream_t st) {
  if (n_tok * cols <= 0) return;
  f32_to_f16_kernel<<<blocks_for(n_tok * cols, 256), 256, 0, st>>>(out, x, n_tok, cols, ldx);
  KMQ_CUDA_LAUNCHED();
}

void read_probe_cuda(const float* x, int64_t n, float* sums, cudaStream_t st) {
  read_probe_kernel<<<132 * 8, 512, 0, st>>>(reinterpret_cast<const float4*>(x), n / 4, sums);
  KMQ_CUDA_LAUNCHED();
}

void copy_probe_cuda(float* y, const float* x, int64_t n, cudaStream_t st) {
  copy_probe_kernel<<<132 * 8, 512, 0, st>>>(reinterpret_cast<float4*>(y), reinterpret_cast<const float4*>(x), n / 4);
  KMQ_CUDA_LAUNCHED();
}

}  // namespace kmq::cuda

namespace kmq::cuda {
void check_kernel_image() {
  cudaFuncAttributes a;
  KMQ_CUDA_CHECK(cudaFuncGetAttributes(&a, add_kernel));
}
}  // namespace kmq::cuda
