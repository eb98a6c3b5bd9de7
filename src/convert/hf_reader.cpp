// open_hf_dir: a Hugging Face Llama/Mistral/Qwen2 directory as a SourceModel. Maps HF
// tensor names to kmq names and checks that every tensor is present with its shape.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "convert/hf_config.h"
#include "convert/safetensors.h"
#include "convert/source.h"
#include "kmq/error.h"

namespace kmq {
namespace {

namespace fs = std::filesystem;

struct Expected {
  std::string hf;
  std::string kmq;
  std::vector<int64_t> shape;
};

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

// Every tensor the model needs, in SourceModel order. `output` is appended by the caller.
std::vector<Expected> expected_tensors(const ModelConfig& c) {
  const int64_t q_dim = c.n_heads * c.head_dim;
  const int64_t kv_dim = c.n_kv_heads * c.head_dim;
  std::vector<Expected> v;
  v.push_back({"model.embed_tokens.weight", "token_embd", {c.n_vocab, c.dim}});
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string hf = fmt::format("model.layers.{}.", i);
    const std::string k = fmt::format("blk.{}.", i);
    v.push_back({hf + "input_layernorm.weight", k + "attn_norm", {c.dim}});
    v.push_back({hf + "self_attn.q_proj.weight", k + "attn_q", {q_dim, c.dim}});
    v.push_back({hf + "self_attn.k_proj.weight", k + "attn_k", {kv_dim, c.dim}});
    v.push_back({hf + "self_attn.v_proj.weight", k + "attn_v", {kv_dim, c.dim}});
    if (c.attn_qkv_bias) {
      v.push_back({hf + "self_attn.q_proj.bias", k + "attn_q.bias", {q_dim}});
      v.push_back({hf + "self_attn.k_proj.bias", k + "attn_k.bias", {kv_dim}});
      v.push_back({hf + "self_attn.v_proj.bias", k + "attn_v.bias", {kv_dim}});
    }
    v.push_back({hf + "self_attn.o_proj.weight", k + "attn_output", {c.dim, q_dim}});
    v.push_back({hf + "post_attention_layernorm.weight", k + "ffn_norm", {c.dim}});
    v.push_back({hf + "mlp.gate_proj.weight", k + "ffn_gate", {c.ffn_dim, c.dim}});
    v.push_back({hf + "mlp.up_proj.weight", k + "ffn_up", {c.ffn_dim, c.dim}});
    v.push_back({hf + "mlp.down_proj.weight", k + "ffn_down", {c.dim, c.ffn_dim}});
  }
  v.push_back({"model.norm.weight", "output_norm", {c.dim}});
  return v;
}

// Tensors HF checkpoints may carry that the model does not use.
bool ignorable(const std::string& name) { return name.ends_with(".rotary_emb.inv_freq"); }

std::string dtype_summary(const std::set<DType>& ds) {
  std::vector<std::string_view> names;
  for (DType d : ds) names.push_back(dtype_name(d));
  return fmt::format("{}", fmt::join(names, "/"));
}

// A linear layer stored in the 1-Bit Wonder QAT export layout, in place of NAME.weight:
//   NAME.weight_packed  U8   [out, in*b/8]  b-bit indices, most significant bits first
//   NAME.scales         BF16 [out, in/64]   one scale per 64 weights along the input
//   NAME.centroids      F32  [2^b]          the layer's codebook
// w[r][j] = centroids[idx[r][j]] * scales[r][j/64]: exactly kmq's per-tensor codebook with
// 64-weight bf16 block scales. The codebook is sorted (indices remapped), the indices
// repacked least-significant-bit first. Every shape and value is checked first.
QuantizedTensor load_1bw(const std::string& where, const std::string& hf, const std::vector<int64_t>& shape,
                         const SafetensorsSet::Entry& packed, const SafetensorsSet::Entry& scales,
                         const SafetensorsSet::Entry& centroids) {
  auto fail = [&](const std::string& m) { throw Error(fmt::format("{}: '{}' (1-Bit Wonder layout): {}", where, hf, m)); };
  const int64_t rows = shape[0], cols = shape[1];
  const auto& ci = *centroids.info;
  if (ci.u8 || ci.dtype != DType::kF32 || ci.shape.size() != 1) fail("centroids must be a 1-D F32 tensor");
  const int64_t k = ci.shape[0];
  const int bits = k == 2 ? 1 : k == 4 ? 2 : k == 8 ? 3 : k == 16 ? 4 : 0;
  if (!bits) fail(fmt::format("{} centroids: expected 2, 4, 8 or 16", k));
  constexpr int64_t kBlock = 64;
  if (cols % kBlock) fail(fmt::format("in_features {} is not a multiple of 64", cols));
  const int64_t row_bytes = cols * bits / 8;
  const auto& pi = *packed.info;
  if (!pi.u8 || pi.shape != std::vector<int64_t>{rows, row_bytes})
    fail(fmt::format("weight_packed must be U8 [{}, {}]", rows, row_bytes));
  const auto& si = *scales.info;
  if (si.u8 || (si.dtype != DType::kBF16 && si.dtype != DType::kF16) ||
      si.shape != std::vector<int64_t>{rows, cols / kBlock})
    fail(fmt::format("scales must be BF16 (or F16) [{}, {}]", rows, cols / kBlock));
  std::vector<float> cb = centroids.file->load_f32(ci);
  for (float c : cb)
    if (!std::isfinite(c)) fail("a centroid is not finite");
  std::vector<float> sc = scales.file->load_f32(si);
  for (float v : sc)
    if (!std::isfinite(v)) fail("a scale is not finite");
  // Sort the codebook; perm[old index] = new index.
  std::vector<int> order(static_cast<size_t>(k));
  for (int i = 0; i < int(k); ++i) order[size_t(i)] = i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return cb[size_t(a)] < cb[size_t(b)]; });
  std::vector<uint8_t> perm(static_cast<size_t>(k));
  QuantizedTensor q;
  q.bits = bits;
  q.scope = CodebookScope::kTensor;
  q.scale_block = kBlock;
  q.rows = rows;
  q.cols = cols;
  q.codebook_dtype = DType::kF32;
  q.scale_dtype = si.dtype;
  for (int i = 0; i < int(k); ++i) {
    perm[size_t(order[size_t(i)])] = uint8_t(i);
    q.codebooks.push_back(cb[size_t(order[size_t(i)])]);
  }
  q.scales = std::move(sc);
  q.indices.assign(size_t(rows * q.row_bytes()), 0);
  const auto src = packed.file->bytes(pi);
  std::vector<uint8_t> idx(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = src.data() + r * row_bytes;
    for (int64_t j = 0; j < cols; ++j) {
      unsigned v = 0;
      for (int64_t bit = j * bits; bit < (j + 1) * bits; ++bit) v = (v << 1) | ((row[bit / 8] >> (7 - bit % 8)) & 1u);
      idx[size_t(j)] = perm[v];
    }
    pack_indices(idx.data(), cols, bits, q.indices.data() + r * q.row_bytes());
  }
  return q;
}

}  // namespace

