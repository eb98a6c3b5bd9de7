// The integer decode kernel (gemv_q8_cuda): quantized weights with one codebook per tensor
// at 1, 2 and 4 bits in the fast layout (weight.cuh), for 1 or 2 tokens, with dp4a.
//
// Why: the f32 LUT kernel (gemv.cu) spends 7-9 instructions per weight (Nsight Compute on
// an H200: 125M warp instructions for the 525M weights of a 128256 x 4096 matrix at 4
// bits, 2.96 IPC, 37% of the read bandwidth); at 80% of an H200's 4.5 TB/s the budget is
// about 1.1 instructions per weight at 1.25 bits/weight, 1.9 at 2.25 and 3.6 at 4.25
// (132 SMs x 4 schedulers x 32 lanes at ~3 IPC of 4). Here:
//  - x is quantized per block of 64 columns to int8, in XP planes: x ~= dx * (xh + xl/254)
//    (XP = 2: about 16 bits, f32-like results; XP = 1: like llama.cpp's q8_1), by all
//    threads of a block at once (a thread per 16-byte word of the layout, 4 lanes per
//    block of 64 columns), stored in shared memory in the order each decoder consumes it;
//  - the codebook (2 and 4 bits) is int8 in CP planes: CP = 2, c ~= dcb * (ch + cl/254),
//    exact to about 16 bits (the default: one plane with the scale cmax/127 moved logits
//    of the bundled 4-bit model by up to 0.12); CP = 1 (KMQ_CUDA_GEMV=q8lite, with XP = 1)
//    c ~= dcb * ch with dcb = cmax/m, m in 64..127 searched per launch by a warp to
//    minimise the rounding, which halves the lookups and leaves 1 dp4a per 4 weights;
//    at 1 bit the dot is c0 * sum(x) + (c1 - c0) * (sum of x at set bits);
//  - decoders, per 32-bit word of indices:
//      4 bits: 8 indices; per plane two __byte_perm lookups in the 16-byte table per 4
//              indices and one merge (bit 3 of each index picks the half);
//      2 bits: 16 indices spread to nibbles (& 0x33333333, >> 2), one __byte_perm per 4;
//      1 bit:  (word >> m) & 0x01010101 gives 4 bits as bytes, one dp4a with x each;
//    about 2.6 / 1.5 / 1.0 instructions per weight (XP = 2) at 4 / 2 / 1 bits in the
//    decode itself (Nsight Compute measured 4.35 per weight in all at 4 bits for the first
//    version on the output layer: loads, loop and epilogue add the rest);
//  - integer dots per block of 64 columns (exact: |sum| < 2^21), then one float
//    multiply-add per block with the row's block scale and x's block scale.
// Work split (as the f32 kernel): a persistent grid, each warp owns items of R rows (2 at
// 4 bits; 4 at 1-2 bits, 2 where the 2-row items still fit the GPU at once: a small
// matrix takes one warp's instruction path, ~7 cycles per instruction), each
// lane a "lane step" of 16 bytes per row at 1-2 bits (128 / 64 columns) and 32 bytes at
// 4 bits (64 columns); the next item's words and scales are loaded before the current
// one is computed, across row boundaries too. x for lane step i is read as 16-byte words
// q at [q][i] (consecutive lanes, consecutive words: no bank conflicts).
// Jobs (Q8Job, gemv.cuh): one launch covers up to 3 weights that read the same x (items
// are numbered over the weights in turn; a warp takes its codebook table from shared
// memory when its item moves to another weight), or a gate/up pair whose items hold R/2
// rows of each (so the warp that finishes a row of both writes silu(g)*u). The input may
// be RMS-normalised during the staging of x (every block computes the norm: an 8B
// model's RMSNorm launches disappear) and the output added into a residual. Launched
// with PDL, the first item's weights and scales are loaded before griddepcontrol.wait,
// i.e. while the previous kernel still runs.
// Constraints: scale block 0 or 64 * 2^k; x 16-byte aligned. Measured on an H200
// (llama-3.1-8b shapes, ~4480 GB/s read, 100 chained matmuls with PDL): the output layer
// at 51% / 53% / 38% of the bandwidth at 4.25 / 2.25 / 1.25 bits; q/o [4096 x 4096] in
// 7.8 / 6.7 / 6.8 us, ffn_down in 20.7 / 18.9 / 18.4 us: per-matmul latency (one warp's
// path through staging and its rows) and, at 4 bits, the 16-lane integer pipe bound it.
// Tried and dropped: bulk L2 prefetch of each warp's next rows (output layer 120 -> 144
// us at 4 bits). docs/PERFORMANCE.md, GPU.
#include <algorithm>

#include "kernels/cuda/gemv.cuh"

