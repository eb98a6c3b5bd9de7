// The backend interface: the operations a transformer forward pass needs, on memory the
// backend owns (host memory for the CPU, device memory for CUDA). The model code
// (src/model) describes the computation with these calls and never branches on device or
// ISA. Activations are row-major [n_tok, width] float32 arrays addressed by Buf.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kmq/kmq_file.h"

namespace kmq {

// An activation or cache buffer: backend memory, opaque to the model code.
struct Buf {
  float* p = nullptr;
  int64_t n = 0;  // floats
  Buf at(int64_t offset) const { return Buf{p + offset, n - offset}; }
};

// A model weight as the backend stores it (index into the backend's table).
struct WeightId {
  int32_t id = -1;
  bool valid() const { return id >= 0; }
};

// RoPE: rotate-half pairs (i, i + head_dim/2) with angle pos * inv_freq[i].
struct RopeParams {
  int64_t head_dim = 0;
  std::vector<float> inv_freq;  // head_dim / 2 frequencies, scaling applied
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;   // e.g. "cpu (avx512, 2 threads)"
  virtual int n_threads() const = 0;

  virtual WeightId upload(const TensorRef& t) = 0;  // may keep pointing into the mapped file
  virtual Buf alloc(int64_t n_floats) = 0;          // zero-initialised, freed with the backend
  virtual void set_rope(const RopeParams& rope) = 0;

  // out[t, :] = row tokens[t] of the embedding (any stored dtype).
  virtual void embed(Buf out, WeightId emb, const int32_t* tokens, int64_t n_tok) = 0;
  // out[t, :] = rmsnorm(x[t, :]) * w, rows of width `dim`.
  virtual void rmsnorm(Buf out, Buf x, WeightId w, int64_t n_tok, int64_t dim, float eps) = 0;
  // y[t, :] = W x[t, :] (+ bias), W: [rows, cols], x rows of width cols, y rows of width rows.
  virtual void matmul(Buf y, WeightId w, Buf x, int64_t n_tok) = 0;
  virtual void add_bias(Buf y, WeightId bias, int64_t n_tok, int64_t width) = 0;
  // In place on x[t, h*head_dim ...] for n_heads heads, token t at position pos0 + t.
  virtual void rope(Buf x, int64_t n_tok, int64_t n_heads, int64_t pos0) = 0;
  // Stores k, v ([n_tok, n_kv*hd]) at positions pos0.. of the cache of one layer, then
  // causal grouped-query attention of q ([n_tok, n_heads*hd]) over positions
  // [max(0, p - window + 1), p] (window 0 = all) into out ([n_tok, n_heads*hd]).
  // k_cache / v_cache: [n_ctx, n_kv*hd] buffers of that layer.
  virtual void attention(Buf out, Buf q, Buf k, Buf v, Buf k_cache, Buf v_cache, int64_t n_tok,
                         int64_t pos0, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                         int64_t window) = 0;
  virtual void swiglu(Buf out, Buf gate, Buf up, int64_t n) = 0;  // out = silu(gate) * up
  virtual void add(Buf y, Buf x, int64_t n) = 0;                   // y += x
  virtual void copy_rows(Buf dst, Buf src, int64_t n) = 0;         // dst[0..n) = src[0..n)
  virtual void to_host(float* dst, Buf src, int64_t n) = 0;
};

struct BackendOptions {
  std::string device = "cpu";
  int threads = 0;  // 0: all cores
};

// Creates the backend named by options.device; throws kmq::Error for unknown/unavailable.
std::unique_ptr<Backend> make_backend(const BackendOptions& options);

}  // namespace kmq
