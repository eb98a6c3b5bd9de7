// Element types of tensors as stored in files, and the codebook/scale vocabulary of the
// quantized format. Values are part of the .kmq format (docs/FORMAT.md): never renumber.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kmq {

enum class DType : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kKmq = 3,  // k-means quantized: b-bit indices + codebooks (+ optional block scales)
};

// Which weights share one codebook of 2^bits centroids.
enum class CodebookScope : uint8_t {
  kTensor = 0,  // one codebook for the whole tensor
  kRow = 1,     // one codebook per output row
  kGroup = 2,   // one per group of group_size consecutive weights of a row
};

// How a block scale is computed by the quantizer (stored only as the resulting value).
enum class ScaleMode : uint8_t {
  kNone = 0,
  kAbsMax = 1,   // scale = max |w| over the block
  kAbsMean = 2,  // scale = mean |w| over the block
};

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    default: return 0;
  }
}

std::string_view dtype_name(DType t);
std::string_view scope_name(CodebookScope s);
std::string_view scale_mode_name(ScaleMode m);

}  // namespace kmq
