// The Llama-family forward pass (Llama 1-3, Mistral, Qwen2-style biases), written once
// against the Backend interface: RMSNorm, RoPE, grouped-query attention with a KV cache,
// SwiGLU, tied or untied output layer.
#include <cmath>
#include <fmt/format.h>
#include <numbers>
#include <unistd.h>

#include "backend/backend.h"
#include "kmq/error.h"
#include "kmq/model.h"

namespace kmq {

namespace {

struct LayerWeights {
  WeightId attn_norm, q, k, v, o, q_bias, k_bias, v_bias, ffn_norm, gate, up, down;
};

// RoPE inverse frequencies with the config's scaling (HF conventions, float32 result).
std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // HF: 1 / theta^(2i/d) computed in float32
    float expo = float(2 * i) / float(c.head_dim);
    float inv = 1.0f / std::pow(c.rope_theta, expo);
    const auto& rs = c.rope_scaling;
    if (rs.type == "linear") {
      inv /= rs.factor;
    } else if (rs.type == "llama3") {
      const float old_ctx = float(rs.original_max_position);
      const float low_wavelen = old_ctx / rs.low_freq_factor;
      const float high_wavelen = old_ctx / rs.high_freq_factor;
      const float wavelen = 2.0f * std::numbers::pi_v<float> / inv;
      if (wavelen > low_wavelen) {
        inv /= rs.factor;
      } else if (wavelen >= high_wavelen) {
        const float smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        inv = (1.0f - smooth) * inv / rs.factor + smooth * inv;
      }
    }
    f[size_t(i)] = inv;
  }
  return f;
}

}  // namespace

struct Model::Impl {
  KmqFile file;
  ModelConfig cfg;
  Tokenizer tokenizer;
  std::unique_ptr<Backend> backend;
  WeightId tok_embd, output_norm, output;
  std::vector<LayerWeights> layers;
  uint64_t weight_bytes = 0;

  Impl(const std::filesystem::path& path) : file(path), cfg(file.config()), tokenizer(file.tokenizer()) {}
};

struct Session::Impl {
  Model::Impl* m = nullptr;
  int64_t n_ctx = 0, n_past = 0;
  std::vector<Buf> k_cache, v_cache;
  // Activations for up to max_batch tokens at a time.
  int64_t max_batch = 0;
  Buf x, xn, q, k, v, att, gate, up, logits;
};

Model::Model() = default;
Model::~Model() = default;
Session::Session() = default;
Session::~Session() = default;

std::unique_ptr<Model> Model::load(const std::filesystem::path& path, const ModelOptions& options) {
  std::unique_ptr<Model> model(new Model());
  model->impl_ = std::make_unique<Impl>(path);
  auto& m = *model->impl_;
  const auto& c = m.cfg;
  const std::string where = path.string();
  if (m.tokenizer.n_vocab() > c.n_vocab)
    throw Error(fmt::format("{}: the tokenizer has {} tokens but the model only {}", where, m.tokenizer.n_vocab(), c.n_vocab));
  m.backend = make_backend(BackendOptions{options.device, options.threads});
  auto want = [&](const std::string& name, int64_t rows, int64_t cols) -> WeightId {
    const TensorRef& t = m.file.get(name);
    if (t.rows != rows || t.cols != cols)
      throw Error(fmt::format("{}: tensor '{}' has shape [{}, {}], the config needs [{}, {}]", where, name, t.rows,
                              t.cols, rows, cols));
    m.weight_bytes += t.file_size;
    return m.backend->upload(t);
  };
  const int64_t hd = c.head_dim, q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
  m.tok_embd = want("token_embd", c.n_vocab, c.dim);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    LayerWeights w;
    w.attn_norm = want(p + "attn_norm", c.dim, 1);
    w.q = want(p + "attn_q", q_dim, c.dim);
    w.k = want(p + "attn_k", kv_dim, c.dim);
    w.v = want(p + "attn_v", kv_dim, c.dim);
    w.o = want(p + "attn_output", c.dim, q_dim);
    if (c.attn_qkv_bias) {
      w.q_bias = want(p + "attn_q.bias", q_dim, 1);
      w.k_bias = want(p + "attn_k.bias", kv_dim, 1);
      w.v_bias = want(p + "attn_v.bias", kv_dim, 1);
    }
    w.ffn_norm = want(p + "ffn_norm", c.dim, 1);
    w.gate = want(p + "ffn_gate", c.ffn_dim, c.dim);
    w.up = want(p + "ffn_up", c.ffn_dim, c.dim);
    w.down = want(p + "ffn_down", c.dim, c.ffn_dim);
    m.layers.push_back(w);
  }
  m.output_norm = want("output_norm", c.dim, 1);
  if (c.tied_embeddings) {
    if (m.file.find("output")) throw Error(where + ": the config says tied embeddings but the file has 'output'");
    m.output = m.tok_embd;
  } else {
    m.output = want("output", c.n_vocab, c.dim);
  }
  RopeParams rope;
  rope.head_dim = hd;
  rope.inv_freq = rope_inv_freq(c);
  m.backend->set_rope(rope);
  return model;
}

