// write_synthetic_model(): a .kmq file of real shapes and random weights (see synthetic.h).
//
// What a quantized tensor holds, for weights of standard deviation sigma (0.02, about
// Llama 3's):
//   indices:   uniformly random bits (each b-bit field is a valid index; padding bits 0);
//   codebooks: the 2^b conditional means of N(0, 1) over equiprobable bins (the k-means
//              optimum for a Gaussian when every index is equally likely), times the
//              spread of the values the codebook sees (w / scale: 1 / E[max|z|] of a block
//              for absmax, clamped to [-1, 1]; 1 / E|z| for absmean; sigma without
//              scales), with a random gain in [0.9, 1.1] and offset per codebook;
//   scales:    sigma * E[max|z|] (absmax) or sigma * E|z| (absmean), times a random
//              factor in [0.75, 1.25).
// Every random value comes from a splitmix64 stream keyed by (seed, tensor, row), so the
// file does not depend on the thread count.
#include "convert/synthetic.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numbers>
#include <nlohmann/json.hpp>

#include "kmq/error.h"
#include "kmq/kmq_file.h"
#include "util/half.h"
#include "util/thread_pool.h"

namespace kmq {
namespace {

// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for weights.
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1p-53; }  // [0, 1)
  double normal() {  // Box-Muller, one value per call (simple; float tensors are few)
    const double u = 1.0 - uniform(), v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * std::numbers::pi * v);
  }
};

// The stream of one (tensor, row): distinct keys give unrelated streams.
SplitMix stream(uint64_t seed, uint64_t tensor, uint64_t row) {
  SplitMix m{seed};
  SplitMix a{m.next() ^ (tensor * 0xd1b54a32d192ed03ull)};
  return SplitMix{a.next() ^ (row * 0x8cb92ba72f3d8dd7ull)};
}
constexpr uint64_t kTensorCodebookRow = ~uint64_t(0);  // the stream of a per-tensor codebook