namespace kmq::cuda {
namespace {

constexpr int kWarpsQ8 = 8;  // warps per block
constexpr int kMaxSmemQ8 = 200 * 1024;

template <int B>
struct Q8Geom {
  static constexpr int R = B == 4 ? 2 : 4;           // rows per warp item (1-2 bits: 2 for small matrices)
  static constexpr int W = B == 4 ? 8 : 4;           // 32-bit words per lane step per row
  static constexpr int G = B == 1 ? 2 : 1;           // 64-column blocks per lane step
  static constexpr int N4 = 4 * G;                   // 16-byte x words per lane step per plane
};

// Items of a job: SWI (gate/up pairs): ceil(rows / (R/2)); else the weights' row groups of
// R in turn. cum[i]: first item of weight i.
template <int R, bool SWI>
__host__ __device__ __forceinline__ int q8_items(const Q8Job& j, int* cum1, int* cum2) {
  if constexpr (SWI) {
    *cum1 = *cum2 = 0;
    return int((j.w[0].rows + R / 2 - 1) / (R / 2));
  } else {
    const int p0 = int((j.w[0].rows + R - 1) / R);
    const int p1 = j.n_w > 1 ? int((j.w[1].rows + R - 1) / R) : 0;
    const int p2 = j.n_w > 2 ? int((j.w[2].rows + R - 1) / R) : 0;
    *cum1 = p0;
    *cum2 = p0 + p1;
    return p0 + p1 + p2;
  }
}

// Where the decoder of B-bit words expects x for column o of a lane step (byte offset
// within the lane step's 64*G bytes): see the decoders below.
template <int B>
__device__ __forceinline__ int q8_pos(int o) {
  if constexpr (B == 4) {
    return o;  // word wd: columns 8wd..8wd+7, operands v0 = 8wd+0..3, v1 = 8wd+4..7
  } else if constexpr (B == 2) {
    const int wd = o >> 4, r = o & 15, n = r >> 1;  // operands e, e>>16, o, o>>16
    const int u = (r & 1) * 2 + (n >> 2);
    return (wd * 4 + u) * 4 + (n & 3);
  } else {
    const int wd = o >> 5, r = o & 31;  // operand m holds columns m, m+8, m+16, m+24
    return (wd * 8 + (r & 7)) * 4 + (r >> 3);
  }
}

// x into L1 ahead of its use (no register needed).
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

__device__ __forceinline__ int dp4a_s(uint32_t a, uint32_t b, int c) { return __dp4a(int(a), int(b), c); }
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t s) {  // one PRMT, no masking
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s));
  return d;
}

// The codebook of one weight as the decoders use it: two int8 planes th (high), tl (low)
// with c ~= dcb * (th + tl/254) at 2 and 4 bits; c0, c1 exactly at 1 bit.
template <int B>
__device__ void q8_table(const float* cbk, uint32_t* th, uint32_t* tl, float* f) {
  constexpr int K = 1 << B;
  float cmax = 0.0f;
#pragma unroll
  for (int e = 0; e < K; ++e) cmax = fmaxf(cmax, fabsf(__ldg(cbk + e)));
  const float icb = cmax > 0.0f ? 127.0f / cmax : 0.0f;
  f[0] = B == 1 ? 1.0f : cmax / 127.0f;
  f[1] = __ldg(cbk);
  f[2] = __ldg(cbk + 1);
#pragma unroll
  for (int e = 0; e < 4; ++e) th[e] = tl[e] = 0;
  if constexpr (B != 1) {
#pragma unroll
    for (int e = 0; e < K; ++e) {
      const float v = __ldg(cbk + e) * icb;
      const int qh = __float2int_rn(v);
      const int ql = min(127, max(-127, __float2int_rn((v - float(qh)) * 254.0f)));
      th[e >> 2] |= uint32_t(qh & 0xff) << (8 * (e & 3));
      tl[e >> 2] |= uint32_t(ql & 0xff) << (8 * (e & 3));
    }
  }
}

