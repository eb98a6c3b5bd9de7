// The float model for calibration (calibrate.h): the Llama forward pass of src/model,
// written again here against the Backend interface over float32 weights held in memory
// (the model code reads only .kmq files), with the linear layers' inputs copied out.
#include "calib/calibrate.h"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <functional>
#include <numbers>

#include "backend/backend.h"
#include "kmq/error.h"
#include "kmq/tokenizer.h"

namespace kmq {

namespace {

// RoPE inverse frequencies with the config's scaling; the same formulas as src/model.
std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    float inv = 1.0f / std::pow(c.rope_theta, float(2 * i) / float(c.head_dim));
    const auto& rs = c.rope_scaling;
    if (rs.type == "linear") {
      inv /= rs.factor;
    } else if (rs.type == "llama3") {
      const float old_ctx = float(rs.original_max_position);
      const float low_wavelen = old_ctx / rs.low_freq_factor, high_wavelen = old_ctx / rs.high_freq_factor;
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

struct FloatModel::Impl {
  ModelConfig cfg;
  std::unique_ptr<Backend> b;
  struct W {
    std::vector<float> src, repl;  // repl: a replacement (empty = none)
    int64_t rows = 0, cols = 0;
    WeightId id;
  };
  std::map<std::string, W> w;
  int64_t n_ctx = 0;
  std::vector<Buf> kc, vc;
  std::vector<Buf> states;  // layer-by-layer use: one residual stream per chunk
  std::vector<int64_t> state_len;
  Buf x, xn, q, k, v, att, gate, up, logits;

  void upload(const std::string& name, W& t) {
    TensorRef r;
    r.name = name;
    r.dtype = DType::kF32;
    r.rows = t.rows;
    r.cols = t.cols;
    r.ndim = t.cols == 1 ? 1 : 2;
    r.data = t.repl.empty() ? t.src.data() : t.repl.data();
    t.id = b->upload(r);
  }
  // One transformer layer on the n rows of x (positions from 0). at(point, buffer, width)
  // is called at each capture point with that point's input; when it returns true the
  // layer stops there (x is then partly updated).
  void layer(int64_t l, int64_t n, const std::function<bool(FloatModel::Point, Buf, int64_t)>& at) {
    using P = FloatModel::Point;
    const auto& c = cfg;
    const int64_t hd = c.head_dim, q_dim = c.n_heads * hd, kv_dim = c.n_kv_heads * hd;
    const std::string p = fmt::format("blk.{}.", l);
    b->rmsnorm(xn, x, id(p + "attn_norm"), n, c.dim, c.norm_eps);
    if (at(P::kAttnIn, xn, c.dim)) return;
    b->matmul(q, id(p + "attn_q"), xn, n);
    b->matmul(k, id(p + "attn_k"), xn, n);
    b->matmul(v, id(p + "attn_v"), xn, n);
    if (c.attn_qkv_bias) {
      b->add_bias(q, id(p + "attn_q.bias"), n, q_dim);
      b->add_bias(k, id(p + "attn_k.bias"), n, kv_dim);
      b->add_bias(v, id(p + "attn_v.bias"), n, kv_dim);
    }
    b->rope(q, n, c.n_heads, 0);
    b->rope(k, n, c.n_kv_heads, 0);
    b->attention(att, q, k, v, kc[size_t(l)], vc[size_t(l)], n, 0, c.n_heads, c.n_kv_heads, hd, c.sliding_window);
    if (at(P::kAttnOutput, att, q_dim)) return;
    b->matmul(xn, id(p + "attn_output"), att, n);
    b->add(x, xn, n * c.dim);
    b->rmsnorm(xn, x, id(p + "ffn_norm"), n, c.dim, c.norm_eps);
    if (at(P::kFfnIn, xn, c.dim)) return;
    b->matmul(gate, id(p + "ffn_gate"), xn, n);
    b->matmul(up, id(p + "ffn_up"), xn, n);
    b->swiglu(gate, gate, up, n * c.ffn_dim);
    if (at(P::kFfnDown, gate, c.ffn_dim)) return;
    b->matmul(xn, id(p + "ffn_down"), gate, n);
    b->add(x, xn, n * c.dim);
  }
  WeightId id(const std::string& name) const {
    auto it = w.find(name);
    if (it == w.end()) throw Error(fmt::format("calibration: the model has no tensor '{}'", name));
    return it->second.id;
  }
};

FloatModel::FloatModel(const SourceModel& src, int threads) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.cfg = src.config;
  m.b = make_backend(BackendOptions{"cpu", threads});
  for (const auto& t : src.tensors) {
    Impl::W x;
    x.src = t.load();
    x.rows = t.shape[0];
    x.cols = t.shape.size() == 2 ? t.shape[1] : 1;
    auto [it, ok] = m.w.emplace(t.name, std::move(x));
    m.upload(t.name, it->second);
  }
  RopeParams rope;
  rope.head_dim = m.cfg.head_dim;
  rope.inv_freq = rope_inv_freq(m.cfg);
  m.b->set_rope(rope);
  const auto& c = m.cfg;
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  m.n_ctx = c.max_seq;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    m.kc.push_back(m.b->alloc(m.n_ctx * kv_dim));
    m.vc.push_back(m.b->alloc(m.n_ctx * kv_dim));
  }
  const int64_t B = m.n_ctx;
  m.x = m.b->alloc(B * c.dim);
  m.xn = m.b->alloc(B * std::max(c.dim, q_dim));
  m.q = m.b->alloc(B * q_dim);
  m.k = m.b->alloc(B * kv_dim);
  m.v = m.b->alloc(B * kv_dim);
  m.att = m.b->alloc(B * std::max(c.dim, q_dim));
  m.gate = m.b->alloc(B * c.ffn_dim);
  m.up = m.b->alloc(B * c.ffn_dim);
}

FloatModel::~FloatModel() = default;

const ModelConfig& FloatModel::config() const { return impl_->cfg; }

const std::vector<float>& FloatModel::source_weight(const std::string& name) const {
  auto it = impl_->w.find(name);
  if (it == impl_->w.end()) throw Error(fmt::format("calibration: the model has no tensor '{}'", name));
  return it->second.src;
}

void FloatModel::set_weight(const std::string& name, const std::vector<float>& values) {
  auto it = impl_->w.find(name);
  if (it == impl_->w.end()) throw Error(fmt::format("calibration: the model has no tensor '{}'", name));
  auto& t = it->second;
  if (!values.empty() && int64_t(values.size()) != t.rows * t.cols)
    throw Error(fmt::format("calibration: '{}' needs {} values, got {}", name, t.rows * t.cols, values.size()));
  t.repl = values;
  impl_->upload(name, t);
}

void FloatModel::run(const std::vector<int32_t>& tokens, std::map<std::string, std::vector<double>>* stats,
                     std::vector<float>* logprobs) {
  auto& m = *impl_;
  auto& b = *m.b;
  const auto& c = m.cfg;
  const int64_t n = int64_t(tokens.size());
  if (n == 0) return;
  if (n > m.n_ctx) throw Error(fmt::format("calibration: a chunk of {} tokens exceeds the context {}", n, m.n_ctx));
  std::vector<float> host;
  auto record = [&](const std::string& name, Buf x, int64_t width) {
    if (!stats) return;
    host.resize(size_t(n * width));
    b.to_host(host.data(), x, n * width);
    auto& acc = (*stats)[name];
    acc.resize(size_t(width), 0.0);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < width; ++j) {
        const double v = host[size_t(t * width + j)];
        acc[size_t(j)] += v * v;
      }
  };
  b.embed(m.x, m.id("token_embd"), tokens.data(), n);
  static const char* const kNames[] = {"", "attn_in", "attn_output", "ffn_in", "ffn_down"};
  for (int64_t l = 0; l < c.n_layers; ++l)
    m.layer(l, n, [&](Point at, Buf x, int64_t width) {
      record(fmt::format("blk.{}.{}", l, kNames[int(at)]), x, width);
      return false;
    });
  b.rmsnorm(m.xn, m.x, m.id("output_norm"), n, c.dim, c.norm_eps);
  record("output", m.xn, c.dim);
  if (logprobs) {
    const WeightId out = c.tied_embeddings ? m.id("token_embd") : m.id("output");
    if (m.logits.n < n * c.n_vocab) m.logits = b.alloc(n * c.n_vocab);
    b.matmul(m.logits, out, m.xn, n);
    logprobs->resize(size_t(n * c.n_vocab));
    b.to_host(logprobs->data(), m.logits, n * c.n_vocab);
    for (int64_t t = 0; t < n; ++t) {
      float* r = logprobs->data() + t * c.n_vocab;
      const float mx = *std::max_element(r, r + c.n_vocab);
      double s = 0;
      for (int64_t i = 0; i < c.n_vocab; ++i) s += std::exp(double(r[i] - mx));
      const float lse = mx + float(std::log(s));
      for (int64_t i = 0; i < c.n_vocab; ++i) r[i] -= lse;
    }
  }
}

