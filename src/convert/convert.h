// The conversion pipeline: a SourceModel in, a .kmq file out. Chooses, per tensor, float
// storage or k-means quantization (with per-tensor overrides), streams tensors through
// the quantizer into a KmqWriter, and reports progress and error statistics.
#pragma once
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "convert/source.h"
#include "kmq/quant.h"
#include "kmq/types.h"

namespace kmq {

// How one tensor is stored: float (f32/f16/bf16) or k-means with bits 1..4.
struct TensorChoice {
  DType dtype = DType::kKmq;
  QuantSpec quant;  // when dtype == kKmq
};

struct ConvertOptions {
  // No quantization at all: every tensor in this dtype (norms and biases stay f32).
  bool float_only = false;
  DType float_dtype = DType::kBF16;
  // Quantization of the linear layers.
  QuantSpec quant;  // bits, scope, group_size, scale_block, scale_mode...
  bool scale_mode_auto = true;  // absmean at 1-2 bits, absmax at 3-4 bits
  // token_embd and output: "auto" (max(bits, 4) with the same scheme), or "f32", "f16",
  // "bf16", or "1".."4".
  std::string embed_type = "auto";
  std::string output_type = "auto";
  // Overrides, applied in order, the last match wins: (regex over kmq names, type) where
  // type is as embed_type.
  std::vector<std::pair<std::string, std::string>> overrides;
  int threads = 1;
  std::atomic<bool>* cancel = nullptr;  // set to stop; the output is not written
  // Data-aware fitting: kmq tensor name -> importance of each input column (mean x_j^2 over
  // calibration tokens, src/calib); quantized tensors found here weight each weight's error
  // by its column's importance. Not owned; may be null.
  const std::map<std::string, std::vector<float>>* importance = nullptr;
  // Per-tensor choices decided beforehand (mixed precision: --target-bpw), by kmq name;
  // they replace choose_tensor() for the tensors they name. Not owned; may be null.
  const std::map<std::string, TensorChoice>* plan = nullptr;
  // Tensors quantized beforehand (output-aligned refinement: --refine, src/calib/refine.h),
  // by kmq name: written as given (their choice's scheme, marked "refined"). Not owned.
  const std::map<std::string, QuantizedTensor>* prequantized = nullptr;
};

struct TensorReport {
  std::string name;
  std::vector<int64_t> shape;
  std::string scheme;   // "bf16", "q4 tensor sb64 absmax", ...
  double bits_per_weight = 0;
  double nmse = 0;      // 0 for float tensors stored exactly
  uint64_t bytes = 0;
};

struct ConvertReport {
  std::vector<TensorReport> tensors;
  uint64_t file_bytes = 0;
  uint64_t n_weights = 0, n_quant_weights = 0;
  double quant_bits = 0;  // bits of the quantized tensors (indices+codebooks+scales)
  double total_bits = 0;  // bits of all tensors
  double seconds = 0;
};

// Called after each tensor: (index, count, report of that tensor).
using ConvertProgress = std::function<void(size_t, size_t, const TensorReport&)>;

// Parses a tensor type ("f16", "bf16", "f32", "1".."4"); throws kmq::Error if unknown.
TensorChoice parse_tensor_type(const std::string& type, const QuantSpec& base, bool scale_mode_auto);
// The choice for one tensor under the options.
TensorChoice choose_tensor(const SourceTensor& t, const ConvertOptions& o);

ConvertReport convert_model(const SourceModel& src, const std::filesystem::path& out, const ConvertOptions& o,
                            const ConvertProgress& progress = {});

}  // namespace kmq
