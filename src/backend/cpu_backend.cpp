// The CPU backend: weights stay in the mapped file; every op goes through the kernel
// table (kernels/cpu) and is split over the thread pool.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <fmt/format.h>

#include "backend/backend.h"
#ifdef KMQ_HAVE_CUDA
#include "backend/cuda_backend.h"
#endif
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/lut.h"
#include "kmq/error.h"
#include "util/thread_pool.h"

namespace kmq {
namespace {

cpu::WeightView view_of(const TensorRef& t) {
  cpu::WeightView w;
  w.dtype = t.dtype;
  w.rows = t.rows;
  w.cols = t.cols;
  w.data = t.data;
  w.bits = t.bits;
  w.scope = t.scope;
  w.group_size = t.group_size;
  w.scale_block = t.scale_block;
  w.codebook_dtype = t.codebook_dtype;
  w.scale_dtype = t.scale_dtype;
  w.codebooks = t.codebooks;
  w.scales = t.scales;
  return w;
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : k_(cpu::kernels()), pool_(threads) {}

  std::string name() const override { return fmt::format("cpu ({}, {} threads)", k_.isa, pool_.size()); }
  int n_threads() const override { return pool_.size(); }

  WeightId upload(const TensorRef& t) override {
    weights_.push_back(view_of(t));
    // Quantized matrices with one codebook per tensor are repacked once for the lookup-
    // table kernels (kernels/cpu/lut.h), in parallel over row tiles.
    std::unique_ptr<cpu::LutWeight> lut;
    if (k_.lut_matmul && t.cols > 1 && cpu::lut_supported(weights_.back())) {
      lut = cpu::lut_alloc(weights_.back());
      const int64_t per = std::max<int64_t>(1, lut->n_tiles / (pool_.size() * 4));
      pool_.run((lut->n_tiles + per - 1) / per, [&](int64_t b, int) {
        cpu::lut_pack_tiles(weights_.back(), *lut, b * per, std::min(lut->n_tiles, (b + 1) * per));
      });
    }
    luts_.push_back(std::move(lut));
    // The output layer (logits; token_embd when tied) keeps the lookup-table product at
    // every token count: the int8 product's 7-bit codebook moved perplexity by 0.26% on a
    // 1-bit model with a 4-bit output layer (tests/cli/isa.sh), and prompts need the
    // logits of one token only, so it costs prompt speed nothing.
    q8_ok_.push_back(t.name != "output" && t.name != "token_embd");
    // Vectors (norm gains, biases) are converted to f32 once.
    std::vector<float> f;
    if (t.cols == 1 || t.ndim == 1) {
      f.resize(size_t(t.rows * t.cols));
      cpu::WeightView v = weights_.back();
      v.rows = 1;
      v.cols = t.rows * t.cols;
      k_.dequant_row(v, 0, f.data());
    }
    vectors_.push_back(std::move(f));
    return WeightId{int32_t(weights_.size() - 1)};
  }

  Buf alloc(int64_t n) override {
    buffers_.emplace_back(std::make_unique<float[]>(size_t(n)));
    std::memset(buffers_.back().get(), 0, size_t(n) * sizeof(float));
    return Buf{buffers_.back().get(), n};
  }

  void set_rope(const RopeParams& rope) override { rope_ = rope; }

  void embed(Buf out, WeightId emb, const int32_t* tokens, int64_t n_tok) override {
    const auto& w = weights_.at(emb.id);
    for (int64_t t = 0; t < n_tok; ++t) {
      if (tokens[t] < 0 || tokens[t] >= w.rows)
        throw Error(fmt::format("token id {} outside the vocabulary of {}", tokens[t], w.rows));
      k_.dequant_row(w, tokens[t], out.p + t * w.cols);
    }
  }

  void rmsnorm(Buf out, Buf x, WeightId w, int64_t n_tok, int64_t dim, float eps) override {
    const float* g = vectors_.at(w.id).data();
    for (int64_t t = 0; t < n_tok; ++t) k_.rmsnorm(out.p + t * dim, x.p + t * dim, g, dim, eps);
  }

  void matmul(Buf y, WeightId wid, Buf x, int64_t n_tok) override {
    const auto& w = weights_.at(wid.id);
    if (const cpu::LutWeight* L = luts_.at(wid.id).get()) {
      // 3-4 bits, several tokens: the int8 product (lut.h), which beats a lookup per
      // weight and token there (docs/PERFORMANCE.md).
      if (k_.lut_q8 && n_tok >= q8_min_tokens_ && q8_ok_[size_t(wid.id)] && cpu::lut_q8_supported(*L)) {
        for (int64_t t0 = 0; t0 < n_tok; t0 += kQ8Tokens) {
          const int64_t nt = std::min(kQ8Tokens, n_tok - t0);
          lut_q8_matmul(*L, y.p + t0 * w.rows, x.p + t0 * w.cols, nt);
        }
        return;
      }
      // Tokens in groups small enough that their tables stay in cache while a tile of
      // weights is reused for each of them.
      for (int64_t t0 = 0; t0 < n_tok; t0 += kLutTokens) {
        const int64_t nt = std::min(kLutTokens, n_tok - t0);
        lut_matmul(*L, y.p + t0 * w.rows, x.p + t0 * w.cols, nt);
      }
      return;
    }
    ensure_scratch(w.cols);
    // Blocks of rows small enough to balance, large enough to amortise scheduling.
    const int64_t block = std::max<int64_t>(16, w.rows / (pool_.size() * 8));
    const int64_t n_blocks = (w.rows + block - 1) / block;
    pool_.run(n_blocks, [&](int64_t b, int thread) {
      const int64_t r0 = b * block, r1 = std::min(w.rows, r0 + block);
      k_.matmul(w, x.p, w.cols, n_tok, y.p, w.rows, r0, r1, scratch_[thread].data());
    });
  }

  void add_bias(Buf y, WeightId bias, int64_t n_tok, int64_t width) override {
    const float* b = vectors_.at(bias.id).data();
    for (int64_t t = 0; t < n_tok; ++t)
      for (int64_t i = 0; i < width; ++i) y.p[t * width + i] += b[i];
  }

  void rope(Buf x, int64_t n_tok, int64_t n_heads, int64_t pos0) override {
    const int64_t hd = rope_.head_dim, half = hd / 2;
    std::vector<float> cs(static_cast<size_t>(hd));
    for (int64_t t = 0; t < n_tok; ++t) {
      const double pos = double(pos0 + t);
      for (int64_t i = 0; i < half; ++i) {
        const float ang = float(pos) * rope_.inv_freq[i];  // f32 product, as HF computes it
        cs[i] = std::cos(ang);
        cs[half + i] = std::sin(ang);
      }
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x.p + (t * n_heads + h) * hd;
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[half + i], c = cs[i], s = cs[half + i];
          v[i] = a * c - b * s;
          v[half + i] = b * c + a * s;
        }
      }
    }
  }