int64_t FloatModel::begin(const std::vector<int32_t>& tokens) {
  auto& m = *impl_;
  const int64_t n = int64_t(tokens.size());
  if (n == 0 || n > m.n_ctx)
    throw Error(fmt::format("calibration: a chunk of {} tokens does not fit the context {}", n, m.n_ctx));
  m.states.push_back(m.b->alloc(n * m.cfg.dim));
  m.state_len.push_back(n);
  m.b->embed(m.states.back(), m.id("token_embd"), tokens.data(), n);
  return int64_t(m.states.size()) - 1;
}

void FloatModel::run_layer(int64_t st, int64_t l, Point point, std::vector<float>* captured, bool advance) {
  auto& m = *impl_;
  auto& b = *m.b;
  const auto& c = m.cfg;
  if (st < 0 || st >= int64_t(m.states.size()) || l < 0 || l >= c.n_layers)
    throw Error(fmt::format("calibration: no state {} or layer {}", st, l));
  const int64_t n = m.state_len[size_t(st)];
  b.copy_rows(m.x, m.states[size_t(st)], n * c.dim);
  m.layer(l, n, [&](Point here, Buf x, int64_t width) {
    if (point != here) return false;
    if (captured) {
      const size_t at = captured->size();
      captured->resize(at + size_t(n * width));
      b.to_host(captured->data() + at, x, n * width);
    }
    return !advance;
  });
  if (advance) b.copy_rows(m.states[size_t(st)], m.x, n * c.dim);
}

