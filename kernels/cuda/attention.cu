// Attention kernels (see attention.cuh).
#include <algorithm>
#include <cmath>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/common.cuh"

namespace kmq::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMinChunk = 8;  // positions per split at least (decode)

__global__ void store_kv_kernel(float* kc, float* vc, const float* k, const float* v, int64_t n, const int32_t* pos,
                                int64_t kv_dim) {
  pdl_wait();
  pdl_trigger();
  const int64_t off = int64_t(*pos) * kv_dim;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    kc[off + i] = k[i];
    vc[off + i] = v[i];
  }
}

// RoPE of q ([n_tok][n_heads*hd]) and k ([n_tok][n_kv*hd]) in place, then k and v into
// the caches at rows *pos + t: block (slot, t), slot < n_heads a q head, else kv head
// slot - n_heads. The same arithmetic as rope_kernel (ops.cu) and store_kv_kernel.
__global__ void rope_store_kernel(float* q, float* k, const float* v, float* kc, float* vc, int64_t n_heads,
                                  int64_t n_kv, int64_t hd, const float* inv_freq, const int32_t* pos) {
  pdl_wait();
  pdl_trigger();
  const int64_t t = blockIdx.y, slot = blockIdx.x, half = hd / 2, kv_dim = n_kv * hd;
  const float p = float(*pos + t);
  const bool is_q = slot < n_heads;
  float* x = is_q ? q + (t * n_heads + slot) * hd : k + t * kv_dim + (slot - n_heads) * hd;
  float* kd = is_q ? nullptr : kc + (int64_t(*pos) + t) * kv_dim + (slot - n_heads) * hd;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float ang = p * inv_freq[i];
    float s, c;
    sincosf(ang, &s, &c);
    const float a = x[i], b = x[half + i];
    const float ra = a * c - b * s, rb = b * c + a * s;
    x[i] = ra;
    x[half + i] = rb;
    if (kd) kd[i] = ra, kd[half + i] = rb;
  }
  if (!is_q) {
    const int64_t off = t * kv_dim + (slot - n_heads) * hd;
    float* vd = vc + (int64_t(*pos) + t) * kv_dim + (slot - n_heads) * hd;
    for (int64_t i = threadIdx.x; i < hd; i += blockDim.x) vd[i] = v[off + i];
  }
}

__device__ __forceinline__ float weight_of(float m, float big_m) { return m == -INFINITY ? 0.0f : expf(m - big_m); }

