// The forward pass against an independent, naive double-precision Llama written here,
// on tiny random models that exercise what the shared checkpoints do not: untied output,
// Qwen2-style q/k/v biases, Mistral's sliding window, Llama-3 and linear RoPE scaling.
// Also: batched evaluation equals token-by-token, and shape errors name the tensor.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <map>
#include <numbers>

#include "kmq/error.h"
#include "kmq/kmq_file.h"
#include "kmq/model.h"
#include "test_util.h"

using namespace kmq;

namespace {

using Mat = std::vector<float>;

struct TinyModel {
  ModelConfig c;
  std::map<std::string, Mat> w;
  std::map<std::string, std::vector<int64_t>> shape;
};

TinyModel make_tiny(bool tied, bool bias, int64_t window, const std::string& rope) {
  TinyModel m;
  auto& c = m.c;
  c.n_vocab = 40;
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.ffn_dim = 48;
  c.max_seq = 64;
  c.sliding_window = window;
  c.tied_embeddings = tied;
  c.attn_qkv_bias = bias;
  c.rope_theta = 500.0f;
  c.rope_scaling.type = rope;
  c.rope_scaling.factor = 4;
  c.rope_scaling.low_freq_factor = 1;
  c.rope_scaling.high_freq_factor = 4;
  c.rope_scaling.original_max_position = 16;
  c.bos_id = 1;
  c.eos_id = 2;
  uint64_t seed = 7;
  auto add = [&](const std::string& n, std::vector<int64_t> s, float scale, float offset = 0) {
    int64_t k = 1;
    for (auto d : s) k *= d;
    auto v = test::random_floats(size_t(k), seed++, scale);
    for (auto& x : v) x += offset;
    m.w[n] = v;
    m.shape[n] = s;
  };
  const int64_t q = c.n_heads * c.head_dim, kv = c.n_kv_heads * c.head_dim;
  add("token_embd", {c.n_vocab, c.dim}, 1.0f);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    add(p + "attn_norm", {c.dim}, 0.1f, 1.0f);
    add(p + "attn_q", {q, c.dim}, 0.3f);
    add(p + "attn_k", {kv, c.dim}, 0.3f);
    add(p + "attn_v", {kv, c.dim}, 0.3f);
    if (bias) {
      add(p + "attn_q.bias", {q}, 0.2f);
      add(p + "attn_k.bias", {kv}, 0.2f);
      add(p + "attn_v.bias", {kv}, 0.2f);
    }
    add(p + "attn_output", {c.dim, q}, 0.2f);
    add(p + "ffn_norm", {c.dim}, 0.1f, 1.0f);
    add(p + "ffn_gate", {c.ffn_dim, c.dim}, 0.2f);
    add(p + "ffn_up", {c.ffn_dim, c.dim}, 0.2f);
    add(p + "ffn_down", {c.dim, c.ffn_dim}, 0.2f);
  }
  add("output_norm", {c.dim}, 0.1f, 1.0f);
  if (!tied) add("output", {c.n_vocab, c.dim}, 0.3f);
  return m;
}

TokenizerData byte_tokenizer(int n) {
  TokenizerData t;
  t.kind = TokenizerKind::kBpe;
  for (int i = 0; i < n; ++i) {
    t.tokens.push_back(std::string(1, char('a' + i % 26)) + std::to_string(i));
    t.types.push_back(TokenType::kNormal);
  }
  t.pre_tokenizer = "gpt2";
  t.bos_id = 1;
  t.eos_id = 2;
  return t;
}

std::filesystem::path write_tiny(const TinyModel& m, const std::string& name) {
  auto path = test::temp_path(name);
  std::filesystem::remove(path);
  KmqWriter w(path, m.c, byte_tokenizer(int(m.c.n_vocab)));
  for (const auto& [n, v] : m.w) w.add_float(n, DType::kF32, m.shape.at(n), v.data());
  w.finish();
  return path;
}

