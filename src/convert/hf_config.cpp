// config.json -> ModelConfig for the Llama, Mistral and Qwen2 families, with the HF
// defaults of those config classes and errors for every feature kmq cannot represent.
#include "convert/hf_config.h"

#include <fmt/format.h>

#include <cfloat>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>

#include "kmq/error.h"
#include "util/mmap_file.h"

namespace kmq {
namespace {

using nlohmann::json;

class Reader {
 public:
  Reader(const json& j, std::string where) : j_(j), where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string& what) const { throw Error(where_ + ": " + what); }

  const json* get(const json& obj, const char* key) const {
    auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  const json* get(const char* key) const { return get(j_, key); }

  std::optional<int64_t> opt_int(const json& obj, const char* key) const {
    const json* v = get(obj, key);
    if (!v) return std::nullopt;
    if (v->is_number_integer()) {
      if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
        fail(fmt::format("\"{}\" = {} is too large", key, v->dump()));
      return v->get<int64_t>();
    }
    if (v->is_number_float()) {  // e.g. 4096.0
      double d = v->get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return int64_t(d);
    }
    fail(fmt::format("\"{}\" must be an integer (got {})", key, v->dump()));
  }
  std::optional<int64_t> opt_int(const char* key) const { return opt_int(j_, key); }

  int64_t req_int(const json& obj, const char* key) const {
    auto v = opt_int(obj, key);
    if (!v) fail(fmt::format("missing required field \"{}\"", key));
    return *v;
  }
  int64_t req_int(const char* key) const { return req_int(j_, key); }

  std::optional<double> opt_num(const json& obj, const char* key) const {
    const json* v = get(obj, key);
    if (!v) return std::nullopt;
    if (!v->is_number()) fail(fmt::format("\"{}\" must be a number (got {})", key, v->dump()));
    return v->get<double>();
  }
  double req_num(const json& obj, const char* key) const {
    auto v = opt_num(obj, key);
    if (!v) fail(fmt::format("missing required field \"{}\"", key));
    return *v;
  }

  // A number that must fit a float (rope_theta, factors, eps).
  float to_float(const char* key, double v) const {
    if (!std::isfinite(v) || std::fabs(v) > double(FLT_MAX))
      fail(fmt::format("\"{}\" = {} is out of range", key, v));
    return float(v);
  }
  float req_float(const json& obj, const char* key) const { return to_float(key, req_num(obj, key)); }

  std::optional<bool> opt_bool(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) fail(fmt::format("\"{}\" must be true or false (got {})", key, v->dump()));
    return v->get<bool>();
  }

  std::optional<std::string> opt_str(const json& obj, const char* key) const {
    const json* v = get(obj, key);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail(fmt::format("\"{}\" must be a string (got {})", key, v->dump()));
    return v->get<std::string>();
  }
  std::optional<std::string> opt_str(const char* key) const { return opt_str(j_, key); }

  const json& root() const { return j_; }

