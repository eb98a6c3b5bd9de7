// Synthetic models: real Llama shapes with random weights, written without a checkpoint,
// so speed can be measured at real sizes (`kmq-convert --synthetic PRESET`, `kmq bench`).
// Quantized tensors get random packed indices (no k-means: every bit pattern is a valid
// index stream), Gaussian-quantile codebooks and random scales of a realistic magnitude;
// the file is valid in every respect (`kmq info --verify`, it loads and runs).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "convert/convert.h"
#include "convert/source.h"
#include "kmq/config.h"
#include "kmq/tokenizer.h"

namespace kmq {

struct SyntheticPreset {
  std::string name;         // "llama-3.2-1b"
  std::string description;  // one line for --help and `kmq info`
  ModelConfig config;
};

// The presets, in a fixed order: tiny (tests), llama-3.2-1b, llama-3.2-3b, llama-3.1-8b.
// Their max_seq is 8192 (Llama 3.x trains to 131072), so that a session's KV cache stays
// small; everything else (shapes, RoPE theta and llama3 scaling, tying, BOS/EOS ids) is
// the real model's.
const std::vector<SyntheticPreset>& synthetic_presets();
// The preset of that name; throws kmq::Error listing the known names.
const SyntheticPreset& find_synthetic_preset(const std::string& name);

// A byte-level BPE tokenizer of c.n_vocab tokens: ids 0..255 are the 256 bytes (so any
// text encodes, one token per byte), c.bos_id / c.eos_id are control tokens
// <|begin_of_text|> / <|end_of_text|>, ids above both are reserved control tokens, the
// rest unused fillers. No merges: encoding is deterministic and cheap.
TokenizerData synthetic_tokenizer(const ModelConfig& c);

// The tensors a config needs (kmq names and shapes, in file order), with no loader.
std::vector<SourceTensor> synthetic_tensors(const ModelConfig& c);

struct SyntheticOptions {
  std::string preset;
  uint64_t seed = 0x6b6d71;  // the output file is a pure function of preset, options, seed
  int64_t max_seq = 0;       // 0: the preset's
  float weight_std = 0.02f;  // standard deviation of the weights the file stands for
};

// Writes the preset's model to `out` (atomically, one tensor in memory at a time). Each
// tensor is stored as choose_tensor(t, o) says, exactly as the real converter would store
// it (bits, scope, scales, embedding/output types, overrides, float_only); norms are 1.
// Output is bit-identical for any o.threads. Reports nmse = 0 (there is no original).
ConvertReport write_synthetic_model(const SyntheticOptions& s, const std::filesystem::path& out,
                                    const ConvertOptions& o, const ConvertProgress& progress = {});

}  // namespace kmq