// Naive double-precision reference: logits of the last token of `ids`.
std::vector<double> reference_logits(const TinyModel& m, const std::vector<int32_t>& ids) {
  const auto& c = m.c;
  const int64_t n = int64_t(ids.size()), hd = c.head_dim, half = hd / 2;
  const int64_t qd = c.n_heads * hd, kvd = c.n_kv_heads * hd;
  auto W = [&](const std::string& s) -> const Mat& { return m.w.at(s); };
  auto matvec = [](const Mat& w, const std::vector<double>& x, int64_t rows) {
    std::vector<double> y(static_cast<size_t>(rows), 0.0);
    const int64_t cols = int64_t(x.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < cols; ++j) y[size_t(r)] += double(w[size_t(r * cols + j)]) * x[size_t(j)];
    return y;
  };
  auto norm = [&](const std::vector<double>& x, const Mat& g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1 / std::sqrt(ss / double(x.size()) + c.norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
    return y;
  };
  // frequencies: the HF formulas, in double
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(double(c.rope_theta), double(2 * i) / double(hd));
    const auto& rs = c.rope_scaling;
    if (rs.type == "linear") f /= rs.factor;
    if (rs.type == "llama3") {
      const double wl = 2 * std::numbers::pi / f, lo = rs.original_max_position / rs.low_freq_factor,
                   hi = rs.original_max_position / rs.high_freq_factor;
      if (wl > lo) f /= rs.factor;
      else if (wl >= hi) {
        const double s = (rs.original_max_position / wl - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1 - s) * f / rs.factor + s * f;
      }
    }
    inv_freq[size_t(i)] = f;
  }
  auto rope = [&](std::vector<double>& v, int64_t heads, int64_t pos) {
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const double a = v[size_t(h * hd + i)], b = v[size_t(h * hd + half + i)];
        const double ang = double(pos) * inv_freq[size_t(i)];
        v[size_t(h * hd + i)] = a * std::cos(ang) - b * std::sin(ang);
        v[size_t(h * hd + half + i)] = b * std::cos(ang) + a * std::sin(ang);
      }
  };
  std::vector<std::vector<double>> x(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t)
    x[size_t(t)] = std::vector<double>(W("token_embd").begin() + ids[size_t(t)] * c.dim,
                                       W("token_embd").begin() + (ids[size_t(t)] + 1) * c.dim);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    std::vector<std::vector<double>> q(static_cast<size_t>(n)), k(static_cast<size_t>(n)), v(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      auto xn = norm(x[size_t(t)], W(p + "attn_norm"));
      q[size_t(t)] = matvec(W(p + "attn_q"), xn, qd);
      k[size_t(t)] = matvec(W(p + "attn_k"), xn, kvd);
      v[size_t(t)] = matvec(W(p + "attn_v"), xn, kvd);
      if (c.attn_qkv_bias) {
        for (int64_t i = 0; i < qd; ++i) q[size_t(t)][size_t(i)] += W(p + "attn_q.bias")[size_t(i)];
        for (int64_t i = 0; i < kvd; ++i) k[size_t(t)][size_t(i)] += W(p + "attn_k.bias")[size_t(i)];
        for (int64_t i = 0; i < kvd; ++i) v[size_t(t)][size_t(i)] += W(p + "attn_v.bias")[size_t(i)];
      }
      rope(q[size_t(t)], c.n_heads, t);
      rope(k[size_t(t)], c.n_kv_heads, t);
    }
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> att(static_cast<size_t>(qd), 0.0);
      for (int64_t h = 0; h < c.n_heads; ++h) {
        const int64_t g = h / (c.n_heads / c.n_kv_heads);
        const int64_t s0 = c.sliding_window ? std::max<int64_t>(0, t - c.sliding_window + 1) : 0;
        std::vector<double> sc;
        for (int64_t s = s0; s <= t; ++s) {
          double d = 0;
          for (int64_t i = 0; i < hd; ++i) d += q[size_t(t)][size_t(h * hd + i)] * k[size_t(s)][size_t(g * hd + i)];
          sc.push_back(d / std::sqrt(double(hd)));
        }
        double mx = *std::max_element(sc.begin(), sc.end()), z = 0;
        for (auto& e : sc) z += (e = std::exp(e - mx));
        for (int64_t s = s0; s <= t; ++s)
          for (int64_t i = 0; i < hd; ++i)
            att[size_t(h * hd + i)] += sc[size_t(s - s0)] / z * v[size_t(s)][size_t(g * hd + i)];
      }
      auto o = matvec(W(p + "attn_output"), att, c.dim);
      for (int64_t i = 0; i < c.dim; ++i) x[size_t(t)][size_t(i)] += o[size_t(i)];
      auto xn = norm(x[size_t(t)], W(p + "ffn_norm"));
      auto gt = matvec(W(p + "ffn_gate"), xn, c.ffn_dim), up = matvec(W(p + "ffn_up"), xn, c.ffn_dim);
      for (int64_t i = 0; i < c.ffn_dim; ++i) gt[size_t(i)] = gt[size_t(i)] / (1 + std::exp(-gt[size_t(i)])) * up[size_t(i)];
      auto d = matvec(W(p + "ffn_down"), gt, c.dim);
      for (int64_t i = 0; i < c.dim; ++i) x[size_t(t)][size_t(i)] += d[size_t(i)];
    }
  }
  auto xn = norm(x.back(), W("output_norm"));
  return matvec(c.tied_embeddings ? W("token_embd") : W("output"), xn, c.n_vocab);
}

}  // namespace