// One int8 plane (CP = 1, 2 and 4 bits), by the whole warp: c ~= s * th with s = cmax / m
// for the m in 64..127 (one per lane and half-warp round) that minimises the rounding
// error sum((c - s * round(c / s))^2); lane 0 writes the table. Choosing m instead of
// always 127 lets a codebook whose centroids sit near a grid land on it. (The CPU's int8
// prompt product rounds its codebook to 7 bits: kernels/cpu/lut.h, lut_q8_*.)
template <int B>
__device__ void q8_table1(const float* cbk, uint32_t* th, uint32_t* tl, float* f) {
  constexpr int K = 1 << B;
  const int lane = int(threadIdx.x & 31);
  float c[K];
  float cmax = 0.0f;
#pragma unroll
  for (int e = 0; e < K; ++e) c[e] = __ldg(cbk + e), cmax = fmaxf(cmax, fabsf(c[e]));
  float best = INFINITY;
  int best_m = 127;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = 127 - lane - 32 * h;
    const float s = cmax / float(m), is = float(m) / cmax;
    float err = 0.0f;
#pragma unroll
    for (int e = 0; e < K; ++e) {
      const float d = c[e] - s * rintf(c[e] * is);
      err = fmaf(d, d, err);
    }
    if (err < best) best = err, best_m = m;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {  // argmin over the warp; ties to the larger m
    const float eb = __shfl_xor_sync(0xffffffffu, best, o);
    const int mb = __shfl_xor_sync(0xffffffffu, best_m, o);
    if (eb < best || (eb == best && mb > best_m)) best = eb, best_m = mb;
  }
  if (lane != 0) return;
  const float is = cmax > 0.0f ? float(best_m) / cmax : 0.0f;
  f[0] = cmax / float(best_m);
  f[1] = c[0];
  f[2] = c[1];
#pragma unroll
  for (int e = 0; e < 4; ++e) th[e] = tl[e] = 0;
#pragma unroll
  for (int e = 0; e < K; ++e) th[e >> 2] |= uint32_t(__float2int_rn(c[e] * is) & 0xff) << (8 * (e & 3));
}