 private:
  const json& j_;
  std::string where_;
};

// Which family a config belongs to: "llama", "mistral" or "qwen2".
std::string detect_family(const Reader& r, std::string* arch_out) {
  auto family_of_arch = [](const std::string& a) -> std::string {
    if (a == "LlamaForCausalLM") return "llama";
    if (a == "MistralForCausalLM") return "mistral";
    if (a == "Qwen2ForCausalLM") return "qwen2";
    return "";
  };
  auto family_of_type = [](const std::string& t) -> std::string {
    return t == "llama" || t == "mistral" || t == "qwen2" ? t : "";
  };
  std::string model_type = r.opt_str("model_type").value_or("");
  std::string arch;
  if (const json* a = r.get("architectures")) {
    if (!a->is_array()) r.fail("\"architectures\" must be a list of strings");
    if (!a->empty()) {
      if (!(*a)[0].is_string()) r.fail("\"architectures\" must be a list of strings");
      arch = (*a)[0].get<std::string>();
    }
  }
  if (!arch.empty()) {
    *arch_out = arch;
    if (auto f = family_of_arch(arch); !f.empty()) return f;
    // A causal-LM class under another name whose model_type is one of ours.
    const std::string_view suffix = "ForCausalLM";
    if (arch.ends_with(suffix))
      if (auto f = family_of_type(model_type); !f.empty()) return f;
    r.fail(fmt::format("unsupported architecture '{}' (supported: {})", arch, kHfSupportedArchitectures));
  }
  *arch_out = model_type;
  if (auto f = family_of_type(model_type); !f.empty()) return f;
  if (model_type.empty()) r.fail("neither \"architectures\" nor \"model_type\" is given");
  r.fail(fmt::format("unsupported architecture '{}' (model_type; supported: {})", model_type,
                     kHfSupportedArchitectures));
}

// RoPE: theta and scaling from "rope_theta"/"rope_scaling" (transformers <= 4.x) or from
// "rope_parameters" (transformers 5: {"rope_type", "rope_theta", factor...}).
void read_rope(const Reader& r, ModelConfig& c) {
  const json* params = r.get("rope_parameters");
  if (params && !params->is_object()) r.fail("\"rope_parameters\" must be an object");
  if (auto t = r.opt_num(r.root(), "rope_theta")) {
    c.rope_theta = r.to_float("rope_theta", *t);
  } else if (params && r.get(*params, "rope_theta")) {
    c.rope_theta = r.req_float(*params, "rope_theta");
  } else if (params) {
    r.fail("\"rope_parameters\" has no \"rope_theta\" (per-layer-type RoPE is not supported)");
  }

  const json* s = r.get("rope_scaling");
  if (s && !s->is_object()) r.fail("\"rope_scaling\" must be an object or null");
  if (!s) s = params;
  if (!s) return;
  std::string type = r.opt_str(*s, "rope_type").value_or(r.opt_str(*s, "type").value_or(""));
  if (type.empty() || type == "default") {
    if (s == params) return;
    r.fail("\"rope_scaling\" has no \"rope_type\"/\"type\"");
  }
  if (type == "linear") {
    c.rope_scaling.type = "linear";
    c.rope_scaling.factor = r.req_float(*s, "factor");
  } else if (type == "llama3") {
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = r.req_float(*s, "factor");
    c.rope_scaling.low_freq_factor = r.req_float(*s, "low_freq_factor");
    c.rope_scaling.high_freq_factor = r.req_float(*s, "high_freq_factor");
    c.rope_scaling.original_max_position = r.req_int(*s, "original_max_position_embeddings");
  } else {
    r.fail(fmt::format("unsupported RoPE scaling '{}' (supported: linear, llama3)", type));
  }
}

// Sliding-window attention: Mistral's "sliding_window"; Qwen2's "use_sliding_window" with
// "max_window_layers" (layers at or above it use the window) or "layer_types".
void read_sliding_window(const Reader& r, const std::string& family, ModelConfig& c) {
  if (family == "mistral") {
    c.sliding_window = r.opt_int("sliding_window").value_or(0);
    return;
  }
  if (family != "qwen2" || !r.opt_bool("use_sliding_window").value_or(false)) return;
  int64_t first_windowed = r.opt_int("max_window_layers").value_or(28);
  if (const json* lt = r.get("layer_types")) {
    if (!lt->is_array()) r.fail("\"layer_types\" must be a list");
    int64_t n_sliding = 0;
    for (const auto& t : *lt) n_sliding += t == "sliding_attention" ? 1 : 0;
    first_windowed = n_sliding == 0 ? c.n_layers : n_sliding == int64_t(lt->size()) ? 0 : -1;
  }
  if (first_windowed >= c.n_layers) return;  // no layer uses the window
  if (first_windowed != 0)
    r.fail("sliding-window attention on only some layers is not supported (use_sliding_window with "
           "max_window_layers/layer_types)");
  c.sliding_window = r.req_int(r.root(), "sliding_window");
}

}  // namespace