void FloatModel::final_input(int64_t st, std::vector<float>* captured) {
  auto& m = *impl_;
  if (st < 0 || st >= int64_t(m.states.size())) throw Error(fmt::format("calibration: no state {}", st));
  const int64_t n = m.state_len[size_t(st)], dim = m.cfg.dim;
  m.b->rmsnorm(m.xn, m.states[size_t(st)], m.id("output_norm"), n, dim, m.cfg.norm_eps);
  const size_t at = captured->size();
  captured->resize(at + size_t(n * dim));
  m.b->to_host(captured->data() + at, m.xn, n * dim);
}

std::vector<int32_t> calibration_tokens(const SourceModel& src, const std::string& text,
                                        const CalibrationOptions& o) {
  if (o.n_ctx < 2 || o.n_ctx > src.config.max_seq)
    throw Error(fmt::format("calibration: chunk length {} not in [2, {}]", o.n_ctx, src.config.max_seq));
  Tokenizer tok(src.tokenizer);
  std::vector<int32_t> ids = tok.encode(text, false);
  const int64_t chunks = std::min<int64_t>(int64_t(ids.size()), o.max_tokens) / o.n_ctx;
  if (chunks < 1)
    throw Error(fmt::format("calibration: the text has {} tokens, fewer than one chunk of {}", ids.size(), o.n_ctx));
  ids.resize(size_t(chunks * o.n_ctx));
  const int32_t bos = int32_t(src.config.bos_id >= 0 ? src.config.bos_id : src.tokenizer.bos_id);
  if (bos >= 0)
    for (int64_t c = 0; c < chunks; ++c) ids[size_t(c * o.n_ctx)] = bos;
  return ids;
}

Calibration calibrate(const SourceModel& src, const std::vector<int32_t>& tokens, const CalibrationOptions& o) {
  FloatModel fm(src, o.threads);
  std::map<std::string, std::vector<double>> acc;
  Calibration cal;
  for (size_t i = 0; i + size_t(o.n_ctx) <= tokens.size(); i += size_t(o.n_ctx)) {
    std::vector<int32_t> chunk(tokens.begin() + int64_t(i), tokens.begin() + int64_t(i) + o.n_ctx);
    fm.run(chunk, &acc, nullptr);
    cal.tokens += o.n_ctx;
    ++cal.chunks;
  }
  if (cal.tokens == 0) throw Error("calibration: no tokens");
  auto put = [&](const std::string& name, const std::string& from) {
    const auto& a = acc.at(from);
    std::vector<float> v(a.size());
    for (size_t j = 0; j < a.size(); ++j) v[j] = float(a[j] / double(cal.tokens));
    cal.importance[name] = std::move(v);
  };
  const auto& c = src.config;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    for (const char* t : {"attn_q", "attn_k", "attn_v"}) put(p + t, p + "attn_in");
    put(p + "attn_output", p + "attn_output");
    for (const char* t : {"ffn_gate", "ffn_up"}) put(p + t, p + "ffn_in");
    put(p + "ffn_down", p + "ffn_down");
  }
  put(c.tied_embeddings ? "token_embd" : "output", "output");
  return cal;
}

}  // namespace kmq
