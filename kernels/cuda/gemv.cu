// Decode matrix-vector kernels and the f16 dequantizer (see gemv.cuh for the variants).
#include <algorithm>
#include <cstdlib>
#include <string>

#include "kernels/cuda/gemv.cuh"

namespace kmq::cuda {
namespace {

constexpr int kWarps = 4;        // warps per block (float and generic kernels)
constexpr int kRows = 2;         // rows per warp
constexpr int kMaxTok = 2;       // tokens per pass
constexpr int kLutWarps = 8;     // warps per block of the quantized kernel
constexpr int kXPad = 36;        // floats per staged 32-column sub-chunk of x (bank-conflict-free float4 reads)
constexpr int kMaxSmem = 200 * 1024;

// SCOPE: kScopeTensor / kScopeRow / kScopeGroup. Each lane step covers W words of a row:
// 16 bytes (SUB = 4/B sub-chunks) for bits 1, 2, 4, one 12-byte sub-chunk for bits 3.
//
// Persistent and pipelined: the grid is sized to the GPU (a few blocks per SM), each
// block stages x once and its warps walk row pairs p = blockIdx*8 + warp, + gridDim*8,
// ... as one flat sequence of (row pair, step) items; the next item's words are loaded
// before the current one is computed, also across row boundaries, so a warp always has a
// load in flight (the first version, one short-lived block per 16 rows, staged x for
// every 16 rows -- more L2 traffic than the weights at 1 bit -- and waited on each
// block's first load: 8-22% of bandwidth). x is read from shared memory four columns at
// a time inside the dot (few live registers: 4 blocks of 8 warps fit an SM), and each
// sub-chunk's dot runs four independent accumulator chains. Every register array is
// indexed by compile-time constants only (no local memory).
template <int B, int NT, int SCOPE>
__global__ void __launch_bounds__(kLutWarps * 32, 4) gemv_kmq_kernel(CudaWeight w, const float* __restrict__ x,
                                                                     int64_t ldx, float* __restrict__ y, int64_t ldy,
                                                                     bool l2_ahead) {
  constexpr int K = 1 << B;
  constexpr int SUB = B == 3 ? 1 : 4 / B;
  constexpr int W = SUB * B;
  __shared__ float tab[kLutWarps][kRows][16];
  extern __shared__ float4 xsm4[];  // x staged: [NT][nsub][kXPad] floats
  float* xsm = reinterpret_cast<float*>(xsm4);
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int cols = int(w.cols), nsub = (cols + 31) / 32;
  const int64_t n_pairs = (w.rows + kRows - 1) / kRows;
  const int nsteps = (nsub + 32 * SUB - 1) / (32 * SUB);
  const int64_t pstride = int64_t(gridDim.x) * kLutWarps;
  const int row_words = int(w.row_words);
  const uint32_t* data = static_cast<const uint32_t*>(w.data);

  // The scales of the item travel with its words (a scale load issued at use would stall
  // every step on a full memory latency: the first versions did, 7-10 us per matmul).
  const int n_sb = int(w.n_scale_blocks()), scale_block = int(w.scale_block);
  uint32_t cur[kRows][W], nxt[kRows][W];
  uint16_t csc[kRows][SUB], nsc[kRows][SUB];
  auto load = [&](uint32_t (&dst)[kRows][W], uint16_t (&dsc)[kRows][SUB], int64_t pair, int step) {
    const int64_t r0 = pair * kRows;
    const int s0 = step * 32 * SUB + lane * SUB;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const uint32_t* p = data + (r0 + r) * row_words + s0 * B;
#pragma unroll
      for (int u = 0; u < SUB; ++u)
        dsc[r][u] = w.scales && r0 + r < w.rows && s0 + u < nsub
                        ? __ldg(w.scales + (r0 + r) * n_sb + ((s0 + u) * 32) / scale_block)
                        : uint16_t(0);
      if (r0 + r < w.rows && s0 < nsub) {
        if constexpr (W == 4) {
          const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
          dst[r][0] = v.x, dst[r][1] = v.y, dst[r][2] = v.z, dst[r][3] = v.w;
        } else {
#pragma unroll
          for (int i = 0; i < W; ++i) dst[r][i] = __ldg(p + i);
        }
      } else {
#pragma unroll
        for (int i = 0; i < W; ++i) dst[r][i] = 0u;
      }
    }
  };
  // The first item's load goes out before x is staged (it does not depend on x).
  int64_t p = int64_t(blockIdx.x) * kLutWarps + warp;
  int k = 0;
  if (p < n_pairs) load(cur, csc, p, 0);
  pdl_wait();  // x is the previous kernel's output (common.cuh: PDL)
  pdl_trigger();