TEST_CASE("model: forward pass equals a naive reference for every architecture variant") {
  struct Variant {
    bool tied, bias;
    int64_t window;
    const char* rope;
  };
  for (Variant v : {Variant{true, false, 0, "none"}, Variant{false, false, 0, "none"}, Variant{false, true, 0, "none"},
                    Variant{true, false, 5, "none"}, Variant{false, false, 0, "llama3"}, Variant{true, true, 0, "linear"}}) {
    CAPTURE(v.tied);
    CAPTURE(v.bias);
    CAPTURE(v.window);
    CAPTURE(v.rope);
    auto tiny = make_tiny(v.tied, v.bias, v.window, v.rope);
    auto path = write_tiny(tiny, "tiny.kmq");
    for (int threads : {1, 2}) {
      auto model = Model::load(path, ModelOptions{"cpu", threads});
      std::vector<int32_t> ids;
      for (int i = 0; i < 30; ++i) ids.push_back(int32_t((i * 7 + 3) % 40));
      // all at once
      auto s = model->new_session();
      std::vector<float> all;
      s->eval(ids, &all, 3);
      // one at a time through the cache, and in uneven pieces
      auto s2 = model->new_session();
      std::vector<float> one;
      for (size_t i = 0; i < ids.size(); ++i) s2->eval({ids[i]}, &one, 1);
      auto s3 = model->new_session();
      std::vector<float> piece;
      s3->eval(std::vector<int32_t>(ids.begin(), ids.begin() + 11), &piece, 1);
      s3->eval(std::vector<int32_t>(ids.begin() + 11, ids.end()), &piece, 1);
      auto ref = reference_logits(tiny, ids);
      for (int64_t i = 0; i < 40; ++i) {
        CHECK(all[size_t(2 * 40 + i)] == doctest::Approx(ref[size_t(i)]).epsilon(1e-4).scale(1));
        CHECK(one[size_t(i)] == doctest::Approx(ref[size_t(i)]).epsilon(1e-4).scale(1));
        CHECK(piece[size_t(i)] == doctest::Approx(ref[size_t(i)]).epsilon(1e-4).scale(1));
      }
      // the second-to-last row of `all` is the logits after ids[:-1]
      auto ref2 = reference_logits(tiny, std::vector<int32_t>(ids.begin(), ids.end() - 1));
      for (int64_t i = 0; i < 40; ++i) CHECK(all[size_t(40 + i)] == doctest::Approx(ref2[size_t(i)]).epsilon(1e-4).scale(1));
    }
  }
}

TEST_CASE("model: bad shapes, missing tensors and overflowing contexts are refused") {
  auto tiny = make_tiny(true, false, 0, "none");
  SUBCASE("a tensor whose shape disagrees with the config") {
    auto t = tiny;
    t.shape["blk.1.ffn_up"] = {47, 32};
    t.w["blk.1.ffn_up"].resize(47 * 32);
    auto path = write_tiny(t, "shape.kmq");
    CHECK_THROWS_WITH_AS(Model::load(path), doctest::Contains("tensor 'blk.1.ffn_up' has shape [47, 32], the config needs [48, 32]"), Error);
  }
  SUBCASE("a missing tensor") {
    auto t = tiny;
    t.w.erase("blk.0.attn_k");
    auto path = write_tiny(t, "missing.kmq");
    CHECK_THROWS_WITH_AS(Model::load(path), doctest::Contains("tensor 'blk.0.attn_k' is missing"), Error);
  }
  SUBCASE("the context") {
    auto model = Model::load(write_tiny(tiny, "ctx.kmq"));
    CHECK_THROWS_WITH_AS(model->new_session(65), doctest::Contains("exceeds"), Error);
    auto s = model->new_session(8);
    std::vector<float> lg;
    s->eval({1, 2, 3, 4, 5}, &lg, 1);
    CHECK_THROWS_WITH_AS(s->eval({1, 2, 3, 4}, &lg, 1), doctest::Contains("do not fit"), Error);
    CHECK_THROWS_WITH_AS(s->eval({99}, &lg, 1), doctest::Contains("outside the vocabulary"), Error);
  }
  SUBCASE("an unknown device") {
    CHECK_THROWS_WITH_AS(Model::load(write_tiny(tiny, "dev.kmq"), ModelOptions{"tpu", 1}), doctest::Contains("unknown device 'tpu'"), Error);
  }
}
