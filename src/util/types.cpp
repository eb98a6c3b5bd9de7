// Names of the format's enums, for messages and `kmq info`.
#include "kmq/types.h"

namespace kmq {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kKmq: return "kmq";
  }
  return "?";
}

std::string_view scope_name(CodebookScope s) {
  switch (s) {
    case CodebookScope::kTensor: return "tensor";
    case CodebookScope::kRow: return "row";
    case CodebookScope::kGroup: return "group";
  }
  return "?";
}

std::string_view scale_mode_name(ScaleMode m) {
  switch (m) {
    case ScaleMode::kNone: return "none";
    case ScaleMode::kAbsMax: return "absmax";
    case ScaleMode::kAbsMean: return "absmean";
  }
  return "?";
}

}  // namespace kmq