  // Stage x once per block, padded so that lane l's float4 reads of its own sub-chunk
  // (address l*36 + 4q) fall in distinct banks within each quarter-warp.
  for (int i = int(threadIdx.x); i < NT * nsub * 8; i += int(blockDim.x)) {
    const int t = i / (nsub * 8), rem = i - t * nsub * 8, sc = rem >> 3, q = rem & 7;
    const int j = sc * 32 + q * 4;
    const float* xp = x + t * ldx + j;
    float4 v;
    if (j + 4 <= cols) {
      v = __ldg(reinterpret_cast<const float4*>(xp));
    } else {
      v.x = j < cols ? xp[0] : 0.0f;
      v.y = j + 1 < cols ? xp[1] : 0.0f;
      v.z = j + 2 < cols ? xp[2] : 0.0f;
      v.w = j + 3 < cols ? xp[3] : 0.0f;
    }
    *reinterpret_cast<float4*>(xsm + (t * nsub + sc) * kXPad + q * 4) = v;
  }
  if constexpr (SCOPE == kScopeTensor) {
    if (threadIdx.x < K) tab[0][0][threadIdx.x] = w.codebooks[threadIdx.x];
  }
  __syncthreads();
  if (p >= n_pairs) return;  // no block-wide barrier below this point
  const int n_groups = int(w.n_groups()), group_size = int(w.group_size);
  auto load_row_tables = [&](int64_t pair) {  // row scope: this warp's two rows' codebooks
    __syncwarp();
    for (int i = lane; i < kRows * K; i += 32) {
      const int64_t r = pair * kRows + i / K;
      tab[warp][i / K][i % K] = r < w.rows ? w.codebooks[r * K + i % K] : 0.0f;
    }
    __syncwarp();
  };
  if constexpr (SCOPE == kScopeRow) load_row_tables(p);

  float acc[kRows][NT];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;

  for (;;) {
    int64_t pn = p;
    int kn = k + 1;
    if (kn == nsteps) kn = 0, pn = p + pstride;
    const bool more = pn < n_pairs;
    if (more) load(nxt, nsc, pn, kn);
    if (l2_ahead) {  // the item after next, into L2 only (no registers held)
      int64_t p2 = pn;
      int k2 = kn + 1;
      if (k2 == nsteps) k2 = 0, p2 = pn + pstride;
      const int s2 = k2 * 32 * SUB + lane * SUB;
      if (p2 < n_pairs && s2 < nsub) {
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (p2 * kRows + r < w.rows)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(data + (p2 * kRows + r) * row_words + s2 * B));
      }
    }
    const int64_t r0 = p * kRows;
    const int s0 = k * 32 * SUB + lane * SUB;
#pragma unroll
    for (int u = 0; u < SUB; ++u) {
      const int s = s0 + u;
      if (s < nsub) {
        const int j0 = s * 32;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          if (r0 + r < w.rows) {
            const float* cb;
            if constexpr (SCOPE == kScopeTensor) cb = tab[0][0];
            else if constexpr (SCOPE == kScopeRow) cb = tab[warp][r];
            else cb = w.codebooks + ((r0 + r) * n_groups + j0 / group_size) * K;
            float part[NT][4];
#pragma unroll
            for (int t = 0; t < NT; ++t)
#pragma unroll
              for (int c = 0; c < 4; ++c) part[t][c] = 0.0f;
            float c0 = 0.0f, c1 = 0.0f;
            if constexpr (B == 1) c0 = cb[0], c1 = cb[1];
#pragma unroll
            for (int q = 0; q < 8; ++q) {
              float4 xv[NT];
#pragma unroll
              for (int t = 0; t < NT; ++t) xv[t] = *reinterpret_cast<const float4*>(xsm + (t * nsub + s) * kXPad + 4 * q);
#pragma unroll
              for (int c = 0; c < 4; ++c) {
                const int jj = 4 * q + c;
                float v;
                if constexpr (B == 1) {
                  v = (cur[r][u] >> jj) & 1u ? c1 : c0;
                } else {
                  unsigned idx;
                  if constexpr (B == 3)
                    idx = ((cur[r][jj >> 4] >> (2 * (jj & 15))) & 3u) | (((cur[r][2] >> jj) & 1u) << 2);
                  else
                    idx = (cur[r][u * B + ((jj * B) >> 5)] >> ((jj * B) & 31)) & unsigned(K - 1);
                  v = cb[idx];
                }
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                  const float xj = c == 0 ? xv[t].x : c == 1 ? xv[t].y : c == 2 ? xv[t].z : xv[t].w;
                  part[t][c] = fmaf(v, xj, part[t][c]);
                }
              }
            }
            float sc = 1.0f;
            if (w.scales) sc = w.scale_bf16 ? bf16_bits_to_f32(csc[r][u]) : f16_bits_to_f32(csc[r][u]);
#pragma unroll
            for (int t = 0; t < NT; ++t)
              acc[r][t] = fmaf(sc, (part[t][0] + part[t][1]) + (part[t][2] + part[t][3]), acc[r][t]);
          }
        }
      }
    }
    if (k == nsteps - 1) {  // the pair's last step: reduce across the warp and store
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          const float v = warp_sum(acc[r][t]);
          if (lane == 0 && r0 + r < w.rows) y[t * ldy + r0 + r] = v;
          acc[r][t] = 0.0f;
        }
    }
    if (!more) break;
    if constexpr (SCOPE == kScopeRow) {
      if (kn == 0) load_row_tables(pn);
    }
    p = pn, k = kn;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
