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
//    threads of a block at once (16 threads per block of 64 columns, shuffles for the
//    absmax), stored in shared memory in the order each decoder consumes it;
//  - the codebook (2 and 4 bits) is int8 in two planes, c ~= dcb * (ch + cl/254), so it
//    is exact to about 16 bits (one plane moved logits of the bundled 4-bit model by up
//    to 0.12); at 1 bit the dot is c0 * sum(x) + (c1 - c0) * (sum of x at set bits);
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
// Work split (as the f32 kernel): a persistent grid, each warp owns groups of R rows (4
// at 1-2 bits, 2 at 4 bits; "pairs" below), each
// lane a "lane step" of 16 bytes per row at 1-2 bits (128 / 64 columns) and 32 bytes at
// 4 bits (64 columns); the next item's words and scales are loaded before the current
// one is computed, across row boundaries too. x for lane step i is read as 16-byte words
// q at [q][i] (consecutive lanes, consecutive words: no bank conflicts).
// Constraints: scale block 0 or 64 * 2^k; x 16-byte aligned. Measured on an H200
// (llama-3.1-8b shapes, 4334 GB/s read): the output layer at 54% / 54% / 40% of the
// bandwidth at 4.25 / 2.25 / 1.25 bits (the kernels before it: 37% / 34% / 19%); matrices of
// <= 14336 rows at 2-32%, bound by per-matmul latency. docs/PERFORMANCE.md, GPU.
#include <algorithm>

#include "kernels/cuda/gemv.cuh"

namespace kmq::cuda {
namespace {

constexpr int kWarpsQ8 = 8;  // warps per block
constexpr int kMaxSmemQ8 = 200 * 1024;

template <int B>
struct Q8Geom {
  static constexpr int R = B == 4 ? 2 : 4;           // rows per warp item
  static constexpr int W = B == 4 ? 8 : 4;           // 32-bit words per lane step per row
  static constexpr int G = B == 1 ? 2 : 1;           // 64-column blocks per lane step
  static constexpr int N4 = 4 * G;                   // 16-byte x words per lane step per plane
};

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

__device__ __forceinline__ int dp4a_s(uint32_t a, uint32_t b, int c) { return __dp4a(int(a), int(b), c); }
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t s) {  // one PRMT, no masking
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s));
  return d;
}