const ModelConfig& Model::config() const { return impl_->cfg; }
const Tokenizer& Model::tokenizer() const { return impl_->tokenizer; }
const KmqFile& Model::file() const { return impl_->file; }
Backend& Model::backend() { return *impl_->backend; }
std::string Model::backend_name() const { return impl_->backend->name(); }
uint64_t Model::weight_bytes() const { return impl_->weight_bytes; }

std::unique_ptr<Session> Model::new_session(int64_t n_ctx) {
  const auto& c = impl_->cfg;
  if (n_ctx <= 0) n_ctx = c.max_seq;
  if (n_ctx > c.max_seq)
    throw Error(fmt::format("context of {} tokens exceeds the model's maximum of {}", n_ctx, c.max_seq));
  const int64_t kv_dim = c.n_kv_heads * c.head_dim, q_dim = c.n_heads * c.head_dim;
  // Refuse before allocating what the machine cannot hold (a hostile or huge config would
  // otherwise end in bad_alloc or the OOM killer). Counted in double: cannot overflow.
  {
    const double B = double(std::min<int64_t>(n_ctx, 512));
    const double floats = 2.0 * double(c.n_layers) * double(n_ctx) * double(kv_dim) +
                          B * (double(c.dim) + 2.0 * double(std::max(c.dim, q_dim)) + double(q_dim) +
                               2.0 * double(kv_dim) + 2.0 * double(c.ffn_dim) + double(c.n_vocab));
    const double need = 4.0 * floats, weights = double(impl_->weight_bytes);
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    const double have = pages > 0 && page > 0 ? double(pages) * double(page) : 0.0;
    constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
    if (have > 0 && need + weights > have)
      throw Error(fmt::format(
          "{}: a context of {} tokens needs {:.2f} GiB for the KV cache and activations plus {:.2f} GiB of "
          "weights, more than this machine's {:.2f} GiB of memory (use a shorter context)",
          impl_->file.path(), n_ctx, need / kGiB, weights / kGiB, have / kGiB));
  }
  std::unique_ptr<Session> s(new Session());
  s->impl_ = std::make_unique<Session::Impl>();
  auto& si = *s->impl_;
  auto& b = *impl_->backend;
  si.m = impl_.get();
  si.n_ctx = n_ctx;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    si.k_cache.push_back(b.alloc(n_ctx * kv_dim));
    si.v_cache.push_back(b.alloc(n_ctx * kv_dim));
  }
  si.max_batch = std::min<int64_t>(n_ctx, 512);
  const int64_t B = si.max_batch;
  si.x = b.alloc(B * c.dim);
  si.xn = b.alloc(B * std::max(c.dim, q_dim));
  si.q = b.alloc(B * q_dim);
  si.k = b.alloc(B * kv_dim);
  si.v = b.alloc(B * kv_dim);
  si.att = b.alloc(B * std::max(c.dim, q_dim));
  si.gate = b.alloc(B * c.ffn_dim);
  si.up = b.alloc(B * c.ffn_dim);
  si.logits = b.alloc(B * c.n_vocab);
  return s;
}