double norm_pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * std::numbers::pi); }
double norm_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
double norm_ppf(double p) {  // bisection: exact enough, and called a few dozen times
  double lo = -40, hi = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (norm_cdf(mid) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

// E[Z | Z in bin i] for the k equiprobable bins of N(0, 1), ascending.
std::vector<double> gaussian_levels(int k) {
  std::vector<double> pdf_at(k + 1, 0.0);  // pdf at the bin edges; 0 at +-infinity
  for (int i = 1; i < k; ++i) pdf_at[i] = norm_pdf(norm_ppf(double(i) / k));
  std::vector<double> levels(k);
  for (int i = 0; i < k; ++i) levels[i] = double(k) * (pdf_at[i] - pdf_at[i + 1]);
  return levels;
}

// Median of max |z| over n standard normals: what an absmax scale divides by.
double expected_absmax(int64_t n) { return norm_ppf(1.0 - 0.5 / double(n + 1)); }
constexpr double kMeanAbsNormal = 0.7978845608028654;  // E|z| = sqrt(2 / pi)

float round_to(DType t, double v) {
  return t == DType::kF16 ? round_f16(float(v)) : t == DType::kBF16 ? round_bf16(float(v)) : float(v);
}

// Same words as the real converter's per-tensor report (convert.cpp).
std::string scheme_of(const TensorChoice& c) {
  if (c.dtype != DType::kKmq) return std::string(dtype_name(c.dtype));
  const auto& q = c.quant;
  std::string s = fmt::format("q{} {}", q.bits, scope_name(q.scope));
  if (q.scope == CodebookScope::kGroup) s += fmt::format("{}", q.group_size);
  if (q.scale_block > 0) s += fmt::format(" sb{} {}", q.scale_block, scale_mode_name(q.scale_mode));
  return s;
}

struct QuantPlan {
  std::vector<double> levels;  // unit Gaussian levels
  double spread = 1, scale_base = 0;
  bool clamp = false;  // absmax: w / scale lies in [-1, 1]
};

QuantPlan plan_for(const QuantSpec& q, double sigma) {
  QuantPlan p;
  p.levels = gaussian_levels(1 << q.bits);
  if (q.scale_block == 0) {
    p.spread = sigma;
  } else if (q.scale_mode == ScaleMode::kAbsMean) {
    p.spread = 1.0 / kMeanAbsNormal;
    p.scale_base = sigma * kMeanAbsNormal;
  } else {
    const double m = expected_absmax(q.scale_block);
    p.spread = 1.0 / m;
    p.scale_base = sigma * m;
    p.clamp = true;
  }
  return p;
}

void fill_codebook(const QuantPlan& p, DType dtype, SplitMix& rng, float* out) {
  const double gain = p.spread * (0.9 + 0.2 * rng.uniform());
  const double offset = p.spread * 0.02 * (2.0 * rng.uniform() - 1.0);
  for (size_t i = 0; i < p.levels.size(); ++i) {  // monotone in i, so sorted
    double v = gain * p.levels[i] + offset;
    if (p.clamp) v = std::clamp(v, -1.0, 1.0);
    out[i] = round_to(dtype, v);
  }
}

QuantizedTensor random_quantized(const QuantSpec& spec, int64_t rows, int64_t cols, double sigma, uint64_t seed,
                                 uint64_t tensor_index, ThreadPool& pool) {
  QuantizedTensor q;
  q.bits = spec.bits;
  q.scope = spec.scope;
  q.group_size = spec.scope == CodebookScope::kGroup ? spec.group_size : 0;
  q.scale_block = spec.scale_block;
  q.rows = rows;
  q.cols = cols;
  q.codebook_dtype = spec.codebook_dtype;
  q.scale_dtype = spec.scale_dtype;
  const int k = 1 << spec.bits;
  const int64_t rb = q.row_bytes(), n_sb = q.n_scale_blocks();
  const int64_t cb_per_row = spec.scope == CodebookScope::kGroup ? (cols + spec.group_size - 1) / spec.group_size
                             : spec.scope == CodebookScope::kRow ? 1
                                                                 : 0;
  q.indices.resize(size_t(rows * rb));
  q.codebooks.resize(size_t(q.n_codebooks() * k));
  q.scales.resize(size_t(rows * n_sb));
  const QuantPlan plan = plan_for(spec, sigma);
  if (spec.scope == CodebookScope::kTensor) {
    SplitMix rng = stream(seed, tensor_index, kTensorCodebookRow);
    fill_codebook(plan, spec.codebook_dtype, rng, q.codebooks.data());
  }
  const int tail_bits = int((cols * spec.bits) % 8);
  const uint8_t tail_mask = tail_bits ? uint8_t((1u << tail_bits) - 1) : 0xff;
  constexpr int64_t kRowsPerTask = 64;
  pool.run((rows + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task, int) {
    const int64_t r1 = std::min(rows, (task + 1) * kRowsPerTask);
    for (int64_t r = task * kRowsPerTask; r < r1; ++r) {
      SplitMix rng = stream(seed, tensor_index, uint64_t(r));
      uint8_t* idx = q.indices.data() + r * rb;
      int64_t j = 0;
      for (; j + 8 <= rb; j += 8) {
        const uint64_t v = rng.next();
        std::memcpy(idx + j, &v, 8);
      }
      if (j < rb) {
        const uint64_t v = rng.next();
        std::memcpy(idx + j, &v, size_t(rb - j));
      }
      idx[rb - 1] &= tail_mask;  // padding bits are zero, as pack_indices writes them
      for (int64_t s = 0; s < n_sb; ++s) {
        const float v = round_to(spec.scale_dtype, plan.scale_base * (0.75 + 0.5 * rng.uniform()));
        q.scales[size_t(r * n_sb + s)] = v > 0 ? v : round_to(spec.scale_dtype, plan.scale_base);
      }
      for (int64_t c = 0; c < cb_per_row; ++c)
        fill_codebook(plan, spec.codebook_dtype, rng, q.codebooks.data() + (r * cb_per_row + c) * k);
    }
  });
  return q;
}

// rows x cols Gaussian values (sigma), or `constant` everywhere when sigma = 0.
std::vector<float> random_floats(int64_t rows, int64_t cols, double sigma, float constant, uint64_t seed,
                                 uint64_t tensor_index, ThreadPool& pool) {
  std::vector<float> v(size_t(rows * cols), constant);
  if (sigma == 0) return v;
  constexpr int64_t kRowsPerTask = 64;
  pool.run((rows + kRowsPerTask - 1) / kRowsPerTask, [&](int64_t task, int) {
    const int64_t r1 = std::min(rows, (task + 1) * kRowsPerTask);
    for (int64_t r = task * kRowsPerTask; r < r1; ++r) {
      SplitMix rng = stream(seed, tensor_index, uint64_t(r));
      for (int64_t j = 0; j < cols; ++j) v[size_t(r * cols + j)] = float(sigma * rng.normal());
    }
  });
  return v;
}

ModelConfig llama3_config(const std::string& name, int64_t dim, int64_t layers, int64_t heads, int64_t kv_heads,
                          int64_t head_dim, int64_t ffn, bool tied, float rope_factor) {
  ModelConfig c;
  c.n_vocab = 128256;
  c.dim = dim;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.ffn_dim = ffn;
  c.max_seq = 8192;  // trained: 131072; 8192 keeps a default session's KV cache small
  c.norm_eps = 1e-5f;
  c.rope_theta = 500000.0f;
  c.rope_scaling = RopeScaling{"llama3", rope_factor, 1.0f, 4.0f, 8192};
  c.tied_embeddings = tied;
  c.bos_id = 128000;  // <|begin_of_text|>
  c.eos_id = 128001;  // <|end_of_text|>
  c.name = "synthetic " + name;
  return c;
}

}  // namespace

const std::vector<SyntheticPreset>& synthetic_presets() {
  static const std::vector<SyntheticPreset> kPresets = [] {
    std::vector<SyntheticPreset> p;
    ModelConfig tiny = llama3_config("tiny", 256, 2, 8, 4, 32, 768, false, 32.0f);
    tiny.n_vocab = 512;
    tiny.max_seq = 512;
    tiny.bos_id = 256;
    tiny.eos_id = 257;
    p.push_back({"tiny", "for tests: dim 256, 2 layers, 8 heads (4 kv), ffn 768, vocab 512, untied, ctx 512", tiny});
    p.push_back({"llama-3.2-1b", "Llama 3.2 1B shapes: dim 2048, 16 layers, 32 heads (8 kv), ffn 8192, vocab 128256, tied",
                 llama3_config("llama-3.2-1b", 2048, 16, 32, 8, 64, 8192, true, 32.0f)});
    p.push_back({"llama-3.2-3b", "Llama 3.2 3B shapes: dim 3072, 28 layers, 24 heads (8 kv), ffn 8192, vocab 128256, tied",
                 llama3_config("llama-3.2-3b", 3072, 28, 24, 8, 128, 8192, true, 32.0f)});
    p.push_back({"llama-3.1-8b", "Llama 3.1 8B shapes: dim 4096, 32 layers, 32 heads (8 kv), ffn 14336, vocab 128256, untied",
                 llama3_config("llama-3.1-8b", 4096, 32, 32, 8, 128, 14336, false, 8.0f)});
    return p;
  }();
  return kPresets;
}

const SyntheticPreset& find_synthetic_preset(const std::string& name) {
  std::string known;
  for (const auto& p : synthetic_presets()) {
    if (p.name == name) return p;
    known += (known.empty() ? "" : ", ") + p.name;
  }
  throw Error(fmt::format("unknown synthetic preset '{}' (known: {})", name, known));
}

TokenizerData synthetic_tokenizer(const ModelConfig& c) {
  if (c.n_vocab < 258 || c.bos_id < 256 || c.eos_id < 256 || c.bos_id == c.eos_id)
    throw Error(fmt::format("synthetic tokenizer: needs n_vocab >= 258 and BOS/EOS ids >= 256 (got {}, {}/{})",
                            c.n_vocab, c.bos_id, c.eos_id));
  TokenizerData d;
  d.kind = TokenizerKind::kBpe;
  d.pre_tokenizer = "llama3";
  d.tokens.resize(size_t(c.n_vocab));
  d.types.resize(size_t(c.n_vocab));
  const int64_t last_special = std::max(c.bos_id, c.eos_id);
  for (int64_t i = 0; i < c.n_vocab; ++i) {
    if (i < 256) {
      d.tokens[i] = std::string(1, char(i));
      d.types[i] = TokenType::kNormal;
    } else if (i == c.bos_id) {
      d.tokens[i] = "<|begin_of_text|>";
      d.types[i] = TokenType::kControl;
    } else if (i == c.eos_id) {
      d.tokens[i] = "<|end_of_text|>";
      d.types[i] = TokenType::kControl;
    } else if (i > last_special) {
      d.tokens[i] = fmt::format("<|reserved_special_token_{}|>", i - last_special - 1);
      d.types[i] = TokenType::kControl;
    } else {
      d.tokens[i] = fmt::format("<|filler_{}|>", i);
      d.types[i] = TokenType::kUnused;
    }
  }
  d.bos_id = int32_t(c.bos_id);
  d.eos_id = int32_t(c.eos_id);
  d.add_bos = true;
  d.add_dummy_prefix = false;
  d.byte_fallback = false;
  return d;
}

std::vector<SourceTensor> synthetic_tensors(const ModelConfig& c) {
  std::vector<SourceTensor> t;
  auto add = [&](std::string name, std::vector<int64_t> shape) { t.push_back({std::move(name), std::move(shape), DType::kF32, {}, {}}); };
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  add("token_embd", {c.n_vocab, c.dim});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    add(p + "attn_norm", {c.dim});
    add(p + "attn_q", {q_dim, c.dim});
    add(p + "attn_k", {kv_dim, c.dim});
    add(p + "attn_v", {kv_dim, c.dim});
    if (c.attn_qkv_bias) {
      add(p + "attn_q.bias", {q_dim});
      add(p + "attn_k.bias", {kv_dim});
      add(p + "attn_v.bias", {kv_dim});
    }
    add(p + "attn_output", {c.dim, q_dim});
    add(p + "ffn_norm", {c.dim});
    add(p + "ffn_gate", {c.ffn_dim, c.dim});
    add(p + "ffn_up", {c.ffn_dim, c.dim});
    add(p + "ffn_down", {c.dim, c.ffn_dim});
  }
  add("output_norm", {c.dim});
  if (!c.tied_embeddings) add("output", {c.n_vocab, c.dim});
  return t;
}