  void attention(Buf out, Buf q, Buf k, Buf v, Buf k_cache, Buf v_cache, int64_t n_tok, int64_t pos0,
                 int64_t n_heads, int64_t n_kv, int64_t hd, int64_t window) override {
    const int64_t kv_dim = n_kv * hd;
    std::memcpy(k_cache.p + pos0 * kv_dim, k.p, size_t(n_tok * kv_dim) * sizeof(float));
    std::memcpy(v_cache.p + pos0 * kv_dim, v.p, size_t(n_tok * kv_dim) * sizeof(float));
    const int64_t group = n_heads / n_kv;
    const float scale = 1.0f / std::sqrt(float(hd));
    const int64_t n_ctx_used = pos0 + n_tok;
    ensure_att(n_ctx_used);
    pool_.run(n_tok * n_heads, [&](int64_t task, int thread) {
      const int64_t t = task / n_heads, h = task % n_heads, kvh = h / group;
      const int64_t p = pos0 + t;
      const int64_t start = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
      const float* qv = q.p + (t * n_heads + h) * hd;
      float* att = att_[thread].data();
      for (int64_t s = start; s <= p; ++s) att[s - start] = k_.dot(qv, k_cache.p + s * kv_dim + kvh * hd, hd) * scale;
      k_.softmax(att, p - start + 1);
      float* o = out.p + (t * n_heads + h) * hd;
      std::memset(o, 0, size_t(hd) * sizeof(float));
      for (int64_t s = start; s <= p; ++s) k_.axpy(o, att[s - start], v_cache.p + s * kv_dim + kvh * hd, hd);
    });
  }

  void swiglu(Buf out, Buf gate, Buf up, int64_t n) override { k_.swiglu(out.p, gate.p, up.p, n); }