#pragma unroll
      for (int i = 0; i < W; ++i) cur[r][i] = nxt[r][i];
#pragma unroll
      for (int u = 0; u < SUB; ++u) csc[r][u] = nsc[r][u];
    }
  }
}

// Fast-layout dequantization to f16: one thread per 32-weight sub-chunk (one division
// per 32 weights), 16-byte stores when the row allows.
template <int B>
__global__ void dequant_fast_f16_kernel(CudaWeight w, int64_t r0, int n_rows, uint16_t* __restrict__ out) {
  constexpr int K = 1 << B;
  const int cols = int(w.cols), nsub = (cols + 31) / 32;
  const int64_t n = int64_t(n_rows) * nsub;
  const int n_groups = int(w.n_groups()), n_sb = int(w.n_scale_blocks());
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int rr = int(i / nsub), s = int(i - int64_t(rr) * nsub);
    const int64_t r = r0 + rr;
    const uint32_t* p = static_cast<const uint32_t*>(w.data) + r * w.row_words + s * B;
    uint32_t wd[B];
#pragma unroll
    for (int k = 0; k < B; ++k) wd[k] = __ldg(p + k);
    const int j0 = s * 32;
    const int cbi = w.scope == kScopeTensor ? 0 : w.scope == kScopeRow ? int(r) : int(r) * n_groups + j0 / int(w.group_size);
    const float* cb = w.codebooks + int64_t(cbi) * K;
    float sc = 1.0f;
    if (w.scale_block) {
      const uint16_t h = w.scales[r * n_sb + j0 / int(w.scale_block)];
      sc = w.scale_bf16 ? bf16_bits_to_f32(h) : f16_bits_to_f32(h);
    }
    uint32_t h2[16];
#pragma unroll
    for (int jj = 0; jj < 32; jj += 2) {
      unsigned a, b;
      if constexpr (B == 3) {
        a = ((wd[jj >> 4] >> (2 * (jj & 15))) & 3u) | (((wd[2] >> jj) & 1u) << 2);
        b = ((wd[(jj + 1) >> 4] >> (2 * ((jj + 1) & 15))) & 3u) | (((wd[2] >> (jj + 1)) & 1u) << 2);
      } else {
        a = (wd[(jj * B) >> 5] >> ((jj * B) & 31)) & unsigned(K - 1);
        b = (wd[((jj + 1) * B) >> 5] >> (((jj + 1) * B) & 31)) & unsigned(K - 1);
      }
      const float fa = w.scale_block ? __ldg(cb + a) * sc : __ldg(cb + a);
      const float fb = w.scale_block ? __ldg(cb + b) * sc : __ldg(cb + b);
      h2[jj / 2] = uint32_t(f32_to_f16_bits(fa)) | uint32_t(f32_to_f16_bits(fb)) << 16;
    }
    uint16_t* o = out + int64_t(rr) * cols + j0;
    if (j0 + 32 <= cols && (cols & 7) == 0) {
#pragma unroll
      for (int q = 0; q < 4; ++q)
        reinterpret_cast<uint4*>(o)[q] = make_uint4(h2[4 * q], h2[4 * q + 1], h2[4 * q + 2], h2[4 * q + 3]);
    } else {
#pragma unroll
      for (int jj = 0; jj < 32; ++jj)
        if (j0 + jj < cols) o[jj] = uint16_t(h2[jj / 2] >> (16 * (jj & 1)));
    }
  }
}

