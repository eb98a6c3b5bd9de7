// ModelConfig <-> JSON with strict type checks: metadata comes from untrusted files.
#include "format/metadata.h"

#include <fmt/format.h>

#include "kmq/error.h"
#include "kmq/kmq_file.h"

namespace kmq {

using nlohmann::json;

json config_to_json_object(const ModelConfig& c) {
  json rs = {{"type", c.rope_scaling.type},
             {"factor", c.rope_scaling.factor},
             {"low_freq_factor", c.rope_scaling.low_freq_factor},
             {"high_freq_factor", c.rope_scaling.high_freq_factor},
             {"original_max_position", c.rope_scaling.original_max_position}};
  return json{{"arch", c.arch},         {"n_vocab", c.n_vocab},
              {"dim", c.dim},           {"n_layers", c.n_layers},
              {"n_heads", c.n_heads},   {"n_kv_heads", c.n_kv_heads},
              {"head_dim", c.head_dim}, {"ffn_dim", c.ffn_dim},
              {"max_seq", c.max_seq},   {"sliding_window", c.sliding_window},
              {"norm_eps", c.norm_eps}, {"rope_theta", c.rope_theta},
              {"rope_scaling", rs},     {"tied_embeddings", c.tied_embeddings},
              {"attn_qkv_bias", c.attn_qkv_bias}, {"bos_id", c.bos_id},
              {"eos_id", c.eos_id},     {"name", c.name}};
}

namespace {

template <typename T>
T get_field(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) throw Error(fmt::format("{}: metadata config lacks '{}'", where, key));
  if constexpr (std::is_same_v<T, bool>) {
    if (!it->is_boolean()) throw Error(fmt::format("{}: config '{}' is not a boolean", where, key));
  } else if constexpr (std::is_integral_v<T>) {
    if (!it->is_number_integer()) throw Error(fmt::format("{}: config '{}' is not an integer", where, key));
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!it->is_number()) throw Error(fmt::format("{}: config '{}' is not a number", where, key));
  } else {
    if (!it->is_string()) throw Error(fmt::format("{}: config '{}' is not a string", where, key));
  }
  return it->get<T>();
}

}  // namespace

ModelConfig config_from_json_object(const json& j, const std::string& where) {
  if (!j.is_object()) throw Error(where + ": metadata 'config' is not an object");
  ModelConfig c;
  c.arch = get_field<std::string>(j, "arch", where);
  c.n_vocab = get_field<int64_t>(j, "n_vocab", where);
  c.dim = get_field<int64_t>(j, "dim", where);
  c.n_layers = get_field<int64_t>(j, "n_layers", where);
  c.n_heads = get_field<int64_t>(j, "n_heads", where);
  c.n_kv_heads = get_field<int64_t>(j, "n_kv_heads", where);
  c.head_dim = get_field<int64_t>(j, "head_dim", where);
  c.ffn_dim = get_field<int64_t>(j, "ffn_dim", where);
  c.max_seq = get_field<int64_t>(j, "max_seq", where);
  c.sliding_window = get_field<int64_t>(j, "sliding_window", where);
  c.norm_eps = get_field<float>(j, "norm_eps", where);
  c.rope_theta = get_field<float>(j, "rope_theta", where);
  c.tied_embeddings = get_field<bool>(j, "tied_embeddings", where);
  c.attn_qkv_bias = get_field<bool>(j, "attn_qkv_bias", where);
  c.bos_id = get_field<int64_t>(j, "bos_id", where);
  c.eos_id = get_field<int64_t>(j, "eos_id", where);
  c.name = get_field<std::string>(j, "name", where);
  auto it = j.find("rope_scaling");
  if (it == j.end() || !it->is_object()) throw Error(where + ": metadata config lacks 'rope_scaling'");
  c.rope_scaling.type = get_field<std::string>(*it, "type", where);
  c.rope_scaling.factor = get_field<float>(*it, "factor", where);
  c.rope_scaling.low_freq_factor = get_field<float>(*it, "low_freq_factor", where);
  c.rope_scaling.high_freq_factor = get_field<float>(*it, "high_freq_factor", where);
  c.rope_scaling.original_max_position = get_field<int64_t>(*it, "original_max_position", where);
  validate_config(c, where);
  return c;
}

std::string config_to_json(const ModelConfig& c) { return config_to_json_object(c).dump(2); }

ModelConfig config_from_json(const std::string& text, const std::string& where) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw Error(where + ": config is not valid JSON");
  return config_from_json_object(j, where);
}

}  // namespace kmq
