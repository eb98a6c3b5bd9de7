// A checkpoint opened for conversion: its configuration, its tokenizer, and its tensors
// under kmq names, each loadable as float32 on demand (so a large checkpoint is never all
// in memory). Readers: Hugging Face directories (safetensors) and llama2.c files.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "kmq/config.h"
#include "kmq/quant.h"
#include "kmq/tokenizer.h"
#include "kmq/types.h"

namespace kmq {

// kmq tensor names (shapes are [out, in] row-major, as in PyTorch nn.Linear):
//   token_embd [n_vocab, dim]          output_norm [dim]      output [n_vocab, dim] (absent if tied)
//   blk.N.attn_norm [dim]              blk.N.ffn_norm [dim]
//   blk.N.attn_q [n_heads*hd, dim]     blk.N.attn_k / attn_v [n_kv_heads*hd, dim]
//   blk.N.attn_output [dim, n_heads*hd]
//   blk.N.attn_q.bias / attn_k.bias / attn_v.bias [out]   (Qwen2-style, when present)
//   blk.N.ffn_gate / ffn_up [ffn_dim, dim]   blk.N.ffn_down [dim, ffn_dim]
// q/k rows are in Hugging Face "rotate_half" order: within a head, row j pairs with j+hd/2.
struct SourceTensor {
  std::string name;              // kmq name
  std::vector<int64_t> shape;    // [rows, cols] for matrices, [n] for vectors
  DType src_dtype = DType::kF32; // as stored in the checkpoint
  std::function<std::vector<float>()> load;  // reads it (row-major f32), permutations applied
  // Set for tensors that the checkpoint already stores k-means quantized (1-Bit Wonder QAT
  // exports): the tensor exactly as stored, written without refitting. load() then gives
  // its reconstruction.
  std::function<QuantizedTensor()> load_quantized;
};

struct SourceModel {
  ModelConfig config;
  TokenizerData tokenizer;
  std::vector<SourceTensor> tensors;  // in a stable order: token_embd, blk.0.*, ..., output_norm, output
  std::string description;            // e.g. "Hugging Face directory (3 safetensors shards, bf16)"
};

// Opens a Hugging Face model directory: config.json, model.safetensors or
// model.safetensors.index.json + shards, tokenizer (see load_tokenizer_hf_dir).
// Throws kmq::Error naming the file and the problem: missing shards, unsupported
// architecture, shapes that disagree with config.json, unsupported dtypes.
SourceModel open_hf_dir(const std::filesystem::path& dir);

// Opens a llama2.c checkpoint (legacy header-only format, or v1 "ak42" export) with its
// tokenizer.bin. RoPE pairs are permuted from llama2.c's interleaved order to HF's order.
SourceModel open_llama2c(const std::filesystem::path& checkpoint,
                         const std::filesystem::path& tokenizer_bin);

}  // namespace kmq