// Merges the n_splits partials (max, sum, o[hd]) of one (token, head) row into out (one
// warp). The partials were written by other blocks of this grid: read through L2. Each
// lane takes every 32nd split for the statistics, and the o loads of several splits are
// in flight at once (a split-serial loop was three chains of dependent L2 round trips:
// ~15 us per layer at 9 splits).
template <int NE>
__device__ void merge_splits(float* out, const float* pp, int64_t hd, int n_splits, int lane) {
  const int64_t ld = hd + 2;
  float mx = -INFINITY;
  for (int s = lane; s < n_splits; s += 32) mx = fmaxf(mx, __ldcg(pp + s * ld));
  const float big_m = warp_max(mx);
  float sum = 0.0f;
  for (int s = lane; s < n_splits; s += 32) sum += __ldcg(pp + s * ld + 1) * weight_of(__ldcg(pp + s * ld), big_m);
  const float big_l = warp_sum(sum);
  const float inv = big_l > 0.0f ? 1.0f / big_l : 0.0f;
  float acc[NE];
#pragma unroll
  for (int i = 0; i < NE; ++i) acc[i] = 0.0f;
  for (int s0 = 0; s0 < n_splits; s0 += 32) {
    const float wl = s0 + lane < n_splits ? weight_of(__ldcg(pp + (s0 + lane) * ld), big_m) : 0.0f;
    const int ns = min(32, n_splits - s0);
#pragma unroll 4
    for (int j = 0; j < ns; ++j) {
      const float ws = __shfl_sync(0xffffffffu, wl, j);
#pragma unroll
      for (int i = 0; i < NE; ++i) {
        const int64_t e = lane + 32 * i;
        if (e < hd) acc[i] = fmaf(__ldcg(pp + (s0 + j) * ld + 2 + e), ws, acc[i]);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < NE; ++i) {
    const int64_t e = lane + 32 * i;
    if (e < hd) out[e] = acc[i] * inv;
  }
}

template <int NE>
__global__ void __launch_bounds__(kWarps * 32) attention_kernel(float* out, const float* __restrict__ q,
                                                                const float* __restrict__ kc,
                                                                const float* __restrict__ vc, int64_t n_heads,
                                                                int64_t n_kv, int64_t hd, int64_t window,
                                                                const int32_t* pos, int n_splits, float* partial,
                                                                unsigned* counters) {
  pdl_wait();
  pdl_trigger();
  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float so[kWarps][NE * 32];
  const int64_t h = blockIdx.x, t = blockIdx.y, split = blockIdx.z;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int64_t p = int64_t(*pos) + t;
  const int64_t start = window > 0 ? max(int64_t(0), p - window + 1) : 0;
  // The splits share the token's actual context [start, p] (not the cache's capacity), at
  // least kMinChunk positions each: short contexts leave the last splits empty.
  const int64_t chunk = max(int64_t(kMinChunk), (p + 1 - start + n_splits - 1) / n_splits);
  const int64_t lo = start + split * chunk, hi = min(p + 1, lo + chunk);
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
  // Two positions per iteration, their k and v rows loaded before any is used (one
  // round trip per pair instead of two per position).
  int64_t s = lo + warp;
  for (; s + kWarps < hi; s += 2 * kWarps) {
    const float* kr0 = kc + s * kv_dim + kvh * hd;
    const float* kr1 = kr0 + kWarps * kv_dim;
    const float* vr0 = vc + s * kv_dim + kvh * hd;
    const float* vr1 = vr0 + kWarps * kv_dim;
    float k0[NE], k1[NE], v0[NE], v1[NE];
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int64_t e = lane + 32 * i;
      const bool in = e < hd;
      k0[i] = in ? kr0[e] : 0.0f, k1[i] = in ? kr1[e] : 0.0f;
      v0[i] = in ? vr0[e] : 0.0f, v1[i] = in ? vr1[e] : 0.0f;
    }
    float d0 = 0.0f, d1 = 0.0f;
#pragma unroll
    for (int i = 0; i < NE; ++i) d0 = fmaf(qv[i], k0[i], d0), d1 = fmaf(qv[i], k1[i], d1);
    d0 = warp_sum(d0) * scale;
    d1 = warp_sum(d1) * scale;
    const float m_new = fmaxf(m, fmaxf(d0, d1));
    const float corr = weight_of(m, m_new), p0 = expf(d0 - m_new), p1 = expf(d1 - m_new);
    l = l * corr + p0 + p1;
#pragma unroll
    for (int i = 0; i < NE; ++i) o[i] = o[i] * corr + (p0 * v0[i] + p1 * v1[i]);
    m = m_new;
  }
  if (s < hi) {
    const float* kr = kc + s * kv_dim + kvh * hd;
    const float* vr = vc + s * kv_dim + kvh * hd;
    float kk[NE], vv[NE];
#pragma unroll
    for (int i = 0; i < NE; ++i) {
      const int64_t e = lane + 32 * i;
      kk[i] = e < hd ? kr[e] : 0.0f, vv[i] = e < hd ? vr[e] : 0.0f;
    }
    float d = 0.0f;
#pragma unroll
    for (int i = 0; i < NE; ++i) d = fmaf(qv[i], kk[i], d);
    d = warp_sum(d) * scale;
    const float m_new = fmaxf(m, d);
    const float corr = weight_of(m, m_new), pe = expf(d - m_new);
    l = l * corr + pe;
#pragma unroll
    for (int i = 0; i < NE; ++i) o[i] = o[i] * corr + pe * vv[i];
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
    // The last split of the row to finish merges (counters[row] counts the finished ones
    // and wraps back to 0 by itself: atomicInc(c, n - 1) stores 0 after n - 1).
    __threadfence();
    __syncwarp();
    unsigned done = 0;
    if (lane == 0) done = atomicInc(counters + row, unsigned(n_splits - 1));
    done = __shfl_sync(0xffffffffu, done, 0);
    if (done != unsigned(n_splits - 1)) return;
    __threadfence();
    merge_splits<NE>(out + row * hd, partial + row * n_splits * (hd + 2), hd, n_splits, lane);
  }
}

}  // namespace

void store_kv_cuda(float* k_cache, float* v_cache, const float* k, const float* v, int64_t n_tok, int64_t kv_dim,
                   const int32_t* pos, cudaStream_t st, bool pdl) {
  const int64_t n = n_tok * kv_dim;
  if (n <= 0) return;
  launch_kernel(store_kv_kernel, dim3(unsigned(std::min<int64_t>((n + 255) / 256, 4096))), dim3(256), 0, st, pdl, k_cache,
                v_cache, k, v, n, pos, kv_dim);
}

void rope_store_cuda(float* q, float* k, const float* v, float* k_cache, float* v_cache, int64_t n_tok, int64_t n_heads,
                     int64_t n_kv, int64_t hd, const float* inv_freq, const int32_t* pos, cudaStream_t st, bool pdl) {
  if (n_tok <= 0) return;
  const dim3 grid{unsigned(n_heads + n_kv), unsigned(n_tok)};
  launch_kernel(rope_store_kernel, grid, dim3(unsigned(std::clamp<int64_t>(hd / 2, 32, 256))), 0, st, pdl, q, k, v,
                k_cache, v_cache, n_heads, n_kv, hd, inv_freq, pos);
}

void attention_cuda(float* out, const float* q, const float* k_cache, const float* v_cache, int64_t n_tok,
                    int64_t n_heads, int64_t n_kv, int64_t hd, int64_t window, const int32_t* pos, int n_splits,
                    float* partial, unsigned* counters, cudaStream_t st, bool pdl) {
  if (n_tok <= 0) return;
  const dim3 grid{unsigned(n_heads), unsigned(n_tok), unsigned(n_splits)};
  const dim3 threads{kWarps * 32};
  auto* k = hd <= 32 ? attention_kernel<1> : hd <= 64 ? attention_kernel<2> : hd <= 128 ? attention_kernel<4>
                                                                                         : attention_kernel<8>;
  launch_kernel(k, grid, threads, 0, st, pdl, out, q, k_cache, v_cache, n_heads, n_kv, hd, window, pos, n_splits,
                partial, counters);
}

}  // namespace kmq::cuda
