// Causal grouped-query attention over an f32 KV cache on the GPU.
// q: [n_tok, n_heads*hd]; caches: [cap, n_kv*hd]; out: [n_tok, n_heads*hd]; token t sits at
// position *pos + t and attends to [max(0, p - window + 1), p] (window 0: all).
// One block (4 warps) per (head, token, split); each warp walks positions with an online
// softmax, the block merges its warps. With n_splits > 1 (decode: few tokens, long
// context) the token's context is cut into n_splits chunks of >= 8 positions (computed on
// the device from *pos, so a captured graph fits every step); each block writes (max, sum,
// o[hd]) to `partial` ([n_tok][n_heads][n_splits][hd + 2] floats) and the last block of a
// row to finish merges them (`counters`: n_tok * n_heads zeroed words, left zero again).
// Launchers take pdl: programmatic dependent launch (common.cuh).
// Constraints: head_dim <= 256; n_heads % n_kv == 0.
#pragma once
#include <cstdint>

#include <cuda_runtime.h>

namespace kmq::cuda {

// Stores k, v ([n_tok, kv_dim]) at rows *pos.. of the caches.
void store_kv_cuda(float* k_cache, float* v_cache, const float* k, const float* v, int64_t n_tok, int64_t kv_dim,
                   const int32_t* pos, cudaStream_t stream, bool pdl = false);
// RoPE (rotate-half, as rope_cuda) of q and k in place, then store_kv_cuda: one launch.
void rope_store_cuda(float* q, float* k, const float* v, float* k_cache, float* v_cache, int64_t n_tok, int64_t n_heads,
                     int64_t n_kv, int64_t hd, const float* inv_freq, const int32_t* pos, cudaStream_t stream,
                     bool pdl = false);

void attention_cuda(float* out, const float* q, const float* k_cache, const float* v_cache, int64_t n_tok,
                    int64_t n_heads, int64_t n_kv, int64_t head_dim, int64_t window, const int32_t* pos, int n_splits,
                    float* partial, unsigned* counters, cudaStream_t stream, bool pdl = false);

}  // namespace kmq::cuda
