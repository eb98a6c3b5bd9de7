// Scalar helpers shared by the CPU kernel files: reading a stored value of any float
// dtype, and index j of a packed row (little-endian bit stream, see include/kmq/quant.h).
#pragma once
#include <cstdint>
#include <cstdlib>

#include "kmq/types.h"
#include "util/half.h"

namespace kmq::cpu {

inline float load_value(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kF16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return 0.0f;
  }
}

// Reads a second byte only when the index straddles a byte boundary (3 bits), so it
// never touches memory past the row.
inline unsigned index_at(const uint8_t* row, int64_t j, int bits) {
  const int64_t bit = j * bits;
  unsigned v = row[bit >> 3];
  if (((bit & 7) + bits) > 8) v |= unsigned(row[(bit >> 3) + 1]) << 8;
  return (v >> (bit & 7)) & ((1u << bits) - 1);
}

// The LUT kernels' software prefetch distance in bytes: the ISA file's default, or
// KMQ_LUT_PREFETCH (0: the line being read, i.e. no lead) to measure another distance without rebuilding.
inline int64_t lut_prefetch_bytes(int64_t fallback) {
  const char* e = std::getenv("KMQ_LUT_PREFETCH");
  return e && *e ? std::strtoll(e, nullptr, 10) : fallback;
}

}  // namespace kmq::cpu