  void add(Buf y, Buf x, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) y.p[i] += x.p[i];
  }

  void copy_rows(Buf dst, Buf src, int64_t n) override { std::memmove(dst.p, src.p, size_t(n) * sizeof(float)); }
  void to_host(float* dst, Buf src, int64_t n) override { std::memcpy(dst, src.p, size_t(n) * sizeof(float)); }

 private:
  static constexpr int64_t kLutTokens = 16;
  static constexpr int64_t kQ8Tokens = 256;    // tokens per int8 product call (bounds the buffers)
  static constexpr int64_t kQ8MinTokens = 8;  // below: the tile decode costs more than it saves
  const int64_t q8_min_tokens_ = q8_min_tokens();

  void lut_matmul(const cpu::LutWeight& L, float* y, const float* x, int64_t n_tok) {
    const size_t tb = size_t(n_tok * L.table_bytes()), mb = size_t(n_tok * L.mult_bytes());
    const size_t nb = size_t(n_tok * L.n_blocks);
    if (tables_.size() < tb) tables_.resize(tb);
    if (mults_.size() < mb) mults_.resize(mb);
    if (tscale_.size() < nb) tscale_.resize(nb);
    const cpu::LutTables lt{tables_.data(), mults_.data(), tscale_.data()};
    const int64_t parts = std::min<int64_t>(pool_.size(), L.n_blocks);
    pool_.run(parts, [&](int64_t p, int) {
      k_.lut_tables(L, x, L.cols, n_tok, lt, p * L.n_blocks / parts, (p + 1) * L.n_blocks / parts);
    });
    const int64_t per = std::max<int64_t>(1, L.n_tiles / (pool_.size() * 8));
    pool_.run((L.n_tiles + per - 1) / per, [&](int64_t b, int) {
      k_.lut_matmul(L, lt, n_tok, y, L.rows, b * per, std::min(L.n_tiles, (b + 1) * per));
    });
  }

  // Token count from which the int8 product replaces the LUT one at 3-4 bits:
  // $KMQ_CPU_Q8_MIN_TOKENS (0: never), default kQ8MinTokens.
  static int64_t q8_min_tokens() {
    const char* e = std::getenv("KMQ_CPU_Q8_MIN_TOKENS");
    if (!e || !*e) return kQ8MinTokens;
    const long v = std::strtol(e, nullptr, 10);
    return v <= 0 ? std::numeric_limits<int64_t>::max() : int64_t(v);
  }

  void lut_q8_matmul(const cpu::LutWeight& L, float* y, const float* x, int64_t n_tok) {
    const size_t nq = size_t(n_tok * L.n_chunks);
    if (q8x_.size() < nq * 32) q8x_.resize(nq * 32);
    if (q8s_.size() < nq) q8s_.resize(nq);
    if (q8c_.size() < nq) q8c_.resize(nq);
    const cpu::LutQ8Acts a{q8x_.data(), q8s_.data(), q8c_.data()};
    const int64_t parts = std::min<int64_t>(pool_.size(), n_tok);
    pool_.run(parts, [&](int64_t p, int) {
      cpu::lut_q8_quantize(L, x, L.cols, a, p * n_tok / parts, (p + 1) * n_tok / parts);
    });
    const size_t sb = (cpu::lut_q8_scratch_bytes(L) + 63) / 64 * 64;
    if (q8scratch_.size() < sb * size_t(pool_.size()) + 64) q8scratch_.resize(sb * size_t(pool_.size()) + 64);
    uint8_t* base = q8scratch_.data();
    base += (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
    const int64_t per = std::max<int64_t>(1, L.n_tiles / (pool_.size() * 8));
    pool_.run((L.n_tiles + per - 1) / per, [&](int64_t b, int thread) {
      k_.lut_q8(L, a, n_tok, y, L.rows, b * per, std::min(L.n_tiles, (b + 1) * per), base + sb * size_t(thread));
    });
  }

  void ensure_scratch(int64_t cols) {
    if (int64_t(scratch_.size()) == pool_.size() && int64_t(scratch_[0].size()) >= 4 * cols) return;
    scratch_.assign(size_t(pool_.size()), std::vector<float>(size_t(4 * cols)));
  }
  void ensure_att(int64_t n) {
    if (int64_t(att_.size()) == pool_.size() && int64_t(att_[0].size()) >= n) return;
    att_.assign(size_t(pool_.size()), std::vector<float>(size_t(n)));
  }

  const cpu::Kernels& k_;
  ThreadPool pool_;
  std::vector<cpu::WeightView> weights_;
  std::vector<std::unique_ptr<cpu::LutWeight>> luts_;  // per weight, null where not repacked
  std::vector<int8_t> tables_;
  std::vector<uint8_t> mults_;
  std::vector<float> tscale_;
  std::vector<bool> q8_ok_;  // per weight: the int8 product may run (not the output layer)
  std::vector<int8_t> q8x_;
  std::vector<float> q8s_;
  std::vector<int32_t> q8c_;
  std::vector<uint8_t> q8scratch_;
  std::vector<std::vector<float>> vectors_;
  std::vector<std::unique_ptr<float[]>> buffers_;
  std::vector<std::vector<float>> scratch_, att_;
  RopeParams rope_;
};

}  // namespace

std::unique_ptr<Backend> make_backend(const BackendOptions& o) {
  if (o.device == "cpu") return std::make_unique<CpuBackend>(o.threads);
  if (o.device == "cuda") {
#ifdef KMQ_HAVE_CUDA
    return make_cuda_backend(o);
#else
    throw Error("--device cuda: this build has no CUDA backend (configure with -DKMQ_CUDA=ON where nvcc is "
                "installed; use --device cpu)");
#endif
  }
  throw Error(fmt::format("unknown device '{}' (expected cpu or cuda)", o.device));
}

}  // namespace kmq