template <int B, int NT, int XP>
__global__ void __launch_bounds__(kWarpsQ8 * 32, NT == 1 && B != 4 ? 3 : 2)
    gemv_q8_kernel(CudaWeight w, const float* __restrict__ x, int64_t ldx, float* __restrict__ y, int64_t ldy,
                   int sb_shift) {
  using Gm = Q8Geom<B>;
  constexpr int W = Gm::W, G = Gm::G, N4 = Gm::N4, kRowsQ8 = Gm::R;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int row_words = int(w.row_words), n_ls = row_words / W;  // lane steps per row
  const int nblk = n_ls * G;                                       // 64-column blocks (padded)
  const int cols = int(w.cols);
  // shared memory: xq [NT][XP][N4][n_ls] uint4, then dx [NT][nblk], sx [NT][nblk] floats
  extern __shared__ uint4 q8sm[];
  float* dxs = reinterpret_cast<float*>(q8sm + size_t(NT) * XP * N4 * n_ls);
  float* sxs = dxs + NT * nblk;
  const int64_t n_pairs = (w.rows + kRowsQ8 - 1) / kRowsQ8;
  const int nsteps = (n_ls + 31) / 32;
  const int64_t pstride = int64_t(gridDim.x) * kWarpsQ8;
  const uint32_t* data = static_cast<const uint32_t*>(w.data);
  const int n_sb = int(w.n_scale_blocks());
  const bool has_sc = w.scales != nullptr;

  uint32_t cur[kRowsQ8][W], nxt[kRowsQ8][W];
  uint16_t csc[kRowsQ8][G], nsc[kRowsQ8][G];
  auto load = [&](uint32_t (&dst)[kRowsQ8][W], uint16_t (&dsc)[kRowsQ8][G], int64_t pair, int step) {
    const int i = step * 32 + lane;
#pragma unroll
    for (int r = 0; r < kRowsQ8; ++r) {
      const int64_t row = pair * kRowsQ8 + r;
      const bool ok = row < w.rows && i < n_ls;
      const uint4* p = reinterpret_cast<const uint4*>(data + row * row_words + i * W);
#pragma unroll
      for (int h = 0; h < W / 4; ++h) {
        const uint4 v = ok ? __ldg(p + h) : make_uint4(0, 0, 0, 0);
        dst[r][4 * h] = v.x, dst[r][4 * h + 1] = v.y, dst[r][4 * h + 2] = v.z, dst[r][4 * h + 3] = v.w;
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const int blk = i * G + g;
        dsc[r][g] = has_sc && ok && blk * 64 < cols ? __ldg(w.scales + row * n_sb + (blk >> sb_shift)) : uint16_t(0);
      }
    }
  };
  int64_t p = int64_t(blockIdx.x) * kWarpsQ8 + warp;
  int k = 0;
  if (p < n_pairs) load(cur, csc, p, 0);  // goes out before x is staged

  // the codebook: c0, c1 (1 bit, exact) or two int8 planes (2, 4 bits)
  constexpr int K = 1 << B;
  float cmax = 0.0f;
#pragma unroll
  for (int e = 0; e < K; ++e) cmax = fmaxf(cmax, fabsf(__ldg(w.codebooks + e)));
  const float dcb = B == 1 ? 1.0f : cmax / 127.0f, icb = cmax > 0.0f ? 127.0f / cmax : 0.0f;
  const float c0 = __ldg(w.codebooks), c1 = __ldg(w.codebooks + 1);
  uint32_t th[4] = {0, 0, 0, 0}, tl[4] = {0, 0, 0, 0};
  if constexpr (B != 1) {
#pragma unroll
    for (int e = 0; e < K; ++e) {
      const float f = __ldg(w.codebooks + e) * icb;
      const int qh = __float2int_rn(f);
      const int ql = min(127, max(-127, __float2int_rn((f - float(qh)) * 254.0f)));
      th[e >> 2] |= uint32_t(qh & 0xff) << (8 * (e & 3));
      tl[e >> 2] |= uint32_t(ql & 0xff) << (8 * (e & 3));
    }
  }

  // Stage x: thread f handles columns 4f..4f+3; the 16 threads of a 64-column block are
  // 16 consecutive lanes (absmax and sums by shuffles).
  uint8_t* xb = reinterpret_cast<uint8_t*>(q8sm);
  const int n4x = nblk * 16;  // float4 slots per token (padded columns read as 0)
  // kU float4 loads per thread are issued before any is used (x comes from L2: one round
  // trip for a 4096-wide x instead of four, two for 14336).
  constexpr int kU = 4;
  const int n_f = NT * n4x;  // a multiple of 32: every warp is wholly in or out of range
  for (int f0 = int(threadIdx.x); f0 < n_f; f0 += kU * int(blockDim.x)) {
    float v[kU][4];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int f = f0 + u * int(blockDim.x);
      const int t = f / n4x, c = (f - t * n4x) * 4;
      if (f < n_f && c + 4 <= cols) {
        const float4 q = __ldg(reinterpret_cast<const float4*>(x + t * ldx + c));
        v[u][0] = q.x, v[u][1] = q.y, v[u][2] = q.z, v[u][3] = q.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) v[u][e] = f < n_f && c + e < cols ? x[t * ldx + c + e] : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int f = f0 + u * int(blockDim.x);
      if (f < n_f) {  // uniform per warp
        const int t = f / n4x, c = (f - t * n4x) * 4, blk = c >> 6;
        float amax = fmaxf(fmaxf(fabsf(v[u][0]), fabsf(v[u][1])), fmaxf(fabsf(v[u][2]), fabsf(v[u][3])));
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f, d = amax / 127.0f;
        int sh = 0, sl = 0;
        const int i = c / (64 * G), o0 = c - i * (64 * G);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float fv = v[u][e] * inv;
          const int qh = __float2int_rn(fv);
          const int pos = q8_pos<B>(o0 + e);
          const int q = pos >> 4, byte = pos & 15;
          xb[((size_t(t * XP) * N4 + q) * n_ls + i) * 16 + byte] = uint8_t(qh & 0xff);
          sh += qh;
          if constexpr (XP == 2) {
            const int ql = min(127, max(-127, __float2int_rn((fv - float(qh)) * 254.0f)));
            xb[((size_t(t * XP + 1) * N4 + q) * n_ls + i) * 16 + byte] = uint8_t(ql & 0xff);
            sl += ql;
          }
        }
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) {
          sh += __shfl_xor_sync(0xffffffffu, sh, o);
          if constexpr (XP == 2) sl += __shfl_xor_sync(0xffffffffu, sl, o);
        }
        if ((threadIdx.x & 15) == 0) {
          dxs[t * nblk + blk] = d;
          sxs[t * nblk + blk] = d * (float(sh) + float(sl) * (1.0f / 254.0f));
        }
      }
    }
  }
  __syncthreads();
  if (p >= n_pairs) return;  // no block-wide barrier below this point

  float acc[kRowsQ8][NT];
