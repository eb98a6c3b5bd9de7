// validate_config: the consistency rules every ModelConfig must satisfy before use.
#include <fmt/format.h>

#include "kmq/config.h"
#include "kmq/error.h"

namespace kmq {

void validate_config(const ModelConfig& c, const std::string& where) {
  auto fail = [&](const std::string& what) { throw Error(where + ": " + what); };
  if (c.arch != "llama") fail(fmt::format("unsupported architecture '{}' (supported: llama)", c.arch));
  constexpr int64_t kMaxDim = int64_t(1) << 20;
  auto in_range = [&](const char* name, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) fail(fmt::format("{} = {} is out of range [{}, {}]", name, v, lo, hi));
  };
  in_range("n_vocab", c.n_vocab, 1, int64_t(1) << 24);
  in_range("dim", c.dim, 1, kMaxDim);
  in_range("n_layers", c.n_layers, 1, 4096);
  in_range("n_heads", c.n_heads, 1, 4096);
  in_range("n_kv_heads", c.n_kv_heads, 1, c.n_heads);
  in_range("head_dim", c.head_dim, 2, 4096);
  in_range("ffn_dim", c.ffn_dim, 1, kMaxDim * 4);
  in_range("max_seq", c.max_seq, 1, int64_t(1) << 24);
  in_range("sliding_window", c.sliding_window, 0, int64_t(1) << 24);
  if (c.n_heads % c.n_kv_heads != 0)
    fail(fmt::format("n_heads ({}) is not a multiple of n_kv_heads ({})", c.n_heads, c.n_kv_heads));
  if (c.head_dim % 2 != 0) fail(fmt::format("head_dim ({}) must be even for RoPE", c.head_dim));
  if (!(c.norm_eps > 0 && c.norm_eps < 1)) fail(fmt::format("norm_eps = {} is out of range", c.norm_eps));
  if (!(c.rope_theta > 0)) fail(fmt::format("rope_theta = {} must be positive", c.rope_theta));
  const auto& rs = c.rope_scaling;
  if (rs.type != "none" && rs.type != "linear" && rs.type != "llama3")
    fail(fmt::format("unsupported RoPE scaling '{}' (supported: none, linear, llama3)", rs.type));
  if (rs.type != "none" && !(rs.factor > 0)) fail("RoPE scaling factor must be positive");
  if (rs.type == "llama3" && !(rs.high_freq_factor > rs.low_freq_factor && rs.original_max_position > 0))
    fail("llama3 RoPE scaling needs high_freq_factor > low_freq_factor and original_max_position > 0");
  if (c.bos_id >= c.n_vocab || c.eos_id >= c.n_vocab)
    fail(fmt::format("bos/eos id ({}/{}) outside the vocabulary of {}", c.bos_id, c.eos_id, c.n_vocab));
}

}  // namespace kmq
