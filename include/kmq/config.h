// The architecture and hyperparameters of a Llama-family model, as stored in a .kmq file.
#pragma once
#include <cstdint>
#include <string>

namespace kmq {

// RoPE frequency scaling. "none"; "linear" (positions divided by factor); "llama3"
// (Llama 3.1 wavelength-dependent scaling with low/high frequency factors).
struct RopeScaling {
  std::string type = "none";
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int64_t original_max_position = 8192;
};

struct ModelConfig {
  std::string arch = "llama";  // the only family so far: Llama 1-3, Mistral, Qwen2, SmolLM...
  int64_t n_vocab = 0;
  int64_t dim = 0;         // hidden size
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;    // usually dim / n_heads
  int64_t ffn_dim = 0;     // SwiGLU intermediate size
  int64_t max_seq = 0;     // trained context length
  int64_t sliding_window = 0;  // 0 = full attention (Mistral v0.1: 4096)
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tied_embeddings = false;  // output layer = token embedding
  bool attn_qkv_bias = false;    // Qwen2-style q/k/v biases
  int64_t bos_id = -1;
  int64_t eos_id = -1;
  std::string name;  // free text: where the model came from
};

// Throws kmq::Error (prefixed by `where`) when the numbers are inconsistent.
void validate_config(const ModelConfig& c, const std::string& where);

}  // namespace kmq