template <int B, int NT, int XP, int CP, bool SWI, int R>
__global__ void __launch_bounds__(kWarpsQ8 * 32, NT == 1 && B != 4 ? 3 : 2)
    gemv_q8_kernel(const Q8Job job, int sb_shift) {
  static_assert(CP == 2 || (CP == 1 && XP == 1 && B != 1), "one codebook plane: x in one plane, 2 and 4 bits");
  using Gm = Q8Geom<B>;
  constexpr int W = Gm::W, G = Gm::G, N4 = Gm::N4, RH = R / 2;
  constexpr int NTAB = SWI ? 2 : 1;  // codebook tables a warp holds in registers
  const CudaWeight& w0 = job.w[0];
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int row_words = int(w0.row_words), n_ls = row_words / W;  // lane steps per row
  const int nblk = n_ls * G;                                        // 64-column blocks (padded)
  const int cols = int(w0.cols);
  // shared memory: xq [NT][XP][N4][n_ls] uint4, then dx [NT][nblk], sx [NT][nblk] floats
  extern __shared__ uint4 q8sm[];
  __shared__ uint32_t s_tab[3][8];  // per weight: th[4], tl[4]
  __shared__ float s_cbf[3][4];     // per weight: dcb, c0, c1
  __shared__ float s_red[NT][kWarpsQ8];
  float* dxs = reinterpret_cast<float*>(q8sm + size_t(NT) * XP * N4 * n_ls);
  float* sxs = dxs + NT * nblk;
  int cum1 = 0, cum2 = 0;
  const int n_items = q8_items<R, SWI>(job, &cum1, &cum2);
  const int nsteps = (n_ls + 31) / 32;
  const int pstride = int(gridDim.x) * kWarpsQ8;
  const int n_sb = int(w0.n_scale_blocks());
  const bool has_sc = w0.scales != nullptr;

  // item p -> weight wi and its first row r0 (SWI: rows r0.. of both gate and up)
  auto item_of = [&](int p, int& wi, int& r0) {
    if constexpr (SWI) {
      wi = 0;
      r0 = p * RH;
    } else {
      wi = p < cum1 ? 0 : p < cum2 ? 1 : 2;
      r0 = (p - (wi == 0 ? 0 : wi == 1 ? cum1 : cum2)) * R;
    }
  };
  auto data_of = [&](int wi) {
    return static_cast<const uint32_t*>(wi == 0 ? job.w[0].data : wi == 1 ? job.w[1].data : job.w[2].data);
  };
  auto scales_of = [&](int wi) { return wi == 0 ? job.w[0].scales : wi == 1 ? job.w[1].scales : job.w[2].scales; };
  auto rows_of = [&](int wi) { return wi == 0 ? job.w[0].rows : wi == 1 ? job.w[1].rows : job.w[2].rows; };

  // an item's words, and its block scales (the G 16-bit scales of a lane step in one word)
  uint32_t cur[R][W], nxt[R][W];
  uint32_t csc[R], nsc[R];
  auto load = [&](uint32_t (&dst)[R][W], uint32_t (&dsc)[R], int p, int step) {
    const int i = step * 32 + lane;
    int wi, r0;
    item_of(p, wi, r0);
    const uint32_t* data = data_of(wi);
    const uint16_t* scl = scales_of(wi);
    const int64_t rows = rows_of(wi);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      int row = r0 + r;
      const uint32_t* d = data;
      const uint16_t* s = scl;
      if constexpr (SWI) {
        row = r0 + (r % RH);
        d = static_cast<const uint32_t*>(r < RH ? job.w[0].data : job.w[1].data);
        s = r < RH ? job.w[0].scales : job.w[1].scales;
      }
      const bool ok = row < rows && i < n_ls;
      const uint4* q = reinterpret_cast<const uint4*>(d + int64_t(row) * row_words + i * W);
#pragma unroll
      for (int h = 0; h < W / 4; ++h) {
        const uint4 v = ok ? __ldg(q + h) : make_uint4(0, 0, 0, 0);
        dst[r][4 * h] = v.x, dst[r][4 * h + 1] = v.y, dst[r][4 * h + 2] = v.z, dst[r][4 * h + 3] = v.w;
      }
      dsc[r] = 0;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int blk = i * G + g;
        if (has_sc && ok && blk * 64 < cols)
          dsc[r] |= uint32_t(__ldg(s + int64_t(row) * n_sb + (blk >> sb_shift))) << (16 * g);
      }
    }
  };
  int p = int(blockIdx.x) * kWarpsQ8 + warp;
  int k = 0;
  if (p < n_items) load(cur, csc, p, 0);  // constant data: goes out before the wait below

  // the codebook tables of the job's weights, into shared memory (constant data too)
  if constexpr (CP == 1) {
    if (warp == 0)
      for (int wi = 0; wi < job.n_w; ++wi) {
        const float* cbk = wi == 0 ? job.w[0].codebooks : wi == 1 ? job.w[1].codebooks : job.w[2].codebooks;
        q8_table1<B>(cbk, s_tab[wi], s_tab[wi] + 4, s_cbf[wi]);
      }
  } else if (warp == 0 && lane < job.n_w) {
    const float* cbk = lane == 0 ? job.w[0].codebooks : lane == 1 ? job.w[1].codebooks : job.w[2].codebooks;
    q8_table<B>(cbk, s_tab[lane], s_tab[lane] + 4, s_cbf[lane]);
  }

  // From here on activations are read and written: wait for the previous kernel (PDL).
  pdl_wait();
  if (job.trigger == 0) pdl_trigger();

  // Stage x. Unit f (of NT * N4 * n_ls) is one 16-byte word of one plane of the layout
  // the decoders read (xq[t][pl][q][i]: 16 columns, see q8_pos); a thread quantizes a
  // whole unit: 4 float4 loads, the 64-column block's absmax over 4 consecutive lanes.
  // (The former staging, one float4 per thread with byte stores, integer divisions and
  // 12 shuffles per float4, was ~600 instructions per thread: the longest part of a
  // small matmul's critical path.)
  const float* x = job.x;
  const int64_t ldx = job.ldx;
  const bool norm = job.norm_g != nullptr;
  const int n_unit_tok = N4 * n_ls, n_unit = NT * n_unit_tok;  // multiples of 32
  // columns of unit u (token t): 4 float4 at c + 4j (bits 2, 4) or c + 8j (bit 1)
  auto unit_of = [&](int f, int& t, int& q, int& i) {
    t = NT == 2 && f >= n_unit_tok ? 1 : 0;
    const int u = f - t * n_unit_tok;
    q = u & (N4 - 1);
    i = u / N4;
  };
  auto unit_col = [&](int q, int i, int j) {
    return B == 1 ? 128 * i + 32 * (q >> 1) + 4 * (q & 1) + 8 * j : 64 * i + 16 * q + 4 * j;
  };
  auto load_unit = [&](int t, int q, int i, float (&v)[4][4]) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = unit_col(q, i, j);
      const float4 a = c < cols ? __ldg(reinterpret_cast<const float4*>(x + t * ldx + c)) : make_float4(0, 0, 0, 0);
      v[j][0] = a.x, v[j][1] = a.y, v[j][2] = a.z, v[j][3] = a.w;
    }
  };
  // x of the units after each thread's first into L1 now (a 14336-wide x is 3.5 units
  // per thread; each would otherwise wait a full L2 round trip)
  for (int f = int(threadIdx.x) + int(blockDim.x); f < n_unit; f += int(blockDim.x)) {
    int t, q, i;
    unit_of(f, t, q, i);
    if (unit_col(q, i, 0) < cols) prefetch_l1(x + t * ldx + unit_col(q, i, 0));
    if (B == 1 && unit_col(q, i, 3) < cols) prefetch_l1(x + t * ldx + unit_col(q, i, 3));
  }
  // RMSNorm of the input (norm_g set): the sum of squares of each token's row, block-wide.
  float inv[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) inv[t] = 1.0f;
  if (norm) {
    float ss[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) ss[t] = 0.0f;
    for (int f = int(threadIdx.x); f < n_unit; f += int(blockDim.x)) {  // no shuffles inside
      int t, q, i;
      unit_of(f, t, q, i);
      float v[4][4];
      load_unit(t, q, i, v);
      float s2 = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s2 = fmaf(v[j][e], v[j][e], s2);
#pragma unroll
      for (int tt = 0; tt < NT; ++tt)
        if (tt == t) ss[tt] += s2;
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float v = warp_sum(ss[t]);
      if (lane == 0) s_red[t][warp] = v;
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float v = 0.0f;
#pragma unroll
      for (int i = 0; i < kWarpsQ8; ++i) v += s_red[t][i];
      inv[t] = rsqrtf(v / float(cols) + job.norm_eps);
    }
  }
  float* norm_out = blockIdx.x == 0 ? job.norm_out : nullptr;
  // n_unit is a multiple of 8, not of 32: every lane takes each round (the shuffles need
  // the whole warp); a 64-column block's 4 lanes are all in or all out
  for (int f0 = 0; f0 < n_unit; f0 += int(blockDim.x)) {
    const int f = f0 + int(threadIdx.x);
    const bool act = f < n_unit;
    int t, q, i;
    unit_of(act ? f : 0, t, q, i);
    float v[4][4];
    if (act) {
      load_unit(t, q, i, v);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) v[j][e] = 0.0f;
    }
    if (norm && act) {
      float iv = inv[0];
#pragma unroll
      for (int tt = 1; tt < NT; ++tt)
        if (tt == t) iv = inv[tt];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = unit_col(q, i, j);
        if (c < cols) {
          const float4 g = __ldg(reinterpret_cast<const float4*>(job.norm_g + c));
          v[j][0] = v[j][0] * iv * g.x, v[j][1] = v[j][1] * iv * g.y;
          v[j][2] = v[j][2] * iv * g.z, v[j][3] = v[j][3] * iv * g.w;
          if (norm_out) *reinterpret_cast<float4*>(norm_out + t * cols + c) = make_float4(v[j][0], v[j][1], v[j][2], v[j][3]);
        }
      }
    }
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) amax = fmaxf(amax, fabsf(v[j][e]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    const float iq = amax > 0.0f ? 127.0f / amax : 0.0f, d = amax / 127.0f;
    uint32_t wh[4] = {0, 0, 0, 0}, wl[4] = {0, 0, 0, 0};
    int sh = 0, sl = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        // byte of the unit that column (j, e) goes to (q8_pos within one 16-byte word)
        const int r = 4 * j + e, n = r >> 1;
        const int byte = B == 4 ? r : B == 2 ? (((r & 1) * 2 + (n >> 2)) * 4 + (n & 3)) : 4 * e + j;
        const float fv = v[j][e] * iq;
        const int qh = __float2int_rn(fv);
        wh[byte >> 2] |= uint32_t(qh & 0xff) << (8 * (byte & 3));
        sh += qh;
        if constexpr (XP == 2) {
          const int ql = min(127, max(-127, __float2int_rn((fv - float(qh)) * 254.0f)));
          wl[byte >> 2] |= uint32_t(ql & 0xff) << (8 * (byte & 3));
          sl += ql;
        }
      }
    if (act) {
      q8sm[(size_t(t * XP) * N4 + q) * n_ls + i] = make_uint4(wh[0], wh[1], wh[2], wh[3]);
      if constexpr (XP == 2) q8sm[(size_t(t * XP + 1) * N4 + q) * n_ls + i] = make_uint4(wl[0], wl[1], wl[2], wl[3]);
    }
    sh += __shfl_xor_sync(0xffffffffu, sh, 1);
    sh += __shfl_xor_sync(0xffffffffu, sh, 2);
    if constexpr (XP == 2) {
      sl += __shfl_xor_sync(0xffffffffu, sl, 1);
      sl += __shfl_xor_sync(0xffffffffu, sl, 2);
    }
    if (act && (q & 3) == 0) {
      const int blk = i * G + (B == 1 ? q >> 2 : 0);
      dxs[t * nblk + blk] = d;
      sxs[t * nblk + blk] = d * (float(sh) + float(sl) * (1.0f / 254.0f));
    }
  }
  __syncthreads();
  if (job.trigger == 1) pdl_trigger();
  if (p >= n_items) return;  // no block-wide barrier below this point

  // the warp's codebook table(s) in registers; tab_wi: the weight they belong to
  uint32_t th[NTAB][4], tl[NTAB][4];
  float tf[NTAB][3];
  int tab_wi = -1;
  auto take_table = [&](int ti, int wi) {
#pragma unroll
    for (int e = 0; e < 4; ++e) th[ti][e] = s_tab[wi][e], tl[ti][e] = s_tab[wi][4 + e];
#pragma unroll
    for (int e = 0; e < 3; ++e) tf[ti][e] = s_cbf[wi][e];
  };
  if constexpr (SWI) {
    take_table(0, 0);
    take_table(NTAB - 1, 1);
  }

  float acc[R][NT];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;

  for (;;) {
    int pn = p;
    int kn = k + 1;
    if (kn == nsteps) kn = 0, pn = p + pstride;
    const bool more = pn < n_items;
    if (more) load(nxt, nsc, pn, kn);
    if (!more && job.trigger == 2) pdl_trigger();  // the warp's last step
    if constexpr (!SWI) {
      if (k == 0) {
        int wi, r0;
        item_of(p, wi, r0);
        if (wi != tab_wi) take_table(0, wi), tab_wi = wi;
      }
    }
    const int i = k * 32 + lane;
    if (i < n_ls) {
      // Block g of the lane step is consumed in chunks of x: 1 word of indices per chunk at
      // 1 and 2 bits (8 / 4 dp4a operands), 2 words at 4 bits (4 operands); each chunk's x
      // is read from shared memory once and used for all rows of the item.
      constexpr int CU = B == 1 ? 2 : 1;                 // 16-byte x words per chunk and plane
      constexpr int NCH = B == 1 ? 2 : 4;                // chunks per block
#pragma unroll
      for (int g = 0; g < G; ++g) {
        int d0[R][NT], d1[R][NT];  // integer dots: main and the /254 terms
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int t = 0; t < NT; ++t) d0[r][t] = d1[r][t] = 0;
#pragma unroll
        for (int ch = 0; ch < NCH; ++ch) {
          uint4 xv[NT][XP][CU];
#pragma unroll
          for (int t = 0; t < NT; ++t)
#pragma unroll
            for (int pl = 0; pl < XP; ++pl)
#pragma unroll
              for (int q = 0; q < CU; ++q)
                xv[t][pl][q] = q8sm[(size_t(t * XP + pl) * N4 + 4 * g + ch * CU + q) * n_ls + i];
          auto xw = [&](int t, int pl, int idx) -> uint32_t {  // operand idx of the chunk
            const uint4& u = xv[t][pl][idx >> 2];
            return (idx & 3) == 0 ? u.x : (idx & 3) == 1 ? u.y : (idx & 3) == 2 ? u.z : u.w;
          };
#pragma unroll
          for (int r = 0; r < R; ++r) {
            const int ti = SWI && r >= RH ? NTAB - 1 : 0;
            if constexpr (B == 4) {
#pragma unroll
              for (int m = 0; m < 2; ++m) {
                // selector nibbles: the low 3 bits of each index pick a byte of an 8-entry
                // half-table; bit 3 picks the half in the merge (prmt's bit 3 would
                // sign-replicate, so it is cleared first)
                const uint32_t q = cur[r][2 * ch + m], q7 = q & 0x77777777u, qs = q7 >> 16;
                const uint32_t hs = 0x32103210u | ((q & 0x88888888u) >> 1), hs1 = hs >> 16;
                const uint32_t h0 = prmt(prmt(th[ti][0], th[ti][1], q7), prmt(th[ti][2], th[ti][3], q7), hs);
                const uint32_t h1 = prmt(prmt(th[ti][0], th[ti][1], qs), prmt(th[ti][2], th[ti][3], qs), hs1);
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                  d0[r][t] = dp4a_s(h0, xw(t, 0, 2 * m), d0[r][t]);
                  d0[r][t] = dp4a_s(h1, xw(t, 0, 2 * m + 1), d0[r][t]);
                }
                if constexpr (CP == 2) {
                  const uint32_t l0 = prmt(prmt(tl[ti][0], tl[ti][1], q7), prmt(tl[ti][2], tl[ti][3], q7), hs);
                  const uint32_t l1 = prmt(prmt(tl[ti][0], tl[ti][1], qs), prmt(tl[ti][2], tl[ti][3], qs), hs1);
#pragma unroll
                  for (int t = 0; t < NT; ++t) {
                    d1[r][t] = dp4a_s(l0, xw(t, 0, 2 * m), d1[r][t]);
                    d1[r][t] = dp4a_s(l1, xw(t, 0, 2 * m + 1), d1[r][t]);
                  }
                }
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                  if constexpr (XP == 2) {
                    d1[r][t] = dp4a_s(h0, xw(t, 1, 2 * m), d1[r][t]);
                    d1[r][t] = dp4a_s(h1, xw(t, 1, 2 * m + 1), d1[r][t]);
                  }
                }
              }
            } else if constexpr (B == 2) {
              const uint32_t q = cur[r][ch];
              const uint32_t e = q & 0x33333333u, od = (q >> 2) & 0x33333333u;
              const uint32_t sel[4] = {e, e >> 16, od, od >> 16};
#pragma unroll
              for (int u = 0; u < 4; ++u) {
                const uint32_t hv = prmt(th[ti][0], th[ti][0], sel[u]);
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                  d0[r][t] = dp4a_s(hv, xw(t, 0, u), d0[r][t]);
                  if constexpr (CP == 2) d1[r][t] = dp4a_s(prmt(tl[ti][0], tl[ti][0], sel[u]), xw(t, 0, u), d1[r][t]);
                  if constexpr (XP == 2) d1[r][t] = dp4a_s(hv, xw(t, 1, u), d1[r][t]);
                }
              }
            } else {
              const uint32_t q = cur[r][2 * g + ch];
#pragma unroll
              for (int m = 0; m < 8; ++m) {
                const uint32_t a = (q >> m) & 0x01010101u;
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                  d0[r][t] = dp4a_s(a, xw(t, 0, m), d0[r][t]);
                  if constexpr (XP == 2) d1[r][t] = dp4a_s(a, xw(t, 1, m), d1[r][t]);
                }
              }
            }
          }
        }
        const int blk = i * G + g;
        float dxb[NT], sxb[NT];