int64_t Session::n_ctx() const { return impl_->n_ctx; }
int64_t Session::n_past() const { return impl_->n_past; }
void Session::reset() { impl_->n_past = 0; }
void Session::truncate(int64_t n) {
  if (n < 0 || n > impl_->n_past) throw Error(fmt::format("truncate({}) outside [0, {}]", n, impl_->n_past));
  impl_->n_past = n;  // positions >= n are overwritten by the next eval
}

void Session::eval(const std::vector<int32_t>& tokens, std::vector<float>* logits, int64_t n_out) {
  auto& s = *impl_;
  auto& m = *s.m;
  auto& b = *m.backend;
  const auto& c = m.cfg;
  const int64_t n = int64_t(tokens.size());
  if (n == 0) return;
  if (s.n_past + n > s.n_ctx)
    throw Error(fmt::format("{} tokens do not fit: the context holds {} and {} are used", n, s.n_ctx, s.n_past));
  n_out = std::min(n_out, n);
  if (logits) logits->resize(size_t(std::max<int64_t>(n_out, 0) * c.n_vocab));
  const int64_t hd = c.head_dim, q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
  for (int64_t done = 0; done < n; done += s.max_batch) {
    const int64_t nb = std::min(s.max_batch, n - done);
    const int64_t pos0 = s.n_past;
    b.embed(s.x, m.tok_embd, tokens.data() + done, nb);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const auto& w = m.layers[size_t(l)];
      b.rmsnorm(s.xn, s.x, w.attn_norm, nb, c.dim, c.norm_eps);
      b.matmul(s.q, w.q, s.xn, nb);
      b.matmul(s.k, w.k, s.xn, nb);
      b.matmul(s.v, w.v, s.xn, nb);
      if (c.attn_qkv_bias) {
        b.add_bias(s.q, w.q_bias, nb, q_dim);
        b.add_bias(s.k, w.k_bias, nb, kv_dim);
        b.add_bias(s.v, w.v_bias, nb, kv_dim);
      }
      b.rope(s.q, nb, c.n_heads, pos0);
      b.rope(s.k, nb, c.n_kv_heads, pos0);
      b.attention(s.att, s.q, s.k, s.v, s.k_cache[size_t(l)], s.v_cache[size_t(l)], nb, pos0, c.n_heads,
                  c.n_kv_heads, hd, c.sliding_window);
      b.matmul(s.xn, w.o, s.att, nb);
      b.add(s.x, s.xn, nb * c.dim);
      b.rmsnorm(s.xn, s.x, w.ffn_norm, nb, c.dim, c.norm_eps);
      b.matmul(s.gate, w.gate, s.xn, nb);
      b.matmul(s.up, w.up, s.xn, nb);
      b.swiglu(s.gate, s.gate, s.up, nb * c.ffn_dim);
      b.matmul(s.xn, w.down, s.gate, nb);
      b.add(s.x, s.xn, nb * c.dim);
    }
    s.n_past += nb;
    // Logits only for the rows the caller wants that fall in this batch.
    const int64_t first_out = n - n_out;  // index of the first wanted token
    const int64_t lo = std::max(first_out, done), hi = done + nb;
    if (logits && lo < hi) {
      const int64_t k = hi - lo;
      b.rmsnorm(s.xn, s.x.at((lo - done) * c.dim), m.output_norm, k, c.dim, c.norm_eps);
      b.matmul(s.logits, m.output, s.xn, k);
      b.to_host(logits->data() + (lo - first_out) * c.n_vocab, s.logits, k * c.n_vocab);
    }
  }
}