ConvertReport write_synthetic_model(const SyntheticOptions& s, const std::filesystem::path& out,
                                    const ConvertOptions& o, const ConvertProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const SyntheticPreset& preset = find_synthetic_preset(s.preset);
  ModelConfig config = preset.config;
  if (s.max_seq > 0) config.max_seq = s.max_seq;
  config.name += fmt::format(" (random weights, seed {})", s.seed);
  const std::vector<SourceTensor> tensors = synthetic_tensors(config);
  ThreadPool pool(std::max(1, o.threads));
  ConvertReport rep;
  KmqWriter w(out, config, synthetic_tokenizer(config));
  nlohmann::json per_tensor = nlohmann::json::object();
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (o.cancel && o.cancel->load()) throw Error("conversion cancelled; no output written");
    const SourceTensor& t = tensors[i];
    const TensorChoice c = choose_tensor(t, o);
    const int64_t rows = t.shape[0], cols = t.shape.size() == 2 ? t.shape[1] : 1;
    const uint64_t n = uint64_t(rows * cols);
    TensorReport tr;
    tr.name = t.name;
    tr.shape = t.shape;
    tr.scheme = scheme_of(c);
    if (c.dtype == DType::kKmq) {
      const QuantizedTensor q = random_quantized(c.quant, rows, cols, s.weight_std, s.seed, i, pool);
      tr.bits_per_weight = q.bits_per_weight();
      w.add_quantized(t.name, q);
      rep.n_quant_weights += n;
      rep.quant_bits += tr.bits_per_weight * double(n);
    } else {
      const bool is_norm = t.shape.size() == 1 && t.name.find(".bias") == std::string::npos;
      const bool is_bias = t.shape.size() == 1 && !is_norm;
      const std::vector<float> v =
          random_floats(rows, cols, t.shape.size() == 2 ? s.weight_std : 0.0, is_bias ? 0.0f : 1.0f, s.seed, i, pool);
      tr.bits_per_weight = 8.0 * double(dtype_size(c.dtype));
      w.add_float(t.name, c.dtype, t.shape, v.data());
    }
    tr.bytes = uint64_t(tr.bits_per_weight * double(n) / 8.0 + 0.5);
    rep.n_weights += n;
    rep.total_bits += tr.bits_per_weight * double(n);
    per_tensor[t.name] = {{"scheme", tr.scheme}};
    rep.tensors.push_back(tr);
    if (progress) progress(i, tensors.size(), tr);
  }
  nlohmann::json notes;
  notes["source"] = fmt::format("synthetic preset {} (random weights, seed {})", preset.name, s.seed);
  notes["converter"] = "kmq-convert --synthetic";
  notes["synthetic"] = {{"preset", preset.name}, {"seed", s.seed}, {"weight_std", s.weight_std}};
  notes["tensors"] = per_tensor;
  w.set_notes_json(notes.dump());
  if (o.cancel && o.cancel->load()) throw Error("conversion cancelled; no output written");
  w.finish();
  rep.file_bytes = std::filesystem::file_size(out);
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace kmq