// bf16 rows to f16, 8 values per thread (cols % 8 == 0).
__global__ void bf16_to_f16_kernel(const uint4* __restrict__ in, uint4* __restrict__ out, int64_t n8) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldg(in + i);
    const uint32_t u[4] = {v.x, v.y, v.z, v.w};
    uint32_t o[4];
#pragma unroll
    for (int k = 0; k < 4; ++k)
      o[k] = uint32_t(f32_to_f16_bits(__uint_as_float(u[k] << 16))) |
             uint32_t(f32_to_f16_bits(__uint_as_float(u[k] & 0xffff0000u))) << 16;
    out[i] = make_uint4(o[0], o[1], o[2], o[3]);
  }
}

template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float* f);
struct Bf16Tag {};
struct F16Tag {};
template <>
__device__ __forceinline__ void unpack8<Bf16Tag>(const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
template <>
__device__ __forceinline__ void unpack8<F16Tag>(const uint4& v, float* f) {
  const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = f16_bits_to_f32(uint16_t(u[i] & 0xffffu));
    f[2 * i + 1] = f16_bits_to_f32(uint16_t(u[i] >> 16));
  }
}

// f16 / bf16 rows, 8 weights (16 bytes) per lane step.
template <typename Tag, int NT>
__global__ void __launch_bounds__(kWarps * 32) gemv_half_kernel(CudaWeight w, const float* __restrict__ x, int64_t ldx,
                                                                float* __restrict__ y, int64_t ldy) {
  pdl_wait();
  pdl_trigger();
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int64_t r0 = (int64_t(blockIdx.x) * kWarps + warp) * kRows;
  if (r0 >= w.rows) return;
  const int nrows = int(w.rows - r0 < kRows ? w.rows - r0 : kRows);
  const int64_t n8 = w.cols / 8;
  const uint4* base = reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w.data) + r0 * w.cols);
  float acc[kRows][NT] = {};
  for (int64_t c = lane; c < n8; c += 32) {
    uint4 wv[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) wv[r] = r < nrows ? __ldg(base + r * n8 + c) : make_uint4(0, 0, 0, 0);
    float xs[NT][8];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float4 a = __ldg(reinterpret_cast<const float4*>(x + t * ldx) + 2 * c);
      const float4 b = __ldg(reinterpret_cast<const float4*>(x + t * ldx) + 2 * c + 1);
      xs[t][0] = a.x, xs[t][1] = a.y, xs[t][2] = a.z, xs[t][3] = a.w;
      xs[t][4] = b.x, xs[t][5] = b.y, xs[t][6] = b.z, xs[t][7] = b.w;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float f[8];
      unpack8<Tag>(wv[r], f);
#pragma unroll
      for (int t = 0; t < NT; ++t)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[r][t] = fmaf(f[i], xs[t][i], acc[r][t]);
    }
  }
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float v = warp_sum(acc[r][t]);
      if (lane == 0 && r < nrows) y[t * ldy + r0 + r] = v;
    }
}

// One warp per row, one element at a time: any dtype and layout.
__global__ void gemv_any_kernel(CudaWeight w, const float* __restrict__ x, int64_t ldx, int64_t n_tok,
                                float* __restrict__ y, int64_t ldy) {
  pdl_wait();
  pdl_trigger();
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int64_t r = int64_t(blockIdx.x) * kWarps + warp;
  if (r >= w.rows) return;
  for (int64_t t = 0; t < n_tok; ++t) {
    float acc = 0.0f;
    for (int64_t j = lane; j < w.cols; j += 32) acc = fmaf(weight_at(w, r, j), x[t * ldx + j], acc);
    acc = warp_sum(acc);
    if (lane == 0) y[t * ldy + r] = acc;
  }
}