HfConfig parse_hf_config(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", where, e.what()));
  }
  if (!j.is_object()) throw Error(where + ": not a JSON object");
  Reader r(j, where);

  HfConfig out;
  const std::string family = detect_family(r, &out.architecture);
  // k-means QAT exports in the 1-Bit Wonder layout (weight_packed/scales/centroids per
  // linear layer) are read by the tensor mapping (hf_reader.cpp); other schemes are not.
  if (const auto* qc = r.get("quantization_config")) {
    const bool kmeans = qc->is_object() && qc->contains("quant_method") && (*qc)["quant_method"] == "kmeans";
    if (!kmeans)
      r.fail("quantized checkpoints (\"quantization_config\") are not supported, except quant_method \"kmeans\"");
  }

  ModelConfig& c = out.model;
  c.arch = "llama";
  c.n_vocab = r.req_int("vocab_size");
  c.dim = r.req_int("hidden_size");
  c.n_layers = r.req_int("num_hidden_layers");
  c.n_heads = r.req_int("num_attention_heads");
  c.n_kv_heads = r.opt_int("num_key_value_heads").value_or(c.n_heads);
  if (auto hd = r.opt_int("head_dim")) {
    c.head_dim = *hd;
  } else {
    if (c.n_heads <= 0 || c.dim % c.n_heads != 0)
      r.fail(fmt::format("hidden_size {} is not a multiple of num_attention_heads {} and no head_dim is given",
                         c.dim, c.n_heads));
    c.head_dim = c.dim / c.n_heads;
  }
  c.ffn_dim = r.req_int("intermediate_size");
  c.max_seq = r.req_int("max_position_embeddings");
  c.norm_eps = r.to_float("rms_norm_eps", r.opt_num(j, "rms_norm_eps").value_or(1e-6));  // HF default for all three

  std::string act = r.opt_str("hidden_act").value_or("silu");
  if (act != "silu" && act != "swish")
    r.fail(fmt::format("hidden_act '{}' is not supported (SwiGLU with silu only)", act));
  if (r.opt_bool("mlp_bias").value_or(false)) r.fail("mlp_bias = true is not supported");
  c.attn_qkv_bias = family == "qwen2" || r.opt_bool("attention_bias").value_or(false);

  read_rope(r, c);
  read_sliding_window(r, family, c);

  out.tie_declared = j.contains("tie_word_embeddings");
  c.tied_embeddings = r.opt_bool("tie_word_embeddings").value_or(false);
  c.bos_id = r.opt_int("bos_token_id").value_or(-1);
  if (const json* e = r.get("eos_token_id")) {
    if (e->is_array()) {
      for (size_t i = 0; i < e->size(); ++i) {
        if (!(*e)[i].is_number_integer()) r.fail(fmt::format("eos_token_id {} must hold integers", e->dump()));
        out.eos_ids.push_back((*e)[i].get<int64_t>());
      }
    } else {
      out.eos_ids.push_back(r.req_int(j, "eos_token_id"));
    }
  }
  c.eos_id = out.eos_ids.empty() ? -1 : out.eos_ids[0];
  c.name = r.opt_str("_name_or_path").value_or("");

  validate_config(c, where);
  for (int64_t id : out.eos_ids)
    if (id < 0 || id >= c.n_vocab)
      r.fail(fmt::format("eos_token_id {} outside the vocabulary of {}", id, c.n_vocab));
  return out;
}

HfConfig read_hf_config(const std::filesystem::path& config_json) {
  if (!std::filesystem::exists(config_json))
    throw Error(config_json.string() + ": not found (missing config.json)");
  return parse_hf_config(read_text_file(config_json), config_json.string());
}

}  // namespace kmq