void Model::decode_batch(const std::vector<Session*>& sessions, const std::vector<int32_t>& tokens,
                         std::vector<float>* logits) {
  auto& m = *impl_;
  auto& b = *m.backend;
  const auto& c = m.cfg;
  const int64_t n_seq = int64_t(sessions.size());
  if (int64_t(tokens.size()) != n_seq)
    throw Error(fmt::format("decode_batch: {} tokens for {} sessions", tokens.size(), n_seq));
  if (n_seq == 0) return;
  for (int64_t i = 0; i < n_seq; ++i) {
    const Session::Impl& si = *sessions[size_t(i)]->impl_;
    if (si.m != impl_.get()) throw Error("decode_batch: a session of another model");
    if (si.n_past + 1 > si.n_ctx)
      throw Error(fmt::format("1 token does not fit: the context holds {} and {} are used", si.n_ctx, si.n_past));
    for (int64_t j = 0; j < i; ++j)
      if (sessions[size_t(j)] == sessions[size_t(i)]) throw Error("decode_batch: a session appears twice");
  }
  if (logits) logits->resize(size_t(n_seq * c.n_vocab));
  // The activations of the first session hold the stacked rows (max_batch rows at a time).
  Session::Impl& s = *sessions[0]->impl_;
  const int64_t hd = c.head_dim, q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
  for (int64_t done = 0; done < n_seq; done += s.max_batch) {
    const int64_t nb = std::min(s.max_batch, n_seq - done);
    b.embed(s.x, m.tok_embd, tokens.data() + done, nb);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      const auto& w = m.layers[size_t(l)];
      b.rmsnorm(s.xn, s.x, w.attn_norm, nb, c.dim, c.norm_eps);
      b.matmul(s.q, w.q, s.xn, nb);
      b.matmul(s.k, w.k, s.xn, nb);
      b.matmul(s.v, w.v, s.xn, nb);
      if (c.attn_qkv_bias) {
        b.add_bias(s.q, w.q_bias, nb, q_dim);
        b.add_bias(s.k, w.k_bias, nb, kv_dim);
        b.add_bias(s.v, w.v_bias, nb, kv_dim);
      }
      for (int64_t r = 0; r < nb; ++r) {  // each row at its own position, over its own cache
        Session::Impl& sr = *sessions[size_t(done + r)]->impl_;
        const Buf q = s.q.at(r * q_dim), k = s.k.at(r * kv_dim), v = s.v.at(r * kv_dim);
        b.rope(q, 1, c.n_heads, sr.n_past);
        b.rope(k, 1, c.n_kv_heads, sr.n_past);
        b.attention(s.att.at(r * q_dim), q, k, v, sr.k_cache[size_t(l)], sr.v_cache[size_t(l)], 1, sr.n_past,
                    c.n_heads, c.n_kv_heads, hd, c.sliding_window);
      }
      b.matmul(s.xn, w.o, s.att, nb);
      b.add(s.x, s.xn, nb * c.dim);
      b.rmsnorm(s.xn, s.x, w.ffn_norm, nb, c.dim, c.norm_eps);
      b.matmul(s.gate, w.gate, s.xn, nb);
      b.matmul(s.up, w.up, s.xn, nb);
      b.swiglu(s.gate, s.gate, s.up, nb * c.ffn_dim);
      b.matmul(s.xn, w.down, s.gate, nb);
      b.add(s.x, s.xn, nb * c.dim);
    }
    for (int64_t r = 0; r < nb; ++r) ++sessions[size_t(done + r)]->impl_->n_past;
    if (logits) {
      b.rmsnorm(s.xn, s.x, m.output_norm, nb, c.dim, c.norm_eps);
      b.matmul(s.logits, m.output, s.xn, nb);
      b.to_host(logits->data() + done * c.n_vocab, s.logits, nb * c.n_vocab);
    }
  }
}

}  // namespace kmq