SourceModel open_hf_dir(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw Error(dir.string() + ": not a directory (expected a Hugging Face model folder)");
  HfConfig hf = read_hf_config(dir / "config.json");
  ModelConfig& c = hf.model;

  SafetensorsSet weights(dir);
  const std::string where = weights.source().string();

  // Tied when the file says so, or when there is no lm_head.weight to use instead.
  const bool has_lm_head = weights.find("lm_head.weight") != nullptr;
  bool tied_by_absence = false;
  if (!c.tied_embeddings && !has_lm_head) {
    c.tied_embeddings = true;
    tied_by_absence = true;
  }

  std::vector<Expected> expected = expected_tensors(c);
  if (!c.tied_embeddings) expected.push_back({"lm_head.weight", "output", {c.n_vocab, c.dim}});

  std::set<std::string> used;
  std::set<DType> dtypes;
  SourceModel m;
  for (const auto& e : expected) {
    const SafetensorsSet::Entry* ent = weights.find(e.hf);
    if (!ent && e.hf.ends_with(".weight") && e.shape.size() == 2) {
      const std::string base = e.hf.substr(0, e.hf.size() - 7);
      const auto *p = weights.find(base + ".weight_packed"), *sc = weights.find(base + ".scales"),
                 *cb = weights.find(base + ".centroids");
      if (p && sc && cb) {
        for (const char* suffix : {".weight_packed", ".scales", ".centroids"}) used.insert(base + suffix);
        SourceTensor t;
        t.name = e.kmq;
        t.shape = e.shape;
        t.src_dtype = DType::kKmq;
        dtypes.insert(DType::kKmq);
        t.load_quantized = [where, hf = e.hf, shape = e.shape, p = *p, sc = *sc, cb = *cb] {
          return load_1bw(where, hf, shape, p, sc, cb);
        };
        t.load = [lq = t.load_quantized] {
          const QuantizedTensor q = lq();
          std::vector<float> v(size_t(q.rows * q.cols));
          for (int64_t r = 0; r < q.rows; ++r) dequantize_row(q, r, v.data() + r * q.cols);
          return v;
        };
        m.tensors.push_back(std::move(t));
        continue;
      }
    }
    if (!ent) throw Error(fmt::format("{}: missing tensor '{}' (kmq '{}', expected shape {})", where, e.hf, e.kmq,
                                      shape_str(e.shape)));
    if (ent->info->shape != e.shape)
      throw Error(fmt::format("{}: tensor '{}' has shape {} but config.json implies {} (kmq '{}')",
                              ent->file->path(), e.hf, shape_str(ent->info->shape), shape_str(e.shape), e.kmq));
    used.insert(e.hf);
    dtypes.insert(ent->info->dtype);
    SourceTensor t;
    t.name = e.kmq;
    t.shape = e.shape;
    t.src_dtype = ent->info->dtype;
    t.load = [file = ent->file, info = ent->info] { return file->load_f32(*info); };
    m.tensors.push_back(std::move(t));
  }
  if (c.tied_embeddings && has_lm_head) used.insert("lm_head.weight");  // HF ties it: ignored

  std::vector<std::string> extra;
  for (const auto& [name, ent] : weights.entries()) {
    if (used.count(name) || ignorable(name)) continue;
    if (name.ends_with(".self_attn.o_proj.bias"))
      throw Error(fmt::format("{}: tensor '{}': a bias on o_proj is not supported", ent.file->path(), name));
    if (name.ends_with(".mlp.gate_proj.bias") || name.ends_with(".mlp.up_proj.bias") ||
        name.ends_with(".mlp.down_proj.bias"))
      throw Error(fmt::format("{}: tensor '{}': MLP biases are not supported", ent.file->path(), name));
    extra.push_back(name);
  }
  if (!extra.empty()) {
    const size_t shown = std::min<size_t>(extra.size(), 5);
    throw Error(fmt::format("{}: {} unexpected tensor(s) not used by a {} model: {}{}", where, extra.size(),
                            hf.architecture,
                            fmt::join(extra.begin(), extra.begin() + std::ptrdiff_t(shown), ", "),
                            extra.size() > shown ? ", ..." : ""));
  }

  m.tokenizer = load_tokenizer_hf_dir(dir);
  const std::string tok_where = dir.string() + " (tokenizer)";
  if (int64_t(m.tokenizer.tokens.size()) > c.n_vocab)
    throw Error(fmt::format("{}: the tokenizer has {} tokens but vocab_size is {}", tok_where,
                            m.tokenizer.tokens.size(), c.n_vocab));
  if (c.bos_id < 0) c.bos_id = m.tokenizer.bos_id;
  if (c.eos_id < 0) c.eos_id = m.tokenizer.eos_id;
  // Further eos ids of config.json (Llama 3.1: [128001, 128008, 128009]) end generation too.
  for (int64_t id : hf.eos_ids) {
    const auto id32 = int32_t(id);  // < n_vocab, checked by parse_hf_config
    auto& eog = m.tokenizer.eog_ids;
    if (id32 != m.tokenizer.eos_id && std::find(eog.begin(), eog.end(), id32) == eog.end()) eog.push_back(id32);
  }

  if (c.name.empty()) c.name = fs::absolute(dir).lexically_normal().filename().string();
  if (c.name.empty()) c.name = fs::absolute(dir).lexically_normal().parent_path().filename().string();
  validate_config(c, (dir / "config.json").string());
  m.config = c;
  m.description = fmt::format("Hugging Face directory ({}, {} safetensors {}{}, {}{})", hf.architecture,
                              weights.n_files(), weights.n_files() == 1 ? "file" : "shards",
                              weights.sharded() ? " with index" : "", dtype_summary(dtypes),
                              !c.tied_embeddings ? ""
                              : tied_by_absence  ? ", tied embeddings (no lm_head.weight)"
                                                 : ", tied embeddings");
  return m;
}

}  // namespace kmq