#pragma unroll
        for (int t = 0; t < NT; ++t) dxb[t] = dxs[t * nblk + blk], sxb[t] = sxs[t * nblk + blk];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int ti = SWI && r >= RH ? NTAB - 1 : 0;
          float sc = 1.0f;
          const uint16_t sbits = uint16_t(csc[r] >> (16 * g));
          if (has_sc) sc = w0.scale_bf16 ? bf16_bits_to_f32(sbits) : f16_bits_to_f32(sbits);
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            const float dd = fmaf(float(d1[r][t]), 1.0f / 254.0f, float(d0[r][t]));
            float v;
            if constexpr (B == 1) v = fmaf(tf[ti][2] - tf[ti][1], dxb[t] * dd, tf[ti][1] * sxb[t]);
            else v = dxb[t] * dd;
            acc[r][t] = fmaf(sc, v, acc[r][t]);
          }
        }
      }
    }
    if (k == nsteps - 1) {  // the item's last step: reduce across the warp and store
      int wi, r0;
      item_of(p, wi, r0);
      if constexpr (SWI) {
        const int64_t rows = job.w[0].rows, ldy = job.ldy[0];
        float* yg = job.y[0] == job.swiglu_out ? nullptr : job.y[0];
#pragma unroll
        for (int r = 0; r < RH; ++r)
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            const float g = warp_sum(acc[r][t]) * tf[0][0], u = warp_sum(acc[r + RH][t]) * tf[NTAB - 1][0];
            const int row = r0 + r;
            if (lane == 0 && row < rows) {
              if (yg) yg[t * ldy + row] = g;
              job.y[1][t * job.ldy[1] + row] = u;
              job.swiglu_out[t * ldy + row] = g / (1.0f + expf(-g)) * u;
            }
          }
      } else {
        float* y = wi == 0 ? job.y[0] : wi == 1 ? job.y[1] : job.y[2];
        const int64_t ldy = wi == 0 ? job.ldy[0] : wi == 1 ? job.ldy[1] : job.ldy[2];
        const int64_t rows = rows_of(wi);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            const float v = warp_sum(acc[r][t]) * tf[0][0];
            if (lane == 0 && r0 + r < rows) {
              y[t * ldy + r0 + r] = v;
              if (job.resid) job.resid[t * job.ldr + r0 + r] += v;
            }
          }
      }
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;
    }
    if (!more) break;
    p = pn, k = kn;
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int e = 0; e < W; ++e) cur[r][e] = nxt[r][e];
      csc[r] = nsc[r];
    }
  }
}

