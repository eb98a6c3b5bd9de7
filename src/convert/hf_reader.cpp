// open_hf_dir: a Hugging Face Llama/Mistral/Qwen2 directory as a SourceModel. Maps HF
// tensor names to kmq names and checks that every tensor is present with its shape.
#include <fmt/format.h>

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
