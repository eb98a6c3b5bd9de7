// Reading a Hugging Face config.json (Llama, Mistral, Qwen2 families) into a ModelConfig.
// Separate from the tensor mapping so that configuration variants can be tested alone.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "kmq/config.h"

namespace kmq {

struct HfConfig {
  ModelConfig model;              // validated; tied_embeddings as declared by the file
  std::string architecture;       // e.g. "LlamaForCausalLM" (or the model_type when absent)
  std::vector<int64_t> eos_ids;   // all ids of eos_token_id (a list in Llama 3.1 configs)
  bool tie_declared = false;      // tie_word_embeddings was present in the file
};

// Supported "architectures" entries, for messages.
inline constexpr const char* kHfSupportedArchitectures =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

// Parses config.json text; `where` names the file in errors.
HfConfig parse_hf_config(const std::string& text, const std::string& where);
// Reads and parses a config.json file.
HfConfig read_hf_config(const std::filesystem::path& config_json);

}  // namespace kmq