template <int B>
size_t q8_smem(const CudaWeight& w, int nt, int xp) {
  const size_t n_ls = size_t(w.row_words / Q8Geom<B>::W), nblk = n_ls * Q8Geom<B>::G;
  return size_t(nt) * (size_t(xp) * Q8Geom<B>::N4 * n_ls * 16 + nblk * 8);
}

template <int B, int NT, int XP, int CP, bool SWI, int R>
void launch_q8(const Q8Job& job, int sb_shift, cudaStream_t st, bool pdl) {
  auto* kern = gemv_q8_kernel<B, NT, XP, CP, SWI, R>;
  static const bool raised = [&] {  // once per instantiation, before any graph capture
    KMQ_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmemQ8));
    return true;
  }();
  (void)raised;
  const size_t smem = q8_smem<B>(job.w[0], NT, XP);
  int per_sm = 0;
  KMQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, kWarpsQ8 * 32, smem));
  int c1, c2;
  const int64_t need = (q8_items<R, SWI>(job, &c1, &c2) + kWarpsQ8 - 1) / kWarpsQ8;
  const unsigned grid = unsigned(std::max<int64_t>(1, std::min<int64_t>(need, int64_t(sm_count()) * std::max(per_sm, 1))));
  launch_kernel(kern, dim3(grid), dim3(kWarpsQ8 * 32), smem, st, pdl, job, sb_shift);
}