#pragma unroll
  for (int r = 0; r < kRowsQ8; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = 0.0f;

  for (;;) {
    int64_t pn = p;
    int kn = k + 1;
    if (kn == nsteps) kn = 0, pn = p + pstride;
    const bool more = pn < n_pairs;
    if (more) load(nxt, nsc, pn, kn);
    const int i = k * 32 + lane;
    if (i < n_ls) {
      // Block g of the lane step is consumed in chunks of x: 1 word of indices per chunk at
      // 1 and 2 bits (8 / 4 dp4a operands), 2 words at 4 bits (4 operands); each chunk's x
      // is read from shared memory once and used for all rows of the item.
      constexpr int CU = B == 1 ? 2 : 1;                 // 16-byte x words per chunk and plane
      constexpr int NCH = B == 1 ? 2 : 4;                // chunks per block
#pragma unroll
      for (int g = 0; g < G; ++g) {
        int d0[kRowsQ8][NT], d1[kRowsQ8][NT];  // integer dots: main and the /254 terms
#pragma unroll
        for (int r = 0; r < kRowsQ8; ++r)
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
          for (int r = 0; r < kRowsQ8; ++r) {
            if constexpr (B == 4) {
#pragma unroll
              for (int m = 0; m < 2; ++m) {
                // selector nibbles: the low 3 bits of each index pick a byte of an 8-entry
                // half-table; bit 3 picks the half in the merge (prmt's bit 3 would
                // sign-replicate, so it is cleared first)
                const uint32_t q = cur[r][2 * ch + m], q7 = q & 0x77777777u, qs = q7 >> 16;
                const uint32_t hs = 0x32103210u | ((q & 0x88888888u) >> 1), hs1 = hs >> 16;
                const uint32_t h0 = prmt(prmt(th[0], th[1], q7), prmt(th[2], th[3], q7), hs);
                const uint32_t h1 = prmt(prmt(th[0], th[1], qs), prmt(th[2], th[3], qs), hs1);
                const uint32_t l0 = prmt(prmt(tl[0], tl[1], q7), prmt(tl[2], tl[3], q7), hs);
                const uint32_t l1 = prmt(prmt(tl[0], tl[1], qs), prmt(tl[2], tl[3], qs), hs1);
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                  d0[r][t] = dp4a_s(h0, xw(t, 0, 2 * m), d0[r][t]);
                  d0[r][t] = dp4a_s(h1, xw(t, 0, 2 * m + 1), d0[r][t]);
                  d1[r][t] = dp4a_s(l0, xw(t, 0, 2 * m), d1[r][t]);
                  d1[r][t] = dp4a_s(l1, xw(t, 0, 2 * m + 1), d1[r][t]);
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
                const uint32_t hv = prmt(th[0], th[0], sel[u]), lv = prmt(tl[0], tl[0], sel[u]);
#pragma unroll
                for (int t = 0; t < NT; ++t) {
                  d0[r][t] = dp4a_s(hv, xw(t, 0, u), d0[r][t]);
                  d1[r][t] = dp4a_s(lv, xw(t, 0, u), d1[r][t]);
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
        for (int r = 0; r < kRowsQ8; ++r) {
          float sc = 1.0f;
          if (has_sc) sc = w.scale_bf16 ? bf16_bits_to_f32(csc[r][g]) : f16_bits_to_f32(csc[r][g]);
#pragma unroll
          for (int t = 0; t < NT; ++t) {
            const float dd = fmaf(float(d1[r][t]), 1.0f / 254.0f, float(d0[r][t]));
            float v;
            if constexpr (B == 1) v = fmaf(c1 - c0, dxb[t] * dd, c0 * sxb[t]);
            else v = dxb[t] * dd;
            acc[r][t] = fmaf(sc, v, acc[r][t]);
          }
        }
      }
    }
    if (k == nsteps - 1) {  // the pair's last step: reduce across the warp and store
      const int64_t r0 = p * kRowsQ8;
#pragma unroll
      for (int r = 0; r < kRowsQ8; ++r)
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          const float v = warp_sum(acc[r][t]);
          if (lane == 0 && r0 + r < w.rows) y[t * ldy + r0 + r] = v * dcb;
          acc[r][t] = 0.0f;
        }
    }
    if (!more) break;
    p = pn, k = kn;
#pragma unroll
    for (int r = 0; r < kRowsQ8; ++r) {
#pragma unroll
      for (int e = 0; e < W; ++e) cur[r][e] = nxt[r][e];
#pragma unroll
      for (int g = 0; g < G; ++g) csc[r][g] = nsc[r][g];
    }
  }
}

template <int B>
size_t q8_smem(const CudaWeight& w, int nt, int xp) {
  const size_t n_ls = size_t(w.row_words / Q8Geom<B>::W), nblk = n_ls * Q8Geom<B>::G;
  return size_t(nt) * (size_t(xp) * Q8Geom<B>::N4 * n_ls * 16 + nblk * 8);
}

template <int B, int NT, int XP>
void launch_q8(const CudaWeight& w, const float* x, int64_t ldx, float* y, int64_t ldy, int sb_shift,
               cudaStream_t st) {
  static const bool raised = [] {  // once per instantiation, before any graph capture
    KMQ_CUDA_CHECK(
        cudaFuncSetAttribute(gemv_q8_kernel<B, NT, XP>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmemQ8));
    return true;
  }();
  (void)raised;
  const size_t smem = q8_smem<B>(w, NT, XP);
  int per_sm = 0;
  KMQ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemv_q8_kernel<B, NT, XP>, kWarpsQ8 * 32,
                                                               smem));
  constexpr int R = Q8Geom<B>::R;
  const int64_t need = (w.rows + kWarpsQ8 * R - 1) / (kWarpsQ8 * R);
  const unsigned grid = unsigned(std::max<int64_t>(1, std::min<int64_t>(need, int64_t(sm_count()) * std::max(per_sm, 1))));
  gemv_q8_kernel<B, NT, XP><<<grid, kWarpsQ8 * 32, smem, st>>>(w, x, ldx, y, ldy, sb_shift);
  KMQ_CUDA_LAUNCHED();
}

template <int B, int XP>
void run_q8(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy, int sb_shift,
            cudaStream_t st) {
  const bool two_fit = q8_smem<B>(w, 2, XP) <= 100 * 1024;  // keep 2 blocks per SM
  for (int64_t t = 0; t < n_tok;) {
    if (n_tok - t >= 2 && two_fit) {
      launch_q8<B, 2, XP>(w, x + t * ldx, ldx, y + t * ldy, ldy, sb_shift, st);
      t += 2;
    } else {
      launch_q8<B, 1, XP>(w, x + t * ldx, ldx, y + t * ldy, ldy, sb_shift, st);
      t += 1;
    }
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

void gemv_q8_cuda(const CudaWeight& w, const float* x, int64_t ldx, int64_t n_tok, float* y, int64_t ldy, int x_planes,
                  cudaStream_t st) {
  const int sh = scale_shift(w);
  if (x_planes == 1) {
    switch (w.bits) {
      case 1: run_q8<1, 1>(w, x, ldx, n_tok, y, ldy, sh, st); break;
      case 2: run_q8<2, 1>(w, x, ldx, n_tok, y, ldy, sh, st); break;
      default: run_q8<4, 1>(w, x, ldx, n_tok, y, ldy, sh, st); break;
    }
  } else {
    switch (w.bits) {
      case 1: run_q8<1, 2>(w, x, ldx, n_tok, y, ldy, sh, st); break;
      case 2: run_q8<2, 2>(w, x, ldx, n_tok, y, ldy, sh, st); break;
      default: run_q8<4, 2>(w, x, ldx, n_tok, y, ldy, sh, st); break;
    }
  }
}

}  // namespace kmq::cuda