__global__ void dequant_f16_kernel(CudaWeight w, int64_t r0, int64_t n_rows, uint16_t* __restrict__ out) {
  const int64_t n = n_rows * w.cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / w.cols, j = i - r * w.cols;
    out[i] = f32_to_f16_bits(weight_at(w, r0 + r, j));
  }
}

// KMQ_CUDA_L2_PREFETCH=1 turns on the decode kernels' L2 prefetch of the item after next.
// Off by default: measured 0-6% slower on the llama-3.1-8b shapes (docs/PERFORMANCE.md).
bool l2_prefetch() {
  static const bool on = [] {
    const char* e = std::getenv("KMQ_CUDA_L2_PREFETCH");
    return e && e[0] == '1';
  }();
  return on;
}

template <int B, int NT, int SCOPE>
void launch_kmq_scope(const CudaWeight& w, const float* x, int64_t ldx, float* y, int64_t ldy, cudaStream_t st,
                      bool pdl) {
  static const bool raised = [] {  // once per instantiation, before any graph capture
    KMQ_CUDA_CHECK(cudaFuncSetAttribute(gemv_kmq_kernel<B, NT, SCOPE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        kMaxSmem));
    return true;
  }();
  (void)raised;
  const size_t smem = size_t(NT) * size_t((w.cols + 31) / 32) * kXPad * 4;
  // Persistent grid: as many blocks as fit on the GPU at once (never more than there are
  // row pairs to give them); the occupancy query is host-side and cheap, and legal while
  // a stream is being captured.
  const int n_sm = sm_count();
  int per_sm = 0;
  KMQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemv_kmq_kernel<B, NT, SCOPE>,
                                                               kLutWarps * 32, smem));
  const int64_t need = (w.rows + kLutWarps * kRows - 1) / (kLutWarps * kRows);
  const unsigned grid = unsigned(std::max<int64_t>(1, std::min<int64_t>(need, int64_t(n_sm) * std::max(per_sm, 1))));
  launch_kernel(gemv_kmq_kernel<B, NT, SCOPE>, dim3(grid), dim3(kLutWarps * 32), smem, st, pdl, w, x, ldx, y, ldy,
                l2_prefetch());
}

template <int B, int NT>
void launch_kmq(const CudaWeight& w, const float* x, int64_t ldx, float* y, int64_t ldy, cudaStream_t st, bool pdl) {
  switch (w.scope) {
    case kScopeTensor: launch_kmq_scope<B, NT, kScopeTensor>(w, x, ldx, y, ldy, st, pdl); break;
    case kScopeRow: launch_kmq_scope<B, NT, kScopeRow>(w, x, ldx, y, ldy, st, pdl); break;
    default: launch_kmq_scope<B, NT, kScopeGroup>(w, x, ldx, y, ldy, st, pdl); break;
  }
}