// The job for tokens [t, t + n) of `job`.
Q8Job job_slice(const Q8Job& job, int64_t t, int64_t n) {
  Q8Job j = job;
  j.n_tok = n;
  j.x = job.x + t * job.ldx;
  for (int i = 0; i < job.n_w; ++i) j.y[i] = job.y[i] + t * job.ldy[i];
  if (job.norm_out) j.norm_out = job.norm_out + t * job.w[0].cols;
  if (job.resid) j.resid = job.resid + t * job.ldr;
  if (job.swiglu_out) j.swiglu_out = job.swiglu_out + t * job.ldy[0];
  return j;
}

template <int B, int XP, int CP, bool SWI>
void run_q8(const Q8Job& job, int sb_shift, cudaStream_t st, bool pdl) {
  const bool two_fit = q8_smem<B>(job.w[0], 2, XP) <= 100 * 1024;  // keep 2 blocks per SM
  for (int64_t t = 0; t < job.n_tok;) {
    const bool two = job.n_tok - t >= 2 && two_fit;
    // 1-2 bits: 2 rows per item (instead of 4) when that many items still fit the GPU at
    // once -- a small matrix's time is one warp's instruction path, which halves
    int c1, c2;
    const bool r2 = B != 4 && q8_items<2, SWI>(job, &c1, &c2) <= sm_count() * (two ? 2 : 3) * kWarpsQ8;
    if (two) {
      if (r2) launch_q8<B, 2, XP, CP, SWI, 2>(job_slice(job, t, 2), sb_shift, st, pdl);
      else launch_q8<B, 2, XP, CP, SWI, Q8Geom<B>::R>(job_slice(job, t, 2), sb_shift, st, pdl);
    } else {
      if (r2) launch_q8<B, 1, XP, CP, SWI, 2>(job_slice(job, t, 1), sb_shift, st, pdl);
      else launch_q8<B, 1, XP, CP, SWI, Q8Geom<B>::R>(job_slice(job, t, 1), sb_shift, st, pdl);
    }
    t += two ? 2 : 1;
  }
}

