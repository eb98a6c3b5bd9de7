// Attention kernels (see attention.cuh).
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/common.cuh"

namespace kmq::cuda {
namespace {

constexpr int kWarps = 4;

__global__ void store_kv_kernel(float* kc, float* vc, const float* k, const float* v, int64_t n, const int32_t* pos,
                                int64_t kv_dim) {
  const int64_t off = int64_t(*pos) * kv_dim;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    kc[off + i] = k[i];
    vc[off + i] = v[i];
  }
}

__device__ __forceinline__ float weight_of(float m, float big_m) { return m == -INFINITY ? 0.0f : expf(m - big_m); }

template <int NE>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(float* out, const float* __restrict__ q,
                                                                const float* __restrict__ kc,
                                                                const float* __restrict__ vc, int64_t n_heads,
                                                                int64_t n_kv, int64_t hd, int64_t window,
                                                                const int32_t* pos, int64_t chunk, int n_splits,
                                                                float* partial) {
  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float so[kWarps][NE * 32];
  const int64_t h = blockIdx.x, t = blockIdx.y, split = blockIdx.z;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int64_t p = int64_t(*pos) + t;
  const int64_t start = window > 0 ? max(int64_t(0), p - window + 1) : 0;
  const int64_t lo = max(start, split * chunk), hi = min(p + 1, (split + 1) * chunk);
  const int64_t kvh = h / (n_heads / n_kv), kv_dim = n_kv * hd;
  const float scale = rsqrtf(float(hd));
  float qv[NE], o[NE];
#pragma unroll
  for (int i = 0; i < NE; ++i) {
    const int64_t e = lane + 32 * i;
    qv[i] = e < hd ? q[(t * n_heads + h) * hd + e] : 0.0f;
    o[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int64_t s = lo + warp; s < hi; s += kWarps) {
    const float* kr = kc + s * kv_dim + kvh * hd;
    const float* vr = vc + s * kv_dim + kvh * hd;
    float d = 0.0f;
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int64_t e = lane + 32 * i;
      if (e < hd) d = fmaf(qv[i], kr[e], d);
    }
    d = warp_sum(d) * scale;
    const float m_new = fmaxf(m, d);
    const float corr = weight_of(m, m_new), pe = expf(d - m_new);
    l = l * corr + pe;
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int64_t e = lane + 32 * i;
      o[i] = o[i] * corr + (e < hd ? pe * vr[e] : 0.0f);
    }
    m = m_new;
  }
  if (lane == 0) sm[warp] = m, sl[warp] = l;
#pragma unroll
  for (int i = 0; i < NE; ++i) so[warp][i * 32 + lane] = o[i];
  __syncthreads();
  if (warp != 0) return;
  float big_m = sm[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) big_m = fmaxf(big_m, sm[w]);
  float big_l = 0.0f, ow[kWarps];
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    ow[w] = weight_of(sm[w], big_m);
    big_l += sl[w] * ow[w];
  }
  const int64_t row = t * n_heads + h;
  if (n_splits == 1) {
    const float inv = big_l > 0.0f ? 1.0f / big_l : 0.0f;
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int64_t e = lane + 32 * i;
      float acc = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) acc += so[w][i * 32 + lane] * ow[w];
      if (e < hd) out[row * hd + e] = acc * inv;
    }
  } else {
    float* pp = partial + (row * n_splits + split) * (hd + 2);
    if (lane == 0) pp[0] = big_m, pp[1] = big_l;
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int64_t e = lane + 32 * i;
      float acc = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) acc += so[w][i * 32 + lane] * ow[w];
      if (e < hd) pp[2 + e] = acc;
    }
  }
}

// One block per (head, token): merges the splits' (max, sum, o).
__global__ void attention_merge_kernel(float* out, const float* partial, int64_t n_heads, int64_t hd, int n_splits) {
  const int64_t row = int64_t(blockIdx.y) * n_heads + blockIdx.x;
  const float* pp = partial + row * n_splits * (hd + 2);
  float big_m = -INFINITY;
  for (int s = 0; s < n_splits; ++s) big_m = fmaxf(big_m, pp[s * (hd + 2)]);
  float big_l = 0.0f;
  for (int s = 0; s < n_splits; ++s) big_l += pp[s * (hd + 2) + 1] * weight_of(pp[s * (hd + 2)], big_m);
  const float inv = big_l > 0.0f ? 1.0f / big_l : 0.0f;
  for (int64_t e = threadIdx.x; e < hd; e += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < n_splits; ++s) acc += pp[s * (hd + 2) + 2 + e] * weight_of(pp[s * (hd + 2)], big_m);
    out[row * hd + e] = acc * inv;
  }
}

}  // namespace

void store_kv_cuda(float* k_cache, float* v_cache, const float* k, const float* v, int64_t n_tok, int64_t kv_dim,
                   const int32_t* pos, cudaStream_t st) {
  const int64_t n = n_tok * kv_dim;
  if (n <= 0) return;
  store_kv_kernel<<<unsigned(std::min<int64_t>((n + 255) / 256, 4096)), 256, 0, st>>>(k_cache, v_cache, k, v, n, pos,
                                                                                      kv_dim);
  KMQ_CUDA_LAUNCHED();
}

void attention_cuda(float* out, const float* q, const float* k_cache, const float* v_cache, int64_t n_tok,
                    int64_t n_heads, int64_t n_kv, int64_t hd, int64_t window, const int32_t* pos, int64_t chunk,
                    int n_splits, float* partial, cudaStream_t st) {
  if (n_tok <= 0) return;
  const dim3 grid{unsigned(n_heads), unsigned(n_tok), unsigned(n_splits)};
  const unsigned threads = kWarps * 32;
  if (hd <= 32) attention_kernel<1><<<grid, threads, 0, st>>>(out, q, k_cache, v_cache, n_heads, n_kv, hd, window, pos, chunk, n_splits, partial);
  else if (hd <= 64) attention_kernel<2><<<grid, threads, 0, st>>>(out, q, k_cache, v_cache, n_heads, n_kv, hd, window, pos, chunk, n_splits, partial);
  else if (hd <= 128) attention_kernel<4><<<grid, threads, 0, st>>>(out, q, k_cache, v_cache, n_heads, n_kv, hd, window, pos, chunk, n_splits, partial);
  else attention_kernel<8><<<grid, threads, 0, st>>>(out, q, k_cache, v_cache, n_heads, n_kv, hd, window, pos, chunk, n_splits, partial);
  KMQ_CUDA_LAUNCHED();
  if (n_splits > 1) {
    attention_merge_kernel<<<dim3(unsigned(n_heads), unsigned(n_tok)), 128, 0, st>>>(out, partial, n_heads, hd, n_splits);
    KMQ_CUDA_LAUNCHED();
  }
}

}  // namespace kmq::cuda