template <int NT>
void launch_kmq_bits(const CudaWeight& w, const float* x, int64_t ldx, float* y, int64_t ldy, cudaStream_t st,
                     bool pdl) {
  switch (w.bits) {
    case 1: launch_kmq<1, NT>(w, x, ldx, y, ldy, st, pdl); break;
    case 2: launch_kmq<2, NT>(w, x, ldx, y, ldy, st, pdl); break;
    case 3: launch_kmq<3, NT>(w, x, ldx, y, ldy, st, pdl); break;
    default: launch_kmq<4, NT>(w, x, ldx, y, ldy, st, pdl); break;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool gemv_kmq_supported(const CudaWeight& w, const float* x, int64_t ldx) {
  return w.dtype == kDtKmq && w.row_words > 0 && w.bits >= 1 && w.bits <= 4 && aligned16(x) && ldx % 4 == 0 &&
         (w.cols + 31) / 32 * kXPad * 4 <= kMaxSmem;  // one token's x fits in shared memory
}

bool gemv_half_supported(const CudaWeight& w, const float* x, int64_t ldx) {
  return (w.dtype == kDtF16 || w.dtype == kDtBF16) && w.cols % 8 == 0 && aligned16(w.data) && aligned16(x) &&
         ldx % 4 == 0;
}

// Which decode kernel quantized weights use (KMQ_CUDA_GEMV, gemv.cuh: q8, q8fast, q8lite,
// f32): the integer kernel of gemv_q8.cu wherever it applies, else the f32 LUT kernel above.
// Measured on an H200 (docs/PERFORMANCE.md, GPU): 1.4-2.0x the f32 kernel on the output
// layer, the same greedy tokens and perplexity end to end.
int q8_mode() {
  const char* e = std::getenv("KMQ_CUDA_GEMV");
  const std::string v = e ? e : "";
  return v == "f32" ? kQ8Off : v == "q8fast" ? kQ8X1 : v == "q8" ? kQ8X2 : kQ8X1C1;
}

void gemv_kmq_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                   cudaStream_t st, bool pdl) {
  if (const int mode = q8_mode(); mode != kQ8Off && gemv_q8_supported(w, x, ldx)) {
    gemv_q8_cuda(w, x, ldx, n_tok, y, ldy, mode, st, pdl);
    return;
  }
  const bool two_fit = 2 * ((w.cols + 31) / 32) * kXPad * 4 <= 100 * 1024;  // keep 2 blocks per SM
  for (int64_t t = 0; t < n_tok;) {
    if (n_tok - t >= 2 && two_fit) {
      launch_kmq_bits<2>(w, x + t * ldx, ldx, y + t * ldy, ldy, st, pdl);
      t += 2;
    } else {
      launch_kmq_bits<1>(w, x + t * ldx, ldx, y + t * ldy, ldy, st, pdl);
      t += 1;
    }
  }
}

void gemv_half_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                    cudaStream_t st, bool pdl) {
  const unsigned grid = unsigned((w.rows + kWarps * kRows - 1) / (kWarps * kRows));
  for (int64_t t = 0; t < n_tok; t += kMaxTok) {
    const float* xt = x + t * ldx;
    float* yt = y + t * ldy;
    const bool two = n_tok - t >= 2;
    auto* k = w.dtype == kDtBF16 ? (two ? gemv_half_kernel<Bf16Tag, 2> : gemv_half_kernel<Bf16Tag, 1>)
                                 : (two ? gemv_half_kernel<F16Tag, 2> : gemv_half_kernel<F16Tag, 1>);
    launch_kernel(k, dim3(grid), dim3(kWarps * 32), 0, st, pdl, w, xt, ldx, yt, ldy);
  }
}

void gemv_any_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy,
                   cudaStream_t st, bool pdl) {
  const unsigned grid = unsigned((w.rows + kWarps - 1) / kWarps);
  launch_kernel(gemv_any_kernel, dim3(grid), dim3(kWarps * 32), 0, st, pdl, w, x, ldx, n_tok, y, ldy);
}

void dequant_f16_cuda(const CudaWeight& w, int64_t r0, int64_t n_rows, uint16_t* out, cudaStream_t st) {
  const int64_t n = n_rows * w.cols;
  if (w.dtype == kDtKmq && w.row_words > 0) {
    const int64_t nsub = n_rows * ((w.cols + 31) / 32);
    const unsigned grid = unsigned(std::min<int64_t>((nsub + 255) / 256, 132 * 32));
    switch (w.bits) {
      case 1: dequant_fast_f16_kernel<1><<<grid, 256, 0, st>>>(w, r0, int(n_rows), out); break;
      case 2: dequant_fast_f16_kernel<2><<<grid, 256, 0, st>>>(w, r0, int(n_rows), out); break;
      case 3: dequant_fast_f16_kernel<3><<<grid, 256, 0, st>>>(w, r0, int(n_rows), out); break;
      default: dequant_fast_f16_kernel<4><<<grid, 256, 0, st>>>(w, r0, int(n_rows), out); break;
    }
  } else if (w.dtype == kDtBF16 && w.cols % 8 == 0) {
    const int64_t n8 = n / 8;
    const unsigned grid = unsigned(std::min<int64_t>((n8 + 255) / 256, 132 * 32));
    bf16_to_f16_kernel<<<grid, 256, 0, st>>>(
        reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w.data) + r0 * w.cols), reinterpret_cast<uint4*>(out), n8);
  } else {
    const unsigned grid = unsigned(std::min<int64_t>((n + 255) / 256, 132 * 16));
    dequant_f16_kernel<<<grid, 256, 0, st>>>(w, r0, n_rows, out);
  }
  KMQ_CUDA_LAUNCHED();
}

}  // namespace kmq::cuda