template <int XP, int CP, bool SWI>
void run_q8_bits(const Q8Job& job, int sb_shift, cudaStream_t st, bool pdl) {
  switch (job.w[0].bits) {
    case 1: run_q8<1, XP, 2, SWI>(job, sb_shift, st, pdl); break;  // 1 bit: no int8 codebook
    case 2: run_q8<2, XP, CP, SWI>(job, sb_shift, st, pdl); break;
    default: run_q8<4, XP, CP, SWI>(job, sb_shift, st, pdl); break;
  }
}

int scale_shift(const CudaWeight& w) {  // log2(scale_block / 64), 0 without scales, -1: unsupported
  if (!w.scale_block) return 0;
  if (w.scale_block % 64) return -1;
  const int64_t r = w.scale_block / 64;
  if (r & (r - 1)) return -1;
  int s = 0;
  while ((int64_t(1) << s) < r) ++s;
  return s;
}

}  // namespace

bool gemv_q8_supported(const CudaWeight& w, const float* x, int64_t ldx) {
  if (w.dtype != kDtKmq || w.row_words <= 0 || w.scope != kScopeTensor || scale_shift(w) < 0) return false;
  if (!(w.bits == 1 || w.bits == 2 || w.bits == 4)) return false;
  if ((reinterpret_cast<uintptr_t>(x) & 15u) || ldx % 4) return false;
  const size_t smem = w.bits == 1 ? q8_smem<1>(w, 1, 2) : w.bits == 2 ? q8_smem<2>(w, 1, 2) : q8_smem<4>(w, 1, 2);
  return smem <= size_t(kMaxSmemQ8);
}

bool gemv_q8_same_geometry(const CudaWeight& a, const CudaWeight& b) {
  return a.bits == b.bits && a.cols == b.cols && a.row_words == b.row_words && a.scale_block == b.scale_block &&
         a.scale_bf16 == b.scale_bf16 && (a.scales == nullptr) == (b.scales == nullptr) && a.scope == b.scope;
}

void gemv_q8_job_cuda(const Q8Job& job, int mode, cudaStream_t st, bool pdl) {
  const int sh = scale_shift(job.w[0]);
  const bool swi = job.swiglu_out != nullptr;
  if (mode == kQ8X1C1) {
    if (swi) run_q8_bits<1, 1, true>(job, sh, st, pdl);
    else run_q8_bits<1, 1, false>(job, sh, st, pdl);
  } else if (mode == kQ8X1) {
    if (swi) run_q8_bits<1, 2, true>(job, sh, st, pdl);
    else run_q8_bits<1, 2, false>(job, sh, st, pdl);
  } else {
    if (swi) run_q8_bits<2, 2, true>(job, sh, st, pdl);
    else run_q8_bits<2, 2, false>(job, sh, st, pdl);
  }
}

void gemv_q8_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy, int mode,
                  cudaStream_t st, bool pdl) {
  Q8Job job;
  job.w[0] = w;
  job.y[0] = y;
  job.ldy[0] = ldy;
  job.x = x;
  job.ldx = ldx;
  job.n_tok = n_tok;
  gemv_q8_job_cuda(job, mode, st, pdl);
}

}  // namespace kmq::cuda
