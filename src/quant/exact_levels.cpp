// quantize_exact_levels (kmq/quant.h): lossless import of fake-quantized checkpoints.
#include <algorithm>
#include <cmath>

#include "kmq/error.h"
#include "kmq/quant.h"
#include "util/half.h"

namespace kmq {

bool quantize_exact_levels(const float* w, int64_t rows, int64_t cols, int max_bits, QuantizedTensor* out) {
  if (!w || !out || rows <= 0 || cols <= 0 || max_bits < 1 || max_bits > 4)
    throw Error("quantize_exact_levels: bad arguments");
  const int64_t kmax = int64_t(1) << max_bits;
  std::vector<std::vector<float>> levels(static_cast<size_t>(rows));
  int64_t most = 1;
  bool f16_exact = true;
  for (int64_t r = 0; r < rows; ++r) {
    auto& lv = levels[size_t(r)];
    const float* wr = w + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const float x = wr[j];
      if (!std::isfinite(x)) return false;
      if (std::find(lv.begin(), lv.end(), x) != lv.end()) continue;
      if (int64_t(lv.size()) == kmax) return false;
      lv.push_back(x);
    }
    std::sort(lv.begin(), lv.end());
    most = std::max<int64_t>(most, int64_t(lv.size()));
    for (float x : lv)
      if (round_f16(x) != x) f16_exact = false;
  }
  int bits = 1;
  while ((int64_t(1) << bits) < most) ++bits;
  const int64_t k = int64_t(1) << bits;
  QuantizedTensor q;
  q.bits = bits;
  q.scope = CodebookScope::kRow;
  q.scale_block = 0;
  q.rows = rows;
  q.cols = cols;
  q.codebook_dtype = f16_exact ? DType::kF16 : DType::kF32;
  q.codebooks.resize(size_t(rows * k));
  q.indices.assign(size_t(rows * q.row_bytes()), 0);
  std::vector<uint8_t> idx(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const auto& lv = levels[size_t(r)];
    float* cb = q.codebooks.data() + r * k;
    for (int64_t i = 0; i < k; ++i) cb[i] = lv[size_t(std::min<int64_t>(i, int64_t(lv.size()) - 1))];
    const float* wr = w + r * cols;
    for (int64_t j = 0; j < cols; ++j)
      idx[size_t(j)] = uint8_t(std::lower_bound(lv.begin(), lv.end(), wr[j]) - lv.begin());
    pack_indices(idx.data(), cols, bits, q.indices.data() + r * q.row_bytes());
  }
  *out = std::move(q);
  return true;
}

}  // namespace kmq
